//go:build windows

package agent

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

// treeKind is what the state dir records: a Job Object per exec command.
const treeKind = "job"

// lockDir takes an exclusive, non-blocking lock on name (created if needed).
func lockDir(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(time.Second); ; {
		ol := new(windows.Overlapped)
		err := windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
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

// procStartTime returns when process pid was created (a FILETIME), or 0. With
// the pid it names the process's job (jobName).
func procStartTime(pid int) uint64 {
	p, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, uint32(pid))
	if err != nil {
		return 0
	}
	defer windows.CloseHandle(p)
	return processCreated(p)
}

// bootID is empty: a job name does not outlive a reboot, so a record from before
// one finds no job to end.
func bootID() string { return "" }

// ownGroup is true: the job's name, made of the pid and its creation time, is
// the check.
func ownGroup(groupRecord) bool { return true }

// endRecorded terminates the job of r, which a previous run of the agent
// recorded, if it still exists, and reports whether its processes are gone.
func endRecorded(r groupRecord) bool {
	h, ok := openJob(jobName(r.Pgid, r.Start))
	if !ok {
		return true
	}
	j := &job{h: h, pid: r.Pgid}
	defer j.release()
	return killTree(j, killWait)
}
