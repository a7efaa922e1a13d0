//go:build unix

package agent

import (
	"fmt"
	"os/exec"
	"syscall"
)

// pgroup is a process group: the exec command is its leader.
type pgroup int

// startTree starts cmd as the leader of a new process group (keeping the
// credential applyUser set, if any).
func startTree(cmd *exec.Cmd) (processTree, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return pgroup(cmd.Process.Pid), nil
}

func (g pgroup) id() int { return int(g) }

// interrupt sends SIGTERM (and SIGCONT, so stopped members see it).
func (g pgroup) interrupt() bool {
	err := syscall.Kill(-int(g), syscall.SIGTERM)
	syscall.Kill(-int(g), syscall.SIGCONT)
	return err == nil
}

func (g pgroup) kill()      { syscall.Kill(-int(g), syscall.SIGKILL) }
func (g pgroup) gone() bool { return groupGone(int(g)) }
func (g pgroup) release()   {}

func treeName(t processTree) string { return fmt.Sprintf("process group %d", t.id()) }

// exitStatus returns the code to report for a command that exited with e, as
// shells report it: 128 + the signal number for a command ended by a signal.
func exitStatus(e *exec.ExitError) (int, error) {
	ws, _ := e.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal()), fmt.Errorf("killed by signal %v", ws.Signal())
	}
	return ws.ExitStatus(), fmt.Errorf("exit status %d", ws.ExitStatus())
}
