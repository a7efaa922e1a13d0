//go:build !unix

package redistest

import (
	"os/exec"
	"syscall"
)

// ownProcessGroup does nothing where there are no process groups: the package
// only has to compile there, so that the tests which use it vet on every target.
func ownProcessGroup(*exec.Cmd) {}

// Windows has no SIGSTOP: os.Process.Signal refuses these, so Pause and Resume
// return an error there.
const sigStop, sigCont = syscall.Signal(19), syscall.Signal(18)
