package server_test

import (
	"strings"
	"testing"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/store"
)

// TestAttackFanOutLimits: a Dispatch reaching more agents than the server's
// limit (--max-targets) is refused with resource_exhausted and creates nothing
// (issue 13, finding 4), and every Dispatch leaves one audit line — refused,
// failed or accepted alike — saying who, what, to whom and what became of it.
func TestAttackFanOutLimits(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		s := forgetest.Start(t, forgetest.Options{Backend: b, Store: store.Config{MaxTargets: 3}})
		ctx := t.Context()
		for i := range 4 {
			s.Register("fan", map[string]string{"n": string(rune('a' + i))})
		}
		_, err := s.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("x"),
			Target: &forgev1.DispatchRequest_All{All: true}, IdempotencyKey: "fan"}))
		if codeOf(err) != "resource_exhausted" || !strings.Contains(err.Error(), "--max-targets") {
			t.Fatalf("Dispatch to 4 agents over a limit of 3: %v", err)
		}
		tasks, err := s.Control.ListTasks(ctx, connect.NewRequest(&forgev1.ListTasksRequest{}))
		if err != nil || len(tasks.Msg.Tasks) != 0 {
			t.Fatalf("after the refusal: %v, %v; want no task", tasks, err)
		}
		_, err = s.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo"}))
		if codeOf(err) != "invalid_argument" {
			t.Fatalf("Dispatch without a target: %v", err)
		}
		res, err := s.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_Selector{Selector: "n in (a,b,c)"}, IdempotencyKey: "fan"}))
		if err != nil || len(res.Msg.TaskIds) != 3 {
			t.Fatalf("Dispatch to 3 agents: %v, %v", res, err)
		}
		var audit []string
		for _, l := range s.Log.Lines() {
			if strings.Contains(l, `"msg":"audit: dispatch"`) {
				audit = append(audit, l)
			}
		}
		want := []string{`"outcome":"resource_exhausted"`, `"outcome":"invalid_argument"`, `"outcome":"ok"`}
		if len(audit) != len(want) {
			t.Fatalf("%d audit lines for 3 dispatches:\n%s", len(audit), strings.Join(audit, "\n"))
		}
		for i, w := range want {
			if !strings.Contains(audit[i], w) || !strings.Contains(audit[i], `"by":"operator:`) {
				t.Errorf("audit line %d lacks %s or who:\n%s", i, w, audit[i])
			}
		}
		if !strings.Contains(audit[0], `"target":"all=true"`) || !strings.Contains(audit[2], `"job":"`+res.Msg.JobId+`"`) ||
			!strings.Contains(audit[2], `"tasks":3`) {
			t.Errorf("audit lines do not say what was dispatched to whom:\n%s", strings.Join(audit, "\n"))
		}
	})
}
