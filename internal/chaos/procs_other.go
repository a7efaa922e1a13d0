//go:build !linux

package chaos

import "os/exec"

// dieWithParent does nothing where the kernel offers no parent-death signal: the
// chaos run is meant for Linux, and only has to compile elsewhere.
func dieWithParent(*exec.Cmd) {}
