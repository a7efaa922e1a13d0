package main_test

import (
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// hostileText is what a hostile agent reports: an OSC 52 clipboard write, a
// window title, a line erase, a bidi override and a zero-width space.
const (
	hostileOutput = "ok\n\x1b]52;c;Y3VybCBldmlsfHNo\x07\x1b]0;all good\x07\r\x1b[2Kdone\n"
	hostileError  = "exit 1\u202e (all good)\u200b\x1b[1A"
)

// rawMarks are the characters none of which may reach the terminal unescaped.
var rawMarks = []string{"\x1b", "\x07", "\r", "\u202e", "\u200b"}

// TestAttackTerminalEscapes has a hostile agent report output and an error
// meant for the operator's terminal (issue 13, finding 6): `forge run`,
// `forge tasks` (list, one task, JSON) print them escaped, and only --raw
// prints them as they came.
func TestAttackTerminalEscapes(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctx := t.Context()
	reg, err := agentClient(url, enrollToken).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "hostile", TaskTypes: []string{"exec"}}))
	if err != nil {
		t.Fatal(err)
	}
	ag := agentClient(url, reg.Msg.AgentToken)
	// The agent answers the task forge run sends with the hostile report.
	go func() {
		for ctx.Err() == nil {
			res, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
			if err != nil || len(res.Msg.Tasks) == 0 {
				continue
			}
			tk := res.Msg.Tasks[0]
			ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: tk.Id, Attempt: tk.Attempt,
				Outcome: forgev1.Outcome_OUTCOME_FAILED, ExitCode: 1, Output: []byte(hostileOutput), Error: hostileError}))
			return
		}
	}()
	admin := env{"FORGE_ADMIN_TOKEN": adminToken, "FORGE_SERVER": url}
	out, code := runForge(t, admin, "run", "--agent", reg.Msg.AgentId, "--", "true")
	if code != 1 {
		t.Fatalf("forge run exited %d:\n%s", code, out)
	}
	assertEscaped(t, "forge run", out)
	if !strings.Contains(out, `\x1b]52;c;`) || !strings.Contains(out, `\u202e`) {
		t.Errorf("forge run does not show the escaped sequences:\n%s", out)
	}
	tasks, err := control(url).ListTasks(ctx, connect.NewRequest(&forgev1.ListTasksRequest{}))
	if err != nil || len(tasks.Msg.Tasks) != 1 {
		t.Fatalf("ListTasks = %v, %v", tasks, err)
	}
	id := tasks.Msg.Tasks[0].Id
	for _, args := range [][]string{{"tasks", id}, {"tasks", "--json", id}, {"tasks"}, {"tasks", "--json"}, {"agents"}} {
		out, code := runForge(t, admin, args...)
		if code != 0 {
			t.Fatalf("forge %s exited %d:\n%s", strings.Join(args, " "), code, out)
		}
		assertEscaped(t, "forge "+strings.Join(args, " "), out)
	}
	// --raw is the operator's own choice.
	out, _ = runForge(t, admin, "tasks", "--raw", id)
	if !strings.Contains(out, hostileOutput) || !strings.Contains(out, hostileError) {
		t.Errorf("forge tasks --raw did not print the text as it came:\n%q", out)
	}
}

func assertEscaped(t *testing.T, what, out string) {
	t.Helper()
	for _, m := range rawMarks {
		if strings.Contains(out, m) {
			t.Errorf("%s printed %q raw:\n%q", what, m, out)
		}
	}
}
