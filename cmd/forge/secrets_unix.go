//go:build unix

package main

import "syscall"

// execProcess replaces the process with argv0 (see Main.Exec).
var execProcess = syscall.Exec

// tokenPipe returns the read end of a pipe holding token, open across exec.
func tokenPipe(token string) (int, error) {
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		return 0, err
	}
	syscall.CloseOnExec(p[1])
	_, err := syscall.Write(p[1], []byte(token))
	syscall.Close(p[1])
	if err != nil {
		syscall.Close(p[0])
		return 0, err
	}
	return p[0], nil
}

func closeFD(fd int) { syscall.Close(fd) }
