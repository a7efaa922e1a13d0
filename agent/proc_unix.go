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

// waitGroupGone polls until group pgid is gone or d passes; it reports whether
// the group is gone.
func waitGroupGone(pgid int, d time.Duration) bool {
	end := time.Now().Add(d)
	step := 2 * time.Millisecond
	for {
		if groupGone(pgid) {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(min(step, time.Until(end)+time.Millisecond))
		step = min(2*step, 100*time.Millisecond)
	}
}

// killWait bounds the wait after SIGKILL: only a process stuck in the
// kernel (uninterruptible sleep) outlives it.
const killWait = 10 * time.Second

// stopGroup ends process group pgid: SIGTERM (and SIGCONT, so stopped members see
// it), up to grace for the group to exit, then SIGKILL. It returns once no live
// member remains, or reports false if one outlived SIGKILL by killWait.
func stopGroup(pgid int, grace time.Duration) bool {
	if groupGone(pgid) {
		return true
	}
	syscall.Kill(-pgid, syscall.SIGTERM)
	syscall.Kill(-pgid, syscall.SIGCONT)
	if waitGroupGone(pgid, grace) {
		return true
	}
	return killGroupNow(pgid)
}

// killGroupNow sends SIGKILL to group pgid and waits for it to be gone.
func killGroupNow(pgid int) bool {
	syscall.Kill(-pgid, syscall.SIGKILL)
	return waitGroupGone(pgid, killWait)
}
