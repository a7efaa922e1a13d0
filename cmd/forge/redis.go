package main

import (
	"context"
	"log/slog"
	"net/url"
	"time"

	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

// openRedis opens the Redis store, retrying while Redis cannot be reached so a
// server started before its Redis comes up by itself.
func openRedis(ctx context.Context, rawURL string, cfg store.Config, log *slog.Logger) (store.Store, string, error) {
	desc := "redis " + redactURL(rawURL)
	delay := 200 * time.Millisecond
	for {
		st, err := redisstore.Open(ctx, rawURL, cfg, redisstore.Options{Logger: log})
		if err == nil {
			return st, desc, nil
		}
		if store.KindOf(err) != store.KindUnavailable || ctx.Err() != nil {
			return nil, "", err
		}
		log.Warn("redis unreachable; retrying", "redis", redactURL(rawURL), "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// redactURL hides a password in a Redis URL.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Redacted()
}
