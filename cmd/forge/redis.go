package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/orange-forge/forge/store"
)

func openRedis(ctx context.Context, url string, cfg store.Config, log *slog.Logger) (store.Store, string, error) {
	return nil, "", errors.New("--redis: the Redis store is not in this build yet")
}
