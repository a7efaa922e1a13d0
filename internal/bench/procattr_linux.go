//go:build linux

package bench

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill cmd's process when the bench dies, even
// by SIGKILL, so that no replica, fleet or redis-server of a run outlives it.
// The signal follows the death of the thread that started the child; the Go
// runtime ends a thread only when a goroutine locked to it returns, which the
// bench's goroutines never do.
func dieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
