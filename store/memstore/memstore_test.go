package memstore_test

import (
	"testing"

	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
	"github.com/orange-forge/forge/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, cfg store.Config) store.Store {
		s := memstore.New(cfg)
		t.Cleanup(func() { s.Close() })
		return s
	})
}
