package redisstore_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
	"github.com/orange-forge/forge/store/storetest"
)

var prefixes atomic.Int64

// openOn returns an Opener that gives each test its own key prefix on url.
func openOn(url string) storetest.Opener {
	return func(t *testing.T, cfg store.Config) store.Store {
		s, err := redisstore.Open(t.Context(), url, cfg, redisstore.Options{Prefix: fmt.Sprintf("t%d", prefixes.Add(1))})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	storetest.Run(t, openOn(srv.URL()))
}

func TestConformanceCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	storetest.Run(t, openOn(cl.URL()))
}
