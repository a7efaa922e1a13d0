package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DefaultKillGrace is how long ExecHandler lets a command's process tree exit
// after asking it to stop (SIGTERM; Ctrl-Break on Windows) before killing it.
const DefaultKillGrace = 5 * time.Second

// ExecOption configures ExecHandler.
type ExecOption func(*execConfig)

type execConfig struct {
	grace    time.Duration
	allowEnv map[string]bool // names a task's env may set (envKey); see WithAllowEnv
	user     *ExecUser       // who commands run as; nil: the agent's user (WithExecUser)
}

// WithKillGrace sets how long a stopped command's process tree may take to exit
// after it was asked to stop before it is killed; DefaultKillGrace when not given.
func WithKillGrace(d time.Duration) ExecOption {
	return func(c *execConfig) {
		if d >= 0 {
			c.grace = d
		}
	}
}

// ExecPayload is the payload of the built-in `exec` task type.
type ExecPayload struct {
	// Argv is the command and its arguments; Argv[0] must be allowed.
	Argv []string `json:"argv"`
	// Dir is the working directory; empty means the agent's.
	Dir string `json:"dir,omitempty"`
	// Env is added to the agent's environment, replacing variables of the same
	// name. Each name must be allowed (WithAllowEnv) and not forbidden (ForbiddenEnv).
	Env map[string]string `json:"env,omitempty"`
}

// ExecHandler returns the Handler of the built-in `exec` task type. The payload is
// JSON, see ExecPayload. The command runs only when argv[0] is exactly one of
// allow, compared as given (no PATH lookup decides it); otherwise the task fails
// with an error saying so. An empty allow list refuses every command.
//
// A relative argv[0] with a slash (./deploy.sh) means the file relative to the
// agent's working directory, whatever the payload's dir, and one without a slash
// is looked up in the agent's PATH, never the payload's env: the payload cannot
// change which program an allowed name runs. Commands inherit the agent's
// environment without forge's own tokens (FORGE_*TOKEN*); a task's env may set
// only the names allowed with WithAllowEnv, never the loader's, a shell's or an
// interpreter's start-up variables (ForbiddenEnv). Commands learn which attempt
// they run as from FORGE_TASK_ID, FORGE_JOB_ID and FORGE_TASK_ATTEMPT (the
// payload cannot set these): delivery is at least once, so a command with side
// effects can key them on the task id.
//
// The command runs in a process tree of its own, with stdin from the null
// device; its stdout and stderr go to the task's Stdout and Stderr as it prints
// them, so they are kept apart and can be read live (ReadOutput). Called
// outside an agent (a Task without Stdout and Stderr), the handler returns them
// interleaved as its output instead, capped to the agent's MaxOutput while they
// are read. A non-zero exit is returned as an *ExitError. When the task's context ends, the whole tree is asked to stop, and
// is killed after the grace period (WithKillGrace); children left running when
// the command exits are ended the same way. The handler returns only once no live
// process of the tree remains. With the agent's StateDir set, running trees are
// recorded there so the next start of the agent ends them if this one was killed.
//
// On Unix the tree is a process group: SIGTERM, then SIGKILL. On Windows it is a
// Job Object that no process can leave: a console Ctrl-Break to the command's
// process group, then the job is terminated (exit code 137); if the agent dies,
// Windows ends the job with it.
func ExecHandler(allow []string, opts ...ExecOption) Handler {
	cfg := execConfig{grace: DefaultKillGrace}
	for _, o := range opts {
		o(&cfg)
	}
	allowed := make(map[string]bool, len(allow))
	for _, a := range allow {
		allowed[a] = true
	}
	return func(ctx context.Context, t *Task) ([]byte, error) {
		var p ExecPayload
		if err := json.Unmarshal(t.Payload, &p); err != nil {
			return nil, fmt.Errorf(`exec: payload must be JSON {"argv": [...], "dir": "", "env": {}}: %v`, err)
		}
		if len(p.Argv) == 0 || p.Argv[0] == "" {
			return nil, fmt.Errorf("exec: argv is empty")
		}
		if !allowed[p.Argv[0]] {
			return nil, fmt.Errorf("exec: %q is not allowed on this agent (allow it with --allow-exec, matched exactly as given)", p.Argv[0])
		}
		if err := checkTaskEnv(p.Env, cfg.allowEnv); err != nil {
			return nil, err
		}
		add := make(map[string]string, len(p.Env)+6)
		for k, v := range p.Env {
			add[k] = v
		}
		// Set last, so a payload cannot pass one attempt off as another.
		add["FORGE_TASK_ID"] = t.ID
		add["FORGE_JOB_ID"] = t.JobID
		add["FORGE_TASK_ATTEMPT"] = strconv.Itoa(int(t.Attempt))
		if cfg.user != nil {
			add["HOME"], add["USER"], add["LOGNAME"] = cfg.user.Home, cfg.user.Name, cfg.user.Name
		}
		env, err := mergeEnv(os.Environ(), add)
		if err != nil {
			return nil, err
		}
		return runCommand(ctx, p, env, cfg, taskEnvFrom(ctx), t.Stdout, t.Stderr)
	}
}

// secretEnv tells whether an inherited variable holds a forge token, which a
// command must not see: `forge agent` takes its enrollment token from the
// environment, and a command run for an operator has no business with it. Case
// does not matter: on Windows, Forge_Enroll_Token is the same variable.
func secretEnv(k string) bool {
	k = strings.ToUpper(k)
	return strings.HasPrefix(k, "FORGE_") && strings.Contains(k, "TOKEN")
}

// mergeEnv returns base without forge's tokens, with add set over it, in a
// stable order. Names are compared as the system does: without case on Windows.
func mergeEnv(base []string, add map[string]string) ([]string, error) {
	return mergeEnvCase(base, add, runtime.GOOS == "windows")
}

// mergeEnvCase is mergeEnv; with fold, names that differ only in case are one
// variable (Windows), so add's Path replaces base's PATH, and two names of add
// that fold together are refused rather than one silently chosen.
func mergeEnvCase(base []string, add map[string]string, fold bool) ([]string, error) {
	name := func(k string) string { return k }
	if fold {
		name = strings.ToUpper
	}
	keys := make([]string, 0, len(add))
	set := make(map[string]string, len(add)) // name as compared -> name as given
	for k, v := range add {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("exec: env %q is not a valid variable", k)
		}
		if other, ok := set[name(k)]; ok {
			a, b := min(k, other), max(k, other)
			return nil, fmt.Errorf("exec: env %q and %q are the same variable on this system", a, b)
		}
		set[name(k)] = k
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(base)+len(add))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := set[name(k)]; !ok && !secretEnv(k) {
			out = append(out, kv)
		}
	}
	for _, k := range keys {
		out = append(out, k+"="+add[k])
	}
	return out, nil
}
