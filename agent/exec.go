package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DefaultKillGrace is how long ExecHandler lets a command's process group exit
// after SIGTERM before it sends SIGKILL.
const DefaultKillGrace = 5 * time.Second

// ExecOption configures ExecHandler.
type ExecOption func(*execConfig)

type execConfig struct {
	grace time.Duration
}

// WithKillGrace sets how long a stopped command's process group may take to exit
// after SIGTERM before SIGKILL; DefaultKillGrace when not given.
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
	// Env is added to the agent's environment, replacing variables of the same name.
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
// environment without forge's own tokens (FORGE_*TOKEN*), and learn which attempt
// they run as from FORGE_TASK_ID, FORGE_JOB_ID and FORGE_TASK_ATTEMPT (the
// payload cannot set these): delivery is at least once, so a command with side
// effects can key them on the task id.
//
// The command runs in its own process group with stdin from /dev/null; its stdout
// and stderr, interleaved, are the output, capped to the agent's MaxOutput while
// they are read. A non-zero exit is returned as an *ExitError. When the task's
// context ends, the whole group gets SIGTERM, then SIGKILL after the grace period
// (WithKillGrace); children left running when the command exits are ended the
// same way. The handler returns only once no live process of the group remains.
// With the agent's StateDir set, running groups are recorded there so the next
// start of the agent ends them if this one was killed.
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
		add := make(map[string]string, len(p.Env)+3)
		for k, v := range p.Env {
			add[k] = v
		}
		// Set last, so a payload cannot pass one attempt off as another.
		add["FORGE_TASK_ID"] = t.ID
		add["FORGE_JOB_ID"] = t.JobID
		add["FORGE_TASK_ATTEMPT"] = strconv.Itoa(int(t.Attempt))
		env, err := mergeEnv(os.Environ(), add)
		if err != nil {
			return nil, err
		}
		return runCommand(ctx, p, env, cfg, taskEnvFrom(ctx))
	}
}

// secretEnv tells whether an inherited variable holds a forge token, which a
// command must not see: `forge agent` takes its enrollment token from the
// environment, and a command run for an operator has no business with it.
func secretEnv(k string) bool {
	return strings.HasPrefix(k, "FORGE_") && strings.Contains(k, "TOKEN")
}

// mergeEnv returns base without forge's tokens, with add set over it, in a
// stable order.
func mergeEnv(base []string, add map[string]string) ([]string, error) {
	keys := make([]string, 0, len(add))
	for k, v := range add {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("exec: env %q is not a valid variable", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(base)+len(add))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := add[k]; !ok && !secretEnv(k) {
			out = append(out, kv)
		}
	}
	for _, k := range keys {
		out = append(out, k+"="+add[k])
	}
	return out, nil
}
