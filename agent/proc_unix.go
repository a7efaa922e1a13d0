//go:build unix

package agent

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// lockDir takes an exclusive, non-blocking lock on name (created 0600).
func lockDir(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	// A process forked at the wrong moment holds a copy of a released lock's
	// descriptor until its exec closes it; that is not another agent, so retry
	// for a moment before saying the dir is in use.
	for deadline := time.Now().Add(time.Second); ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, errors.New("in use by another running agent")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// groupGone tells whether no live (non-zombie) process of group pgid remains.
// kill(-pgid, 0) is a cheap first check but succeeds on zombies, which never go
// away when their parent does not reap them, so a success is checked in /proc.
func groupGone(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	return !groupHasLive(pgid)
}

// treeKind is what the state dir records: a process group per exec command.
const treeKind = "group"

// endRecorded ends the process group of r, which a previous run of the agent
// recorded, and reports whether it is gone.
func endRecorded(r groupRecord) bool {
	return killTree(pgroup(r.Pgid), killWait)
}
