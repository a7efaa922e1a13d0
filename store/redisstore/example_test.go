package redisstore_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

// Open a Redis store shared by every server replica. The same URL form names a
// single node or any node of a Redis Cluster (add more with ?addr=host:port).
func ExampleOpen() {
	ctx := context.Background()
	s, err := redisstore.Open(ctx, "redis://127.0.0.1:6379/0", store.Config{}, redisstore.Options{
		Logger: slog.Default(),
		Prefix: "forge",
	})
	if err != nil {
		fmt.Println("redis:", err) // KindUnavailable when Redis cannot be reached
		return
	}
	defer s.Close()
	w := s.Watch(store.AgentKey("a0123456789abcde")) // fires on changes made by any replica
	defer w.Stop()
}
