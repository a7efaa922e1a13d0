//go:build !linux

package bench

import "os/exec"

// dieWithParent does nothing here: only Linux kills a child when its parent
// dies; the bench stops its children itself when it ends.
func dieWithParent(*exec.Cmd) {}
