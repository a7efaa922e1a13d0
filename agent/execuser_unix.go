//go:build unix

package agent

import (
	"fmt"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
)

// LookupExecUser finds a user by name (or numeric id) for WithExecUser.
func LookupExecUser(name string) (ExecUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return ExecUser{}, fmt.Errorf("no user %q", name)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return ExecUser{}, fmt.Errorf("user %q has no numeric uid and gid", name)
	}
	eu := ExecUser{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	ids, _ := u.GroupIds()
	for _, g := range ids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			eu.Groups = append(eu.Groups, uint32(n))
		}
	}
	return eu, nil
}

// applyUser makes cmd run as u (nil: the agent's user).
func applyUser(cmd *exec.Cmd, u *ExecUser) error {
	if u == nil {
		return nil
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
	return nil
}
