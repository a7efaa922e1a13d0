package redistest

import (
	"errors"
	"fmt"
	"os"
	"sync"
)

// StartShared starts a server owned by the test binary rather than by one test,
// so that the tests of a binary can share it, each under its own key prefix:
// starting redis-server once instead of once per test keeps suites that run on
// Redis quick. Call stop when every test is done (in TestMain, after m.Run); it
// ends the server and removes its directory.
func StartShared(opts ...Option) (s *Server, stop func(), err error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	o := &binaryOwner{}
	defer o.recover(&err)
	return start(o, c), o.stop, nil
}

// StartSharedCluster is StartShared for a cluster of n nodes (see StartCluster).
func StartSharedCluster(n int, opts ...Option) (cl *Cluster, stop func(), err error) {
	o := &binaryOwner{}
	defer o.recover(&err)
	return startCluster(o, n, opts...), o.stop, nil
}

// binaryOwner owns shared servers: it keeps their clean-ups and directories until
// stop, and turns a failure to start into an error.
type binaryOwner struct {
	mu       sync.Mutex
	cleanups []func()
	dirs     []string
}

// failure is how Fatalf leaves a start that cannot go on; recover turns it into
// the error StartShared returns.
type failure string

func (o *binaryOwner) Helper() {}

func (o *binaryOwner) Fatalf(format string, args ...any) {
	panic(failure(fmt.Sprintf(format, args...)))
}

func (o *binaryOwner) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func (o *binaryOwner) TempDir() string {
	d, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		o.Fatalf("redistest: %v", err)
	}
	o.mu.Lock()
	o.dirs = append(o.dirs, d)
	o.mu.Unlock()
	return d
}

func (o *binaryOwner) Cleanup(f func()) {
	o.mu.Lock()
	o.cleanups = append(o.cleanups, f)
	o.mu.Unlock()
}

func (o *binaryOwner) Failed() bool { return false }

// stop runs the clean-ups, last first, and removes the directories.
func (o *binaryOwner) stop() {
	o.mu.Lock()
	cleanups, dirs := o.cleanups, o.dirs
	o.cleanups, o.dirs = nil, nil
	o.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	for _, d := range dirs {
		os.RemoveAll(d)
	}
}

func (o *binaryOwner) recover(err *error) {
	r := recover()
	if r == nil {
		return
	}
	f, ok := r.(failure)
	if !ok {
		panic(r)
	}
	o.stop()
	*err = errors.New(string(f))
}
