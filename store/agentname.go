package store

import (
	"strings"
	"unicode"

	"github.com/orange-forge/forge/internal/termsafe"
)

// AgentNameRule says what an agent may be called, in the words every refusal
// uses (the server's invalid_argument, the stores', `forge agent --name`).
const AgentNameRule = "a name is printable UTF-8 (no control, bidi or zero-width characters) " +
	"with no space at either end and no space but U+0020, without * ? [ ] \\ (they make a name pattern), " +
	"and not shaped like an agent id (\"a\" and 15 characters)"

// globChars are the characters a name pattern reads specially. A name holding
// one could only be reached by escaping it, and `*` would look like every agent
// in a listing that echoes the pattern.
const globChars = `*?[]\`

// CheckAgentName tells why name cannot name an agent, or returns nil. An agent's
// name is what `--agent`, ListAgents' name filter and Dispatch's agent_name
// match, so it must be one that a pattern matches as written (no glob
// characters), that is not read as an agent id, and that shows on a terminal
// as it is (PrintableName). The length limit is the server's (Limits.MaxName).
func CheckAgentName(name string) error {
	why := ""
	switch {
	case name == "":
		why = "must not be empty"
	case strings.ContainsAny(name, globChars):
		why = "must not hold * ? [ ] or \\"
	case len(name) == AgentIDLen && ValidID(name, 'a'):
		why = "would be read as an agent id"
	case !PrintableName(name):
		why = "is not printable or is spaced to pass for another name"
	default:
		return nil
	}
	return Errorf(KindInvalid, "name: %.80q %s; %s", name, why, AgentNameRule)
}

// PrintableName tells whether s can name what an operator picks from a list
// (an agent, its host, a task type): printable (termsafe.Safe), with no space
// that passes for another — none at either end, and none but U+0020 — since
// "web-1 " and "web\u00a01" show as "web-1" and "web 1" but are other names.
func PrintableName(s string) bool {
	if !termsafe.Safe(s) || strings.TrimSpace(s) != s {
		return false
	}
	for _, r := range s {
		if r != ' ' && unicode.IsSpace(r) {
			return false
		}
	}
	return true
}
