//go:build unix

package redistest

import (
	"os/exec"
	"syscall"
)

// ownProcessGroup starts cmd in a process group of its own, so a Ctrl-C meant
// for the test binary does not reach the Redis servers it spawned before the
// tests have stopped them.
func ownProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// The signals that freeze and thaw a server (Pause, Resume).
const sigStop, sigCont = syscall.SIGSTOP, syscall.SIGCONT
