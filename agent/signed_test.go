package agent_test

import (
	"bytes"
	"crypto/ed25519"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// tamperingProxy forwards to target and rewrites every task payload in Poll
// answers, as a compromised proxy or load balancer would.
func tamperingProxy(t *testing.T, target string) string {
	u, _ := url.Parse(target)
	p := httputil.NewSingleHostReverseProxy(u)
	p.ModifyResponse = func(res *http.Response) error {
		if !strings.HasSuffix(res.Request.URL.Path, "/Poll") || res.StatusCode != 200 ||
			!strings.HasPrefix(res.Header.Get("Content-Type"), "application/proto") {
			return nil
		}
		b, err := io.ReadAll(res.Body)
		if err != nil {
			return err
		}
		var m forgev1.PollResponse
		if err := proto.Unmarshal(b, &m); err != nil {
			return err
		}
		for _, tk := range m.Tasks {
			tk.Payload = []byte("tampered")
		}
		b, _ = proto.Marshal(&m)
		res.Body = io.NopCloser(bytes.NewReader(b))
		res.ContentLength = int64(len(b))
		res.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	hs := httptest.NewServer(p)
	t.Cleanup(hs.Close)
	return hs.URL
}

func TestSignedTasks(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		_, key, _ := ed25519.GenerateKey(nil)
		e := newEnv(t, backend, server.Config{SigningKeys: []ed25519.PrivateKey{key}})
		echo := map[string]agent.Handler{"echo": agent.EchoHandler()}

		// Straight to the server: signed tasks verify and run.
		good := startAgent(t, agent.Config{Servers: []string{e.URL}, Labels: map[string]string{"sig": "good"}}, echo)
		defer good.stop(t)
		// Through a proxy that alters payloads: the agent refuses to run the task.
		bad := startAgent(t, agent.Config{Servers: []string{tamperingProxy(t, e.URL)}, Labels: map[string]string{"sig": "bad"}}, echo)
		defer bad.stop(t)

		for sel, want := range map[string]forgev1.TaskState{"sig=good": forgev1.TaskState_TASK_STATE_SUCCEEDED, "sig=bad": forgev1.TaskState_TASK_STATE_FAILED} {
			var id string
			for deadline := time.Now().Add(10 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				res, _ := e.Control.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{Selector: sel}))
				if res != nil && len(res.Msg.Agents) == 1 {
					id = res.Msg.Agents[0].Id
				}
			}
			res, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("original"),
				Target: &forgev1.DispatchRequest_AgentId{AgentId: id}, Wait: durationpb.New(10 * time.Second)}))
			if err != nil || len(res.Msg.Tasks) != 1 {
				t.Fatalf("%s: Dispatch = %v, %v", sel, res, err)
			}
			task := res.Msg.Tasks[0]
			if task.State != want {
				t.Fatalf("%s: task %s (%s), want %s", sel, task.State, task.Error, want)
			}
			if want == forgev1.TaskState_TASK_STATE_FAILED && !strings.Contains(task.Error, "signature") {
				t.Fatalf("%s: refused task's error %q does not name the signature", sel, task.Error)
			}
			if want == forgev1.TaskState_TASK_STATE_SUCCEEDED && string(task.Output) != "original" {
				t.Fatalf("%s: output %q", sel, task.Output)
			}
		}
	})
}
