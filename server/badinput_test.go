package server_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
)

func TestBadInput(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		_, tokB := e.Register("b", nil)
		idA, tokA := e.Register("a", nil)
		tid := e.DispatchTo(idA)
		agA := e.Agent(tokA)
		p, err := agA.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		if err != nil || len(p.Msg.Tasks) != 1 {
			t.Fatal(p, err)
		}
		const js = "application/json"
		const (
			reportPath   = "/forge.v1.AgentService/ReportResult"
			pollPath     = "/forge.v1.AgentService/Poll"
			registerPath = "/forge.v1.AgentService/Register"
			dispatchPath = "/forge.v1.ControlService/Dispatch"
			getPath      = "/forge.v1.ControlService/GetTask"
		)
		nested := strings.Repeat(`{"a":`, 5000) + "1" + strings.Repeat("}", 5000)
		cases := []struct {
			name, path, token, ctype, body string
			wantCode, wantIn               string
		}{
			{"no token", pollPath, "", js, `{}`, "unauthenticated", "missing token"},
			{"garbage token", pollPath, "nope-nope-nope-nope", js, `{}`, "unauthenticated", "not valid"},
			{"forged agent token", pollPath, "fa_" + idA + "_0123456789abcdef0123456789abcdef", js, `{}`, "unauthenticated", "unknown agent"},
			{"operator token on AgentService", pollPath, adminToken, js, `{}`, "permission_denied", "agent token"},
			{"agent token on ControlService", getPath, tokA, js, `{}`, "permission_denied", "operator token"},
			{"operator token on Register", registerPath, adminToken, js, `{}`, "permission_denied", "enrollment token"},
			// An agent's own token on Register updates that agent (TestRegisterSavedIdentity);
			// it is checked like any other field.
			{"agent token on Register, bad name", registerPath, tokA, js, `{"name":"a\u001b[2J"}`, "invalid_argument", "name"},
			{"enroll token on ControlService", getPath, enrollToken, js, `{}`, "permission_denied", "operator token"},
			{"malformed JSON", dispatchPath, adminToken, js, `{"type": "echo",`, "invalid_argument", "unmarshal"},
			{"wrong JSON type", dispatchPath, adminToken, js, `{"type": 5}`, "invalid_argument", "type"},
			{"deeply nested JSON", dispatchPath, adminToken, js, `{"type":"echo","payload":` + nested + `}`, "invalid_argument", ""},
			{"no target", dispatchPath, adminToken, js, `{"type":"echo"}`, "invalid_argument", "target"},
			{"bad selector", dispatchPath, adminToken, js, `{"type":"echo","selector":"env in (a"}`, "invalid_argument", "selector"},
			{"all false", dispatchPath, adminToken, js, `{"type":"echo","all":false}`, "invalid_argument", "all"},
			{"negative timeout", dispatchPath, adminToken, js, `{"type":"echo","all":true,"timeout":"-1s"}`, "invalid_argument", "timeout"},
			{"unknown agent", dispatchPath, adminToken, js, `{"type":"echo","agentId":"a0000000000000000"}`, "not_found", "agent"},
			{"max_tasks too big", pollPath, tokA, js, `{"maxTasks": 1000}`, "invalid_argument", "max_tasks"},
			{"report without outcome", reportPath, tokA, js, `{"taskId":"` + tid + `","attempt":1}`, "invalid_argument", "outcome"},
			{"report of another agent's task", reportPath, tokB, js, `{"taskId":"` + tid + `","attempt":1,"outcome":"OUTCOME_SUCCEEDED"}`, "not_found", "not found"},
			{"report of a stale attempt", reportPath, tokA, js, `{"taskId":"` + tid + `","attempt":2,"outcome":"OUTCOME_SUCCEEDED"}`, "failed_precondition", "attempt"},
			{"report of a bad task id", reportPath, tokA, js, `{"taskId":"../../etc","attempt":1,"outcome":"OUTCOME_SUCCEEDED"}`, "invalid_argument", "task_id"},
			{"too many labels", registerPath, enrollToken, js, `{"name":"web-1","labels":{` + manyLabels(65) + `}}`, "invalid_argument", "labels"},
			{"label key too long", registerPath, enrollToken, js, `{"name":"web-1","labels":{"` + strings.Repeat("k", 64) + `":"v"}}`, "invalid_argument", "labels"},
			{"name too long", registerPath, enrollToken, js, `{"name":"` + strings.Repeat("n", 256) + `"}`, "invalid_argument", "name"},
			{"payload too big", dispatchPath, adminToken, js, `{"type":"echo","all":true,"payload":"` + strings.Repeat("QUFB", (1<<20)/3+10) + `"}`, "resource_exhausted", "payload"},
			{"body too big", dispatchPath, adminToken, js, `{"type":"echo","all":true,"payload":"` + strings.Repeat("QUFB", (5<<20)/3) + `"}`, "resource_exhausted", ""},
			{"ping with a huge body", "/forge.v1.PingService/Ping", "", js, `{"x":"` + strings.Repeat("a", 2<<20) + `"}`, "resource_exhausted", ""},
			{"bad agent name glob", dispatchPath, adminToken, js, `{"type":"echo","agentName":"web-[1"}`, "invalid_argument", "agent name"},
			{"blank agent name", dispatchPath, adminToken, js, `{"type":"echo","agentName":"  "}`, "invalid_argument", "agent name"},
			{"bad name filter", "/forge.v1.ControlService/ListAgents", adminToken, js, `{"name":"web-\\"}`, "invalid_argument", "agent name"},
			{"blank selector", dispatchPath, adminToken, js, `{"type":"echo","selector":"  "}`, "invalid_argument", "selector"},
			{"control characters in a name", registerPath, enrollToken, js, `{"name":"a\u0000b\u001b[31m"}`, "invalid_argument", "name"},
			{"absurd timeout", dispatchPath, adminToken, js, `{"type":"echo","all":true,"timeout":"315576000000s"}`, "invalid_argument", "timeout"},
			{"body too big, no token", dispatchPath, "", js, `{"payload":"` + strings.Repeat("QUFB", (5<<20)/3) + `"}`, "unauthenticated", ""},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				_, code, msg := e.Post(t.Context(), c.path, c.token, c.ctype, strings.NewReader(c.body))
				if code != c.wantCode || !strings.Contains(msg, c.wantIn) {
					t.Errorf("got %q %q, want %q containing %q", code, msg, c.wantCode, c.wantIn)
				}
				if strings.Contains(msg, tokA) || strings.Contains(msg, tokB) || strings.Contains(msg, adminToken) || strings.Contains(msg, enrollToken) {
					t.Errorf("the error message shows a token: %q", msg)
				}
			})
		}
		// The scheme name is case-insensitive (RFC 9110).
		if _, code, msg := e.Post(t.Context(), pollPath, "", js, strings.NewReader(`{"wait":"0s"}`)); code != "unauthenticated" {
			t.Errorf("no header: %s %s", code, msg)
		}
		req, _ := http.NewRequest("POST", e.URL+pollPath, strings.NewReader(`{"wait":"0s"}`))
		req.Header.Set("Authorization", "bearer "+tokA) // not bearer.Set: the lowercase scheme is the point
		req.Header.Set("Content-Type", js)
		if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 200 {
			t.Errorf("lowercase bearer: %v %v", res, err)
		} else {
			res.Body.Close()
		}
		status, _, _ := e.Post(t.Context(), getPath, adminToken, "text/plain", strings.NewReader("{}"))
		if status != http.StatusUnsupportedMediaType {
			t.Errorf("wrong content type: status %d, want 415", status)
		}
		// Unknown fields are ignored, so newer clients work with older servers.
		if _, code, msg := e.Post(t.Context(), pollPath, tokA, js, strings.NewReader(`{"wait":"0s","fromTheFuture":{"x":1}}`)); code != "" {
			t.Errorf("unknown field: %s %s", code, msg)
		}
		// After all that, the task is still running for a, and a can finish it.
		rep, err := agA.ReportResult(t.Context(), connect.NewRequest(&forgev1.ReportResultRequest{TaskId: tid, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}))
		if err != nil || rep.Msg.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			t.Fatalf("report after the attacks = %v, %v", rep, err)
		}
		// The identical report again is fine; a different outcome is not.
		if _, err := agA.ReportResult(t.Context(), connect.NewRequest(&forgev1.ReportResultRequest{TaskId: tid, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED})); err != nil {
			t.Fatalf("identical report again: %v", err)
		}
		_, err = agA.ReportResult(t.Context(), connect.NewRequest(&forgev1.ReportResultRequest{TaskId: tid, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
		wantCode(t, err, connect.CodeFailedPrecondition)
	})
}

func manyLabels(n int) string {
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"k` + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + string(rune('a'+i/26)) + `":"v"`)
	}
	return b.String()
}

// countingReader records how much of a body the server read.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func TestAuthBeforeBody(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		body := &countingReader{r: io.LimitReader(zeroes{}, 64<<20)}
		req, _ := http.NewRequest("POST", e.URL+"/forge.v1.ControlService/Dispatch", body)
		req.Header.Set("Content-Type", "application/json")
		req.ContentLength = 64 << 20
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
			if res.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", res.StatusCode)
			}
		}
		if n := body.n.Load(); n > 16<<20 {
			t.Fatalf("the server read %d bytes of an unauthenticated body", n)
		}
	})
}

type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}
