//go:build !linux && !darwin && !windows

package service

import (
	"fmt"
	"runtime"
)

// Install is not available here: run `forge agent` under the system's own
// service manager (an rc.d script on FreeBSD).
func Install(Config) error {
	return fmt.Errorf("forge agent install does not know %s's service manager; run `forge agent` under it (see docs/operations.md)", runtime.GOOS)
}

// Uninstall is not available here either.
func Uninstall(Config, bool) error { return Install(Config{}) }
