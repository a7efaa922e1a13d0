package main_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	forge "github.com/orange-forge/forge/cmd/forge"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// TestExportStdoutHoldsOnlyHistory: `forge server --export -` (memory and
// Redis) writes the start-up lines to stderr, so its stdout is JSON lines of
// finished tasks and nothing else — `forge server --export - | jq` works, and
// a generated token never reaches the history's reader.
func TestExportStdoutHoldsOnlyHistory(t *testing.T) {
	onBackends(t, func(t *testing.T, backend []string) {
		var stdout, stderr buffer
		ctx, cancel := context.WithCancel(context.Background())
		urls := make(chan string, 1)
		m := &forge.Main{Stdout: &stdout, Stderr: &stderr, Getenv: env{"FORGE_ENROLL_TOKEN": enrollToken}.get,
			Ready: func(u string) { urls <- u }}
		done := make(chan struct{})
		go func() {
			defer close(done)
			m.Run(ctx, append([]string{"server", "--listen", "127.0.0.1:0", "--export", "-"}, backend...))
		}()
		t.Cleanup(func() { cancel(); <-done })
		var url string
		select {
		case url = <-urls:
		case <-done:
			t.Fatalf("the server exited:\n%s", stderr.String())
		}
		if !strings.Contains(stderr.String(), "forge server listening on") || !strings.Contains(stderr.String(), "admin token (generated, shown once)") {
			t.Fatalf("the start-up lines are not on stderr:\n%s", stderr.String())
		}
		var admin string
		for _, l := range strings.Split(stderr.String(), "\n") {
			if _, tok, ok := strings.Cut(l, "admin token (generated, shown once):"); ok {
				admin = strings.TrimSpace(tok)
			}
		}
		startAgent(t, url, "--name", "exp-1")
		ctl := controlAs(url, admin)
		waitAgents(t, ctl, "", 1)
		res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
			Target: &forgev1.DispatchRequest_All{All: true}, Wait: durationpb.New(30 * time.Second)}))
		if err != nil || len(res.Msg.Tasks) != 1 || res.Msg.Tasks[0].State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			t.Fatalf("Dispatch: %v, %v", res, err)
		}
		id := res.Msg.TaskIds[0]
		waitFor(t, "the task on stdout", func() bool { return strings.Contains(stdout.String(), id) })
		for _, l := range strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n") {
			var ti forgev1.TaskInfo
			if err := protojson.Unmarshal([]byte(l), &ti); err != nil {
				t.Errorf("stdout holds a line that is not a finished task (%v): %q", err, l)
			}
		}
		if strings.Contains(stdout.String(), admin) {
			t.Errorf("the generated admin token is on stdout, with the history")
		}
	})
}

// TestEnvValueRefused: a variable whose value its flag cannot take stops the
// command, naming the variable, rather than leaving the default in place (or,
// as fmt.Sscan did, taking "1" of "1.5"); the command line's flag overrides it.
func TestEnvValueRefused(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, value string }{
		{"FORGE_RETENTION", "garbage"},
		{"FORGE_RETENTION", "7"},
		{"FORGE_RETENTION_PER_AGENT", "1.5"},
		{"FORGE_RETENTION_JOBS", "ten"},
		{"FORGE_REGISTER_RATE", "fast"},
		{"FORGE_INSECURE", "treu"},
	} {
		e := env{"FORGE_ENROLL_TOKEN": enrollToken, "FORGE_ADMIN_TOKEN": adminToken, c.name: c.value}
		out, code := runForge(t, e, "server", "--listen", "127.0.0.1:0")
		flagName := "--" + strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(c.name, "FORGE_")), "_", "-")
		if code != 2 || !strings.Contains(out, c.name+"=\""+c.value+"\" is not a value for "+flagName) {
			t.Errorf("%s=%s: exit %d:\n%s", c.name, c.value, code, out)
		}
	}
	// Given on the command line, the flag wins and the variable is not looked at.
	e := env{"FORGE_ENROLL_TOKEN": enrollToken, "FORGE_ADMIN_TOKEN": adminToken, "FORGE_RETENTION": "garbage"}
	startForge(t, e, "server", "--listen", "127.0.0.1:0", "--retention", "1h").waitURL(t)
}

// TestExportDestinationRefused: --export of a URL with no host, or of a scheme
// that is neither http nor https, is refused at start with what it takes.
func TestExportDestinationRefused(t *testing.T) {
	t.Parallel()
	for dest, want := range map[string]string{
		"http://":      `"http://" is not a URL to POST to: it names no host`,
		"https:///x":   `"https:///x" is not a URL to POST to: it names no host`,
		"ftp://host/x": `"ftp://host/x": only http:// and https:// URLs, a file or - (stdout) can take the export`,
	} {
		out, code := runForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0", "--export", dest)
		if code == 0 || !strings.Contains(out, "--export: "+want) {
			t.Errorf("--export %s: exit %d:\n%s", dest, code, out)
		}
	}
}
