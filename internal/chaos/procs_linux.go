package chaos

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes cmd die with the test process, so a run stays bounded
// even when the test is killed.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
