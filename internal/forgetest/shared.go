package forgetest

import (
	"sync"
	"testing"

	"github.com/orange-forge/forge/internal/redistest"
)

// Main runs a test binary's tests, then stops the Redis servers they shared.
// Call it from TestMain:
//
//	func TestMain(m *testing.M) { forgetest.Main(m) }
//
// Without it, each test that runs on Redis starts a redis-server of its own.
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()
	defer stopShared()
	m.Run()
}

// shared holds the Redis servers of this test binary, started on first use.
var shared struct {
	mu        sync.Mutex // guards inMain and stops
	inMain    bool
	stops     []func()
	redisMu   sync.Mutex
	redis     *redistest.Server
	clusterMu sync.Mutex
	cluster   *redistest.Cluster
}

func inMain() bool {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	return shared.inMain
}

func addStop(stop func()) {
	shared.mu.Lock()
	shared.stops = append(shared.stops, stop)
	shared.mu.Unlock()
}

func stopShared() {
	shared.mu.Lock()
	stops := shared.stops
	shared.stops = nil
	shared.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
}

// sharedRedis returns the binary's Redis node, starting it on first use.
func sharedRedis(t testing.TB) *redistest.Server {
	t.Helper()
	if !inMain() {
		return redistest.Start(t)
	}
	shared.redisMu.Lock()
	defer shared.redisMu.Unlock()
	if shared.redis == nil {
		s, stop, err := redistest.StartShared()
		if err != nil {
			t.Fatalf("forgetest: %v", err)
		}
		shared.redis = s
		addStop(stop)
	}
	return shared.redis
}

// sharedCluster returns the binary's three-node Redis Cluster, starting it on
// first use.
func sharedCluster(t testing.TB) *redistest.Cluster {
	t.Helper()
	if !inMain() {
		return redistest.StartCluster(t, 3)
	}
	shared.clusterMu.Lock()
	defer shared.clusterMu.Unlock()
	if shared.cluster == nil {
		cl, stop, err := redistest.StartSharedCluster(3)
		if err != nil {
			t.Fatalf("forgetest: %v", err)
		}
		shared.cluster = cl
		addStop(stop)
	}
	return shared.cluster
}
