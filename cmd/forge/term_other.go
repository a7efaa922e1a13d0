//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package main

// terminalWidth reports no terminal: forge run prints plain progress lines
// here rather than redraw one (a Windows console needs escape sequences turned
// on first).
func terminalWidth(w any) (int, bool) { return 0, false }
