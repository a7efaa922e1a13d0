//go:build unix

package bench

import (
	"log/slog"
	"syscall"
)

// raiseFileLimit lifts RLIMIT_NOFILE as far as allowed: each simulated agent
// holds one TCP connection for its Poll (two while it reports), and an
// in-process server holds the other end of each.
func raiseFileLimit(log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	// The fields are uint64 on most systems and int64 on FreeBSD: untyped
	// constants and conversions keep one file for both.
	const want = 1 << 20
	if uint64(lim.Max) < want {
		up := lim
		up.Cur, up.Max = want, want
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) == nil {
			return
		}
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot raise the open file limit", "err", err)
	}
}

// fileLimit returns the open file limit in force.
func fileLimit() uint64 {
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return uint64(lim.Cur)
}
