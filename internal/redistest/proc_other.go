//go:build !unix

package redistest

import "os/exec"

// ownProcessGroup does nothing where there are no process groups: the package
// only has to compile there, so that the tests which use it vet on every target.
func ownProcessGroup(*exec.Cmd) {}
