//go:build !unix

package agent

import (
	"context"
	"errors"
	"os"
)

func runCommand(context.Context, ExecPayload, []string, execConfig, *taskEnv) ([]byte, error) {
	return nil, errors.New("exec: not supported on this operating system")
}

func lockDir(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
}

func procStartTime(int) uint64  { return 0 }
func bootID() string            { return "" }
func ownGroup(groupRecord) bool { return false }
func killGroupNow(int) bool     { return true }
