package redistest

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// This file holds what fault tests do to one server: freeze it, thaw it, and
// bring it back after a kill without failing the test from another goroutine.

// Pause freezes the server with SIGSTOP: it keeps its connections and its data
// but answers nothing, as a machine that stalls would. Resume undoes it. Pausing
// a cluster master for longer than the node timeout makes its replica take over.
func (s *Server) Pause() error {
	if err := s.sendSignal(sigStop); err != nil {
		return err
	}
	paused.Store(s, true)
	return nil
}

// Resume lets a paused server run again (SIGCONT).
func (s *Server) Resume() error {
	paused.Delete(s)
	return s.sendSignal(sigCont)
}

// paused holds the servers paused now (Server is shared with the rest of the
// package; the set keeps this file's state in this file).
var paused sync.Map

// answering tells whether the server runs and is not paused, so a command sent
// to it gets an answer rather than a timeout.
func (s *Server) answering() bool {
	if _, ok := paused.Load(s); ok {
		return false
	}
	return s.Running()
}

func (s *Server) sendSignal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("redistest: %s is not running", s.Addr())
	}
	return s.cmd.Process.Signal(sig)
}

// PID returns the server's process id, or 0 when it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// TryRestart is Restart that returns an error instead of failing the test, so a
// fault injector running beside the test can call it. A server that runs is
// stopped first (SIGTERM); a killed one is simply started again on its port and
// directory.
func (s *Server) TryRestart() error {
	s.Stop()
	var err error
	for try := 0; try < 50; try++ { // the old socket may linger for a moment
		if err = s.launch(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("redistest: restart of %s: %w", s.Addr(), err)
}

// ErrTimeout is returned by the waits of this package when what they wait for did
// not happen in time.
var ErrTimeout = errors.New("redistest: timed out")
