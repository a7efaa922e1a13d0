package main

import "golang.org/x/sys/unix"

// hideMemory makes the process undumpable: another process of the same user
// (a command the agent runs) can then neither trace it nor read its memory,
// /proc/<pid>/environ, /proc/<pid>/fd or /proc/<pid>/root. Root still can.
func hideMemory() error { return unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0) }
