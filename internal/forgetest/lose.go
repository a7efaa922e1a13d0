package forgetest

import (
	"net/http"
	"sync"

	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store/memstore"
)

// LoseState makes the server forget everything it stored, as a restart of an
// in-memory server, or of a Redis without persistence, does; its URL stays. On
// Memory a new server over a new, empty store takes the old one's place (the
// old one is closed, so its held calls end as a stopped server's do; Store and
// the embedded *server.Server are the new ones from then on; replicas started
// before keep the old store). On Redis the redis-server is restarted without
// persistence while the server runs on, keeping what it holds in memory (its
// agent token cache), as a replica does when its Redis restarts empty: that
// takes Options.OwnRedis.
func (s *Server) LoseState() {
	s.t.Helper()
	if s.redis != nil {
		if !s.redis.own {
			s.t.Fatalf("forgetest: LoseState on %s needs Options.OwnRedis (the shared Redis cannot be restarted)", s.Backend)
		}
		s.redis.nodes[0].Restart()
		return
	}
	old := s.served.get()
	st := memstore.New(s.storeConfig)
	s.t.Cleanup(func() { st.Close() })
	cfg := s.config
	cfg.Store = st
	srv, err := server.New(cfg)
	if err != nil {
		s.t.Fatalf("forgetest: server.New: %v", err)
	}
	s.served.set(srv)
	s.Server, s.Store = srv, st
	old.Close()
}

// swapHandler serves the server it holds, which LoseState may replace.
type swapHandler struct {
	mu  sync.Mutex
	srv *server.Server
}

func (h *swapHandler) set(srv *server.Server) {
	h.mu.Lock()
	h.srv = srv
	h.mu.Unlock()
}

func (h *swapHandler) get() *server.Server {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.srv
}

func (h *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.get().ServeHTTP(w, r) }
