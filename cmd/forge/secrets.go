package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// An agent's enrollment token must not be readable by the commands the agent
// runs, however they look: a command's environment leaves it out (see
// agent.ExecHandler), but /proc/<agent pid>/environ shows the environment the
// agent was started with, which unsetting a variable does not change, and
// /proc/<agent pid>/cmdline shows its command line to every user. So `forge
// agent`, given its token by --enroll-token or FORGE_ENROLL_TOKEN, first starts
// itself again — the same process, by exec — without them, handing the token
// over through a pipe whose descriptor FORGE_ENROLL_TOKEN_FD names. Then it
// makes itself undumpable (secrets_linux.go), so that another process of its
// user cannot read its memory or /proc files either.

// tokenFDVar names the descriptor the re-executed agent reads its token from.
const tokenFDVar = "FORGE_ENROLL_TOKEN_FD"

// secretFlags are the agent's flags whose value is a secret.
var secretFlags = []string{"enroll-token"}

// withoutSecrets returns the agent's arguments without the secret flags and
// their values, and whether there were any.
func withoutSecrets(args []string) ([]string, bool) {
	out := make([]string, 0, len(args))
	found := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || !isSecretFlag(name) {
			out = append(out, a)
			continue
		}
		found = true
		if !hasValue {
			i++ // the value is the next argument
		}
	}
	return out, found
}

func isSecretFlag(name string) bool {
	for _, f := range secretFlags {
		if name == f {
			return true
		}
	}
	return false
}

// secretEnv tells whether a variable holds one of forge's tokens.
func secretEnv(kv string) bool {
	k, _, _ := strings.Cut(kv, "=")
	k = strings.ToUpper(k)
	return strings.HasPrefix(k, "FORGE_") && strings.Contains(k, "TOKEN") && k != tokenFDVar
}

// hideAgentSecrets starts `forge agent` again without its token on the command
// line or in the environment, when it has one there and m can replace the
// process (m.Exec); it returns only if it did not (nil), or could not (an error).
func (m *Main) hideAgentSecrets(args []string, token string) error {
	if m.Exec == nil || token == "" {
		return nil
	}
	rest, inArgs := withoutSecrets(args)
	env := os.Environ()
	clean := make([]string, 0, len(env)+1)
	inEnv := false
	for _, kv := range env {
		if secretEnv(kv) {
			inEnv = true
			continue
		}
		if !strings.HasPrefix(kv, tokenFDVar+"=") {
			clean = append(clean, kv)
		}
	}
	if !inArgs && !inEnv {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cannot start again without the enrollment token in view: %w", err)
	}
	fd, err := tokenPipe(token)
	if err != nil {
		return fmt.Errorf("cannot start again without the enrollment token in view: %w", err)
	}
	clean = append(clean, tokenFDVar+"="+strconv.Itoa(fd))
	argv := append([]string{os.Args[0], "agent"}, rest...)
	err = m.Exec(exe, argv, clean)
	closeFD(fd)
	return fmt.Errorf("cannot start again without the enrollment token in view: %w", err)
}

// readTokenFD reads the token the agent handed itself (see hideAgentSecrets).
func readTokenFD(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 3 {
		return "", fmt.Errorf("%s=%q is not a descriptor", tokenFDVar, v)
	}
	f := os.NewFile(uintptr(n), "enroll-token")
	if f == nil {
		return "", fmt.Errorf("%s=%q is not a descriptor", tokenFDVar, v)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("%s: %w", tokenFDVar, err)
	}
	if len(b) == 0 {
		return "", errors.New(tokenFDVar + ": no token in it")
	}
	return string(b), nil
}
