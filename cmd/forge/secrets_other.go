//go:build !unix

package main

import "errors"

// execProcess is nil where a process cannot replace itself (Windows): the
// agent's token stays in its environment block there.
var execProcess func(argv0 string, argv, envv []string) error

func tokenPipe(string) (int, error) { return 0, errors.New("not supported") }
func closeFD(int)                   {}
