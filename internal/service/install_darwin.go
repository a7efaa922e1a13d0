//go:build darwin

package service

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// Install writes the launchd daemon and the enrollment token (0600, root's, or
// the given user's) and loads the daemon, replacing a loaded one, so running
// install again applies a new configuration. The configuration lives in the
// plist's EnvironmentVariables. It runs as root unless User names an existing
// user.
func Install(c Config) error {
	if c.Root == "" && os.Geteuid() != 0 {
		return errors.New("installing a service needs root (sudo)")
	}
	if c.EnrollToken != "" {
		if err := c.writeFile(TokenFile, []byte(c.EnrollToken+"\n"), 0o600); err != nil {
			return err
		}
		if c.User != "" && c.Root == "" {
			if err := c.run("chown", c.User, TokenFile); err != nil {
				return err
			}
		}
	} else if _, err := os.Stat(c.path(TokenFile)); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(c.path(StateDir + "/identity.json")); err != nil {
			return fmt.Errorf("no enrollment token: give --enroll-token or --enroll-token-file (this machine has no %s and no identity in %s)", TokenFile, StateDir)
		}
	}
	if err := c.writeFile(PlistFile, []byte(LaunchdPlist(c.Exe, c.Env, c.User)), 0o644); err != nil {
		return err
	}
	c.bootout()
	if c.NoStart {
		return nil // RunAtLoad starts it at the next boot
	}
	return c.run("launchctl", "bootstrap", "system", PlistFile)
}

// Uninstall unloads the daemon (a drain: SIGTERM, then up to ExitTimeOut) and
// removes it; with purge also the token and the agent's identity.
func Uninstall(c Config, purge bool) error {
	if c.Root == "" && os.Geteuid() != 0 {
		return errors.New("removing a service needs root (sudo)")
	}
	c.bootout()
	if err := os.Remove(c.path(PlistFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if purge {
		for _, p := range []string{TokenFile, StateDir} {
			if err := os.RemoveAll(c.path(p)); err != nil {
				return err
			}
		}
	}
	return nil
}

// bootout unloads the daemon if it is loaded (a drain: SIGTERM, then up to
// ExitTimeOut), and waits until launchd no longer knows it, so it can be loaded
// again at once.
func (c *Config) bootout() {
	target := "system/" + LaunchdLabel
	if c.Root != "" || c.run("launchctl", "print", target) != nil {
		return // not loaded
	}
	c.run("launchctl", "bootout", target)
	for deadline := time.Now().Add(100 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if c.run("launchctl", "print", target) != nil {
			return
		}
	}
}
