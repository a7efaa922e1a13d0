package main

import (
	"context"
	"errors"
)

func (m *Main) runAgent(ctx context.Context, args []string) error {
	return errors.New("the agent command needs the agent package")
}
