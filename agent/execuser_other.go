//go:build !unix

package agent

import (
	"errors"
	"os/exec"
	"runtime"
)

var errNoExecUser = errors.New("running commands as another user is not supported on " + runtime.GOOS)

// LookupExecUser finds a user for WithExecUser; not on this system.
func LookupExecUser(string) (ExecUser, error) { return ExecUser{}, errNoExecUser }

func applyUser(_ *exec.Cmd, u *ExecUser) error {
	if u != nil {
		return errNoExecUser
	}
	return nil
}
