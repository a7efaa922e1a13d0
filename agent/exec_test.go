//go:build linux

package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// groupsSeen records the process groups an exec task starts.
type groupsSeen struct {
	mu   sync.Mutex
	all  []int
	live map[int]bool
}

func (g *groupsSeen) addGroup(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.live == nil {
		g.live = map[int]bool{}
	}
	g.all = append(g.all, pgid)
	g.live[pgid] = true
}

func (g *groupsSeen) removeGroup(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.live, pgid)
}

func (g *groupsSeen) check(t *testing.T) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.all) != 1 {
		t.Fatalf("groups started: %v, want one", g.all)
	}
	if len(g.live) != 0 {
		t.Fatalf("groups still recorded: %v", g.live)
	}
	if !groupGone(g.all[0]) {
		t.Fatalf("process group %d still has live members", g.all[0])
	}
}

func execTask(t *testing.T, argv []string, env map[string]string) *Task {
	t.Helper()
	p, err := json.Marshal(ExecPayload{Argv: argv, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	return &Task{ID: "t1", Type: "exec", Attempt: 1, Payload: p}
}

func runExec(ctx context.Context, t *testing.T, h Handler, argv []string, env map[string]string, maxOutput int) ([]byte, error, *taskEnv, *groupsSeen) {
	t.Helper()
	g := &groupsSeen{}
	te := &taskEnv{maxOutput: maxOutput, groups: g}
	out, err := h(withTaskEnv(ctx, te), execTask(t, argv, env))
	return out, err, te, g
}

func TestExecOutputAndExitCode(t *testing.T) {
	t.Parallel()
	h := ExecHandler([]string{"sh"}, WithAllowEnv("FORGE_X"))
	out, err, _, g := runExec(t.Context(), t, h, []string{"sh", "-c", "echo out; echo err >&2; echo $FORGE_X"}, map[string]string{"FORGE_X": "from-env"}, 1<<20)
	if err != nil || string(out) != "out\nerr\nfrom-env\n" {
		t.Fatalf("got %q, %v", out, err)
	}
	g.check(t)

	out, err, _, g = runExec(t.Context(), t, h, []string{"sh", "-c", "echo failing; exit 3"}, nil, 1<<20)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 || string(out) != "failing\n" {
		t.Fatalf("got %q, %v; want exit code 3", out, err)
	}
	g.check(t)
}

func TestExecRefusals(t *testing.T) {
	t.Parallel()
	h := ExecHandler([]string{"sh", "/bin/echo"}, WithAllowEnv("A=B"))
	for _, tc := range []struct {
		name, payload, want string
	}{
		{"path differs", `{"argv":["/bin/sh","-c","true"]}`, `"/bin/sh" is not allowed`},
		{"not listed", `{"argv":["rm","-rf","/"]}`, `"rm" is not allowed`},
		{"relative trick", `{"argv":["./sh"]}`, `"./sh" is not allowed`},
		{"empty argv", `{"argv":[]}`, "argv is empty"},
		{"not json", `sh -c true`, "payload must be JSON"},
		{"bad env", `{"argv":["sh"],"env":{"A=B":"x"}}`, "not a valid variable"},
		{"env not allowed", `{"argv":["sh"],"env":{"PATH":"/tmp"}}`, `env "PATH" is not allowed on this agent`},
	} {
		_, err := h(t.Context(), &Task{Type: "exec", Payload: []byte(tc.payload)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := ExecHandler(nil)(t.Context(), execTask(t, []string{"sh"}, nil)); err == nil {
		t.Error("an empty allow list ran a command")
	}
}

// A background child that keeps the output pipe open must not hang the task,
// and must not outlive it.
func TestExecBackgroundChildDoesNotHang(t *testing.T) {
	t.Parallel()
	start := time.Now()
	out, err, _, g := runExec(t.Context(), t, ExecHandler([]string{"sh"}), []string{"sh", "-c", "sleep 60 & echo hi"}, nil, 1<<20)
	if err != nil || string(out) != "hi\n" {
		t.Fatalf("got %q, %v", out, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	g.check(t)
}

// cancelWhenReady calls cancel once the file ready exists (the script made it).
func cancelWhenReady(t *testing.T, ready string, cancel func()) {
	go func() {
		for {
			if _, err := os.Stat(ready); err == nil {
				cancel()
				return
			}
			select {
			case <-t.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
}

func TestExecCancelEndsWholeGroup(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancelCause(t.Context())
	ready := filepath.Join(t.TempDir(), "ready")
	cancelWhenReady(t, ready, func() { cancel(errors.New("test cancel")) })
	start := time.Now()
	_, err, _, g := runExec(ctx, t, ExecHandler([]string{"sh"}, WithAllowEnv("READY")), []string{"sh", "-c", `sleep 60 & touch "$READY"; sleep 60`}, map[string]string{"READY": ready}, 1<<20)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 128+15 || !strings.Contains(err.Error(), "test cancel") {
		t.Fatalf("err %v, want exit code 143 naming the cause", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("took %v", d)
	}
	g.check(t)
}

func TestExecKillsAfterGrace(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	h := ExecHandler([]string{"sh"}, WithKillGrace(300*time.Millisecond), WithAllowEnv("READY"))
	ready := filepath.Join(t.TempDir(), "ready")
	// The ignored SIGTERM is inherited by the background child too.
	argv := []string{"sh", "-c", `trap "" TERM; sleep 60 & echo started; touch "$READY"; sleep 60`}
	var cancelled time.Time
	cancelWhenReady(t, ready, func() { cancelled = time.Now(); cancel() })
	out, err, _, g := runExec(ctx, t, h, argv, map[string]string{"READY": ready}, 1<<20)
	end := time.Now()
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 128+9 {
		t.Fatalf("err %v, want SIGKILL (137)", err)
	}
	if string(out) != "started\n" {
		t.Fatalf("output %q", out)
	}
	if d := end.Sub(cancelled); d < 250*time.Millisecond || d > 5*time.Second {
		t.Fatalf("stopped %v after the cancel; want about the grace", d)
	}
	g.check(t)
}

func TestExecCapsOutputWhileReading(t *testing.T) {
	t.Parallel()
	out, err, te, g := runExec(t.Context(), t, ExecHandler([]string{"sh"}), []string{"sh", "-c", "head -c 3000000 /dev/zero; echo end"}, nil, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) > 1000 || !te.truncated || te.size != 3000004 || !strings.HasSuffix(string(out), "end\n") || !strings.Contains(string(out), "bytes cut") {
		t.Fatalf("len %d truncated %v size %d tail %q", len(out), te.truncated, te.size, out[max(0, len(out)-60):])
	}
	g.check(t)
}

func TestExecStartFailure(t *testing.T) {
	t.Parallel()
	_, err := ExecHandler([]string{"/nonexistent/forge-cmd"})(t.Context(), execTask(t, []string{"/nonexistent/forge-cmd"}, nil))
	if err == nil || !strings.Contains(err.Error(), "start") {
		t.Fatalf("err %v", err)
	}
}

func TestExecEnvNamesTheAttempt(t *testing.T) {
	t.Parallel()
	h := ExecHandler([]string{"sh"}, WithAllowEnv("FORGE_TASK_ATTEMPT"))
	p, _ := json.Marshal(ExecPayload{Argv: []string{"sh", "-c", "echo $FORGE_TASK_ID $FORGE_JOB_ID $FORGE_TASK_ATTEMPT"},
		Env: map[string]string{"FORGE_TASK_ATTEMPT": "99"}})
	out, err := h(t.Context(), &Task{ID: "t1-a1", JobID: "j1", Type: "exec", Attempt: 3, Payload: p})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "t1-a1 j1 3\n" {
		t.Fatalf("output %q, want the task id, job id and attempt (the payload's FORGE_TASK_ATTEMPT ignored)", out)
	}
}

func TestExecEnvHidesTokensAndKeepsRelativePath(t *testing.T) {
	t.Setenv("FORGE_ENROLL_TOKEN", "enroll-secret-value")
	dir := t.TempDir()
	other := t.TempDir()
	script := "#!/bin/sh\necho real; pwd; echo tok=$FORGE_ENROLL_TOKEN\n"
	if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "run.sh"), []byte("#!/bin/sh\necho impostor\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	h := ExecHandler([]string{"./run.sh"})
	p, _ := json.Marshal(ExecPayload{Argv: []string{"./run.sh"}, Dir: other})
	out, err := h(t.Context(), &Task{Type: "exec", Payload: p})
	if err != nil {
		t.Fatal(err)
	}
	if want := "real\n" + other + "\ntok=\n"; string(out) != want {
		t.Fatalf("output %q, want %q", out, want)
	}
}

// TestAttackExecEnv sends exec tasks whose env makes an allowed command run
// other code (issue 13, finding 3): LD_PRELOAD of a library that would print
// "pwned", BASH_ENV and ENV naming a script, and exported bash functions. Each
// is refused before anything runs, even when the agent's operator listed the
// name with --allow-env; a name not listed is refused too.
func TestAttackExecEnv(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	evil := filepath.Join(dir, "evil.sh")
	if err := os.WriteFile(evil, []byte("echo pwned\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Even an allow list that names them all cannot let these through.
	names := []string{"LD_PRELOAD", "ld_preload", "LD_LIBRARY_PATH", "LD_AUDIT", "BASH_ENV", "ENV", "BASH_FUNC_uptime%%",
		"GCONV_PATH", "GLIBC_TUNABLES", "SHELLOPTS", "PS4", "PYTHONSTARTUP", "PERL5OPT", "NODE_OPTIONS", "DYLD_INSERT_LIBRARIES"}
	h := ExecHandler([]string{"sh", "uptime"}, WithAllowEnv(append(names, "GREETING")...))
	for _, name := range names {
		for _, argv := range [][]string{{"uptime"}, {"sh", "-c", "echo ran"}} {
			out, err, _, _ := runExec(t.Context(), t, h, argv, map[string]string{name: evil}, 1<<20)
			if err == nil || !strings.Contains(err.Error(), "never allowed") || len(out) != 0 {
				t.Errorf("env %s with %v: output %q, err %v; want it refused before running", name, argv, out, err)
			}
		}
	}
	// A listed, harmless name passes; one not listed is refused.
	out, err, _, _ := runExec(t.Context(), t, h, []string{"sh", "-c", "echo $GREETING"}, map[string]string{"GREETING": "hi"}, 1<<20)
	if err != nil || string(out) != "hi\n" {
		t.Errorf("an allowed variable: %q, %v", out, err)
	}
	out, err, _, _ = runExec(t.Context(), t, h, []string{"sh", "-c", "echo ran"}, map[string]string{"HOME": dir}, 1<<20)
	if err == nil || !strings.Contains(err.Error(), "--allow-env") || len(out) != 0 {
		t.Errorf("a variable not allowed: %q, %v; want it refused", out, err)
	}
}
