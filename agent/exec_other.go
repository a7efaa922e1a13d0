//go:build !unix && !windows

package agent

import (
	"errors"
	"os"
	"os/exec"
)

// Systems without process groups or job objects (plan9, wasm) run no commands.

const treeKind = "group"

func startTree(*exec.Cmd) (processTree, error) {
	return nil, errors.New("not supported on this operating system")
}

func treeName(t processTree) string             { return "process tree" }
func exitStatus(e *exec.ExitError) (int, error) { return e.ExitCode(), e }

func lockDir(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
}

func procStartTime(int) uint64     { return 0 }
func bootID() string               { return "" }
func ownGroup(groupRecord) bool    { return false }
func endRecorded(groupRecord) bool { return true }
