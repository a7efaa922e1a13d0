package agent

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
)

// WithAllowEnv names the variables an exec task's payload may set (its `env`);
// any other name refuses the task. Names are matched exactly (without case on
// Windows). A name that makes a program load or run other code than the one
// allowed — the dynamic loader's (LD_PRELOAD and every LD_*, DYLD_*), the C
// library's (GCONV_PATH, GLIBC_TUNABLES, …), a shell's start-up variables
// (BASH_ENV, ENV, BASH_FUNC_*, SHELLOPTS, PS4, …) or an interpreter's (PYTHONPATH,
// PERL5OPT, NODE_OPTIONS, JAVA_TOOL_OPTIONS, …), see ForbiddenEnv — is refused
// whatever this list says.
func WithAllowEnv(names ...string) ExecOption {
	return func(c *execConfig) {
		if c.allowEnv == nil {
			c.allowEnv = map[string]bool{}
		}
		for _, n := range names {
			c.allowEnv[envKey(n)] = true
		}
	}
}

// envKey is a variable's name as the system compares it: without case on Windows.
func envKey(name string) string {
	if runtime.GOOS == "windows" {
		return strings.ToUpper(name)
	}
	return name
}

// forbiddenPrefixes and forbiddenNames are the variables a task's env may never
// set (see ForbiddenEnv), upper case.
var (
	forbiddenPrefixes = []string{
		"LD_",        // the dynamic loader: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, …
		"DYLD_",      // macOS's loader
		"_RLD",       // IRIX and Tru64 loaders
		"BASH_FUNC_", // bash imports functions from these
	}
	forbiddenNames = map[string]bool{
		// Other loaders and the C library: code or data loaded from a path.
		"LIBPATH": true, "SHLIB_PATH": true, "GCONV_PATH": true, "GETCONF_DIR": true,
		"GLIBC_TUNABLES": true, "MALLOC_TRACE": true, "MALLOC_CHECK_": true, "NLSPATH": true,
		"LOCPATH": true, "HOSTALIASES": true, "LOCALDOMAIN": true, "RES_OPTIONS": true,
		"RESOLV_HOST_CONF": true, "TZDIR": true,
		// Shells: files sourced or commands run at start-up, and parsing changes.
		"BASH_ENV": true, "ENV": true, "SHELLOPTS": true, "BASHOPTS": true, "PS4": true,
		"PROMPT_COMMAND": true, "IFS": true, "CDPATH": true, "GLOBIGNORE": true, "ZDOTDIR": true,
		"BASH_XTRACEFD": true, "EXECIGNORE": true,
		// Interpreters: modules loaded or code run before the script.
		"PYTHONPATH": true, "PYTHONHOME": true, "PYTHONSTARTUP": true, "PYTHONINSPECT": true,
		"PYTHONUSERBASE": true, "PYTHONBREAKPOINT": true, "PERL5LIB": true, "PERLLIB": true,
		"PERL5OPT": true, "PERL5DB": true, "RUBYLIB": true, "RUBYOPT": true, "NODE_OPTIONS": true,
		"NODE_PATH": true, "JAVA_TOOL_OPTIONS": true, "_JAVA_OPTIONS": true, "JDK_JAVA_OPTIONS": true,
		"LUA_INIT": true, "LUA_PATH": true, "LUA_CPATH": true, "TCLLIBPATH": true,
	}
)

// ForbiddenEnv tells whether a task may never set variable name, whatever the
// agent's allow list says: the dynamic loader's variables (every LD_* and
// DYLD_*), the C library's that load code or data from a path (GCONV_PATH,
// GLIBC_TUNABLES, NLSPATH, HOSTALIASES, …), shells' start-up and parsing
// variables (BASH_ENV, ENV, BASH_FUNC_*, SHELLOPTS, PS4, PROMPT_COMMAND, IFS, …)
// and interpreters' (PYTHONPATH, PYTHONSTARTUP, PERL5OPT, RUBYOPT, NODE_OPTIONS,
// JAVA_TOOL_OPTIONS, …). Each lets whoever sets it run code of their own inside
// a command the agent's operator allowed. Case does not matter.
func ForbiddenEnv(name string) bool {
	n := strings.ToUpper(name)
	for _, p := range forbiddenPrefixes {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return forbiddenNames[n]
}

// checkTaskEnv refuses a task's env unless every name in it is allowed and
// none is forbidden; the error names the first such name in sorted order.
func checkTaskEnv(env map[string]string, allowed map[string]bool) error {
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		switch {
		case ForbiddenEnv(k):
			return fmt.Errorf("exec: env %q is never allowed: it can make the command run other code", k)
		case !allowed[envKey(k)]:
			return fmt.Errorf("exec: env %q is not allowed on this agent (allow it with --allow-env)", k)
		}
	}
	return nil
}
