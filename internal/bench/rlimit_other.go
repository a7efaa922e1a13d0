//go:build !unix

package bench

import "log/slog"

// raiseFileLimit does nothing where there is no RLIMIT_NOFILE (Windows): handles
// are not capped per process by a limit a program raises.
func raiseFileLimit(*slog.Logger) {}

// fileLimit returns a number no bench reaches: there is no such limit here.
func fileLimit() uint64 { return 1 << 24 }
