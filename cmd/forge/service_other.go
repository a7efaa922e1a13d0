//go:build !windows

package main

import (
	"context"
	"errors"
)

// inService tells whether the process was started by the Windows service
// manager: never here (systemd and launchd run the agent as a plain process and
// stop it with SIGTERM).
func inService() bool { return false }

func (m *Main) serveAgentService(context.Context, AgentConfig) error {
	return errors.New("not a Windows service")
}
