//go:build unix

package chaos

import "syscall"

const sigStop, sigCont = syscall.SIGSTOP, syscall.SIGCONT
