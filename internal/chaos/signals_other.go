//go:build !unix

package chaos

import "syscall"

// Windows has no SIGSTOP: os.Process.Signal refuses these, so a stop fault
// fails there (the chaos run is meant for Linux).
const sigStop, sigCont = syscall.Signal(19), syscall.Signal(18)
