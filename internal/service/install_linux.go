//go:build linux

package service

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"strconv"
)

// Install writes the systemd unit, the configuration and the enrollment token,
// creates the service's user, and enables the unit, then (unless NoStart)
// restarts it, so running install again applies a new configuration. Running
// tasks drain first.
func Install(c Config) error {
	if c.User == "" {
		c.User = User
	}
	if c.Root == "" && os.Geteuid() != 0 {
		return errors.New("installing a service needs root (sudo)")
	}
	if c.Root == "" {
		if _, err := exec.LookPath("systemctl"); err != nil {
			return errors.New("no systemctl here: forge agent install knows systemd only; run `forge agent` under your service manager")
		}
	}
	if err := c.ensureUser(); err != nil {
		return err
	}
	env, err := EnvFileContent(c.Env)
	if err != nil {
		return err
	}
	if err := c.writeFile(EnvFile, []byte(env), 0o644); err != nil {
		return err
	}
	if c.EnrollToken != "" {
		if err := c.writeFile(TokenFile, []byte(c.EnrollToken+"\n"), 0o600); err != nil {
			return err
		}
		if err := c.chown(TokenFile); err != nil {
			return err
		}
	} else if _, err := os.Stat(c.path(TokenFile)); errors.Is(err, fs.ErrNotExist) && !c.enrolled() {
		return fmt.Errorf("no enrollment token: give --enroll-token or --enroll-token-file (this machine has no %s and no identity in %s)", TokenFile, StateDir)
	}
	unit := SystemdUnit(c.Exe)
	if c.User != User {
		unit = replaceUser(unit, c.User)
	}
	if err := c.writeFile(UnitFile, []byte(unit), 0o644); err != nil {
		return err
	}
	if err := c.run("systemctl", "daemon-reload"); err != nil {
		return err
	}
	if err := c.run("systemctl", "enable", Name); err != nil {
		return err
	}
	if c.NoStart {
		return nil
	}
	return c.run("systemctl", "restart", Name)
}

// Uninstall stops (a drain) and disables the unit and removes it. With purge
// it also removes the configuration, the token and the agent's identity, so the
// machine would enroll as a new agent; the user stays (files may still be its).
func Uninstall(c Config, purge bool) error {
	if c.Root == "" && os.Geteuid() != 0 {
		return errors.New("removing a service needs root (sudo)")
	}
	if _, err := os.Stat(c.path(UnitFile)); err == nil {
		if err := c.run("systemctl", "disable", "--now", Name); err != nil {
			return err
		}
		if err := os.Remove(c.path(UnitFile)); err != nil {
			return err
		}
		if err := c.run("systemctl", "daemon-reload"); err != nil {
			return err
		}
	}
	if purge {
		for _, p := range []string{EnvFile, TokenFile, StateDir} {
			if err := os.RemoveAll(c.path(p)); err != nil {
				return err
			}
		}
	}
	return nil
}

// ensureUser creates the service's system user (and group) unless it exists.
func (c *Config) ensureUser() error {
	if c.User == "root" {
		return nil
	}
	if _, err := user.Lookup(c.User); err == nil || c.Root != "" {
		return nil
	}
	return c.run("useradd", "--system", "--user-group", "--home-dir", StateDir, "--no-create-home",
		"--shell", "/usr/sbin/nologin", "--comment", "forge agent", c.User)
}

// chown gives p to the service's user, which reads it.
func (c *Config) chown(p string) error {
	if c.Root != "" {
		return nil
	}
	u, err := user.Lookup(c.User)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(p, uid, gid)
}

// enrolled tells whether the state dir holds an identity already.
func (c *Config) enrolled() bool {
	_, err := os.Stat(c.path(StateDir + "/identity.json"))
	return err == nil
}
