package server_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// fuzzTarget is a live server with a valid token of each kind, shared by every
// input of one fuzzing process.
type fuzzTarget struct {
	backend forgetest.Backend
	e       *forgetest.Server
	client  *http.Client
	agent   string // a registered agent's token
	agentID string
	ping    forgev1connect.PingServiceClient
}

// fuzzAgentID stands for the target's own agent in seeds: each target puts its
// agent's id in its place (the same length, so proto bodies stay well formed).
const fuzzAgentID = "azzzzzzzzzzzzzzz"

// newFuzzTargets starts a server per backend. While fuzzing (-fuzz) only the
// memory one runs, so the fuzzer spends its inputs on the handlers; the seed
// corpora run on every backend.
func newFuzzTargets(f *testing.F) []*fuzzTarget {
	backends := forgetest.Backends()
	if fl := flag.Lookup("test.fuzz"); fl != nil && fl.Value.String() != "" {
		backends = []forgetest.Backend{forgetest.Memory}
	}
	var out []*fuzzTarget
	for _, b := range backends {
		// Short holds, so a fuzzed Poll or wait costs milliseconds, not seconds.
		e := forgetest.Start(f, forgetest.Options{Backend: b, Server: server.Config{PollHold: 20 * time.Millisecond, MaxWait: 20 * time.Millisecond}})
		id, tok := e.Register("fuzz", nil)
		c := &http.Client{Timeout: 10 * time.Second}
		out = append(out, &fuzzTarget{backend: b, e: e, client: c, agent: tok, agentID: id, ping: forgev1connect.NewPingServiceClient(c, e.URL)})
	}
	return out
}

// run calls procedure with body on every target, as a subtest named after its backend.
func run(t *testing.T, targets []*fuzzTarget, procedure, token string, asProto bool, body []byte) {
	for _, ft := range targets {
		t.Run(string(ft.backend), func(t *testing.T) {
			b := bytes.ReplaceAll(body, []byte(fuzzAgentID), []byte(ft.agentID))
			tok := token
			if tok == "" {
				tok = ft.agent
			}
			if procedure == forgev1connect.ControlServiceRevokeAgentProcedure && bytes.Contains(b, []byte(ft.agentID)) {
				return // the agent's own tasks keep the other procedures interesting
			}
			ft.call(t, procedure, tok, asProto, b)
		})
	}
}

// serverFaults are the codes that would mean the server, not the caller, is at fault.
var serverFaults = map[string]bool{"internal": true, "unknown": true, "data_loss": true, "unavailable": true, "unimplemented": true}

var connectCodes = map[string]bool{"canceled": true, "unknown": true, "invalid_argument": true, "deadline_exceeded": true,
	"not_found": true, "already_exists": true, "permission_denied": true, "resource_exhausted": true,
	"failed_precondition": true, "aborted": true, "out_of_range": true, "unimplemented": true, "internal": true,
	"unavailable": true, "data_loss": true, "unauthenticated": true}

// call POSTs body to procedure as a unary Connect call and checks the answer is a
// success or a Connect error the caller caused, and that the server still serves.
func (ft *fuzzTarget) call(t *testing.T, procedure, token string, asProto bool, body []byte) {
	t.Helper()
	ctype := "application/json"
	if asProto {
		ctype = "application/proto"
	}
	req, err := http.NewRequestWithContext(t.Context(), "POST", ft.e.URL+procedure, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ctype)
	bearer.Set(req.Header, token)
	res, err := ft.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s %q: transport error (did the handler panic?): %v", procedure, ctype, body, err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode >= 500 {
		t.Fatalf("%s %s %q: HTTP %d: %s", procedure, ctype, body, res.StatusCode, b)
	}
	if res.StatusCode != http.StatusOK {
		var e struct{ Code, Message string }
		if err := json.Unmarshal(b, &e); err != nil || !connectCodes[e.Code] {
			t.Fatalf("%s %s %q: HTTP %d without a Connect error: %q", procedure, ctype, body, res.StatusCode, b)
		}
		if serverFaults[e.Code] {
			t.Fatalf("%s %s %q: %s: %s", procedure, ctype, body, e.Code, e.Message)
		}
	}
	if _, err := ft.ping.Ping(t.Context(), connect.NewRequest(&forgev1.PingRequest{})); err != nil {
		t.Fatalf("after %s %q the server stopped serving: %v", procedure, body, err)
	}
}

var agentProcedures = []string{
	forgev1connect.AgentServiceRegisterProcedure,
	forgev1connect.AgentServiceHeartbeatProcedure,
	forgev1connect.AgentServicePollProcedure,
	forgev1connect.AgentServiceReportResultProcedure,
	forgev1connect.AgentServiceReturnTasksProcedure,
	forgev1connect.AgentServiceRotateTokenProcedure,
	forgev1connect.AgentServiceAppendOutputProcedure,
}

var controlProcedures = []string{
	forgev1connect.ControlServiceDispatchProcedure,
	forgev1connect.ControlServiceGetJobProcedure,
	forgev1connect.ControlServiceWaitJobProcedure,
	forgev1connect.ControlServiceListJobsProcedure,
	forgev1connect.ControlServiceCancelJobProcedure,
	forgev1connect.ControlServiceGetTaskProcedure,
	forgev1connect.ControlServiceWaitTaskProcedure,
	forgev1connect.ControlServiceListTasksProcedure,
	forgev1connect.ControlServiceCancelTaskProcedure,
	forgev1connect.ControlServiceListAgentsProcedure,
	forgev1connect.ControlServiceGetAgentProcedure,
	forgev1connect.ControlServiceRevokeAgentProcedure,
	forgev1connect.ControlServiceCreateEnrollmentTokenProcedure,
	forgev1connect.ControlServiceListEnrollmentTokensProcedure,
	forgev1connect.ControlServiceRevokeEnrollmentTokenProcedure,
	forgev1connect.ControlServiceReadOutputProcedure,
}

// addSeeds adds each message as JSON and as proto, for procedure i.
func addSeeds(f *testing.F, msgs map[int][]proto.Message) {
	for i, ms := range msgs {
		for _, m := range ms {
			pb, err := proto.Marshal(m)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(i), true, pb)
			if js, err := protojson.Marshal(m); err == nil { // invalid ones have no JSON form
				f.Add(uint8(i), false, js)
			}
		}
	}
}

// FuzzAgentService posts arbitrary bytes, as JSON and as proto, to each
// AgentService procedure with a valid token.
func FuzzAgentService(f *testing.F) {
	targets := newFuzzTargets(f)
	addSeeds(f, map[int][]proto.Message{
		0: {&forgev1.RegisterRequest{Name: "web-1", Labels: map[string]string{"env": "prod"}, Hostname: "h", Version: "1", TaskTypes: []string{"echo"}}},
		1: {&forgev1.HeartbeatRequest{Running: []*forgev1.TaskRef{{TaskId: "t0000000000000000-a000000000000000", Attempt: 1}}, Draining: true}},
		2: {&forgev1.PollRequest{MaxTasks: i32(3), Wait: durationpb.New(0)}, &forgev1.PollRequest{Wait: &durationpb.Duration{Seconds: -1, Nanos: 5}}},
		3: {&forgev1.ReportResultRequest{TaskId: "t0000000000000000-a000000000000000", Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED, Output: []byte("x"), ExitCode: 2, OutputSize: -1}},
		4: {&forgev1.RotateTokenRequest{}},
		5: {&forgev1.AppendOutputRequest{TaskId: "t0000000000000000-" + fuzzAgentID, Attempt: 1, Stream: forgev1.Stream_STREAM_STDERR, Offset: 3, Data: []byte("x")}},
	})
	f.Add(uint8(0), false, []byte(`{"labels":{"":""},"taskTypes":[""]}`))
	f.Add(uint8(2), false, []byte(`{"maxTasks":-2147483648,"wait":"315576000001s"}`))
	f.Add(uint8(3), false, []byte(`{"taskId":"t","attempt":2147483647,"outcome":99}`))
	f.Add(uint8(5), false, []byte(`{"taskId":"t","attempt":1,"stream":7,"offset":"9223372036854775807"}`))
	f.Fuzz(func(t *testing.T, proc uint8, asProto bool, body []byte) {
		p := agentProcedures[int(proc)%len(agentProcedures)]
		tok := "" // the target's agent
		if p == forgev1connect.AgentServiceRegisterProcedure {
			tok = enrollToken
		}
		if p == forgev1connect.AgentServiceRotateTokenProcedure {
			return // rotating would retire the token every later input uses
		}
		run(t, targets, p, tok, asProto, body)
	})
}

// FuzzControlService posts arbitrary bytes, as JSON and as proto, to each
// ControlService procedure with a valid operator token.
func FuzzControlService(f *testing.F) {
	targets := newFuzzTargets(f)
	tid := "t0000000000000000-" + fuzzAgentID
	addSeeds(f, map[int][]proto.Message{
		0: {
			&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"), Target: &forgev1.DispatchRequest_Selector{Selector: "env=prod, role in (a,b)"},
				Timeout: durationpb.New(time.Minute), DeliveryTtl: durationpb.New(time.Hour), MaxAttempts: 2, MaxConcurrency: 1, MaxFailures: 1, IdempotencyKey: "k"},
			&forgev1.DispatchRequest{Type: "echo", Target: &forgev1.DispatchRequest_AgentId{AgentId: fuzzAgentID}, Wait: durationpb.New(time.Second)},
			&forgev1.DispatchRequest{Type: "echo", Target: &forgev1.DispatchRequest_All{All: true}, IncludeOffline: true},
		},
		1:  {&forgev1.GetJobRequest{JobId: "j000000000000000", PageSize: 10, PageToken: "x"}},
		2:  {&forgev1.WaitJobRequest{JobId: "j000000000000000", Wait: durationpb.New(time.Second)}},
		3:  {&forgev1.ListJobsRequest{PageSize: -1}},
		4:  {&forgev1.CancelJobRequest{JobId: "j000000000000000", Reason: "r"}},
		5:  {&forgev1.GetTaskRequest{TaskId: tid}},
		6:  {&forgev1.WaitTaskRequest{TaskId: tid, Wait: durationpb.New(time.Second)}},
		7:  {&forgev1.ListTasksRequest{AgentId: fuzzAgentID, State: forgev1.TaskState_TASK_STATE_RUNNING, PageSize: 5, PageToken: "zz"}},
		8:  {&forgev1.CancelTaskRequest{TaskId: tid, Reason: "r"}},
		9:  {&forgev1.ListAgentsRequest{Selector: "env notin (a)", Status: forgev1.AgentStatus_AGENT_STATUS_ONLINE}},
		10: {&forgev1.GetAgentRequest{AgentId: fuzzAgentID}},
		11: {&forgev1.RevokeAgentRequest{AgentId: "a000000000000000", Reason: "r"}},
		12: {&forgev1.CreateEnrollmentTokenRequest{Description: "d", MaxUses: 2, Ttl: durationpb.New(time.Hour)}},
		13: {&forgev1.ListEnrollmentTokensRequest{}},
		14: {&forgev1.RevokeEnrollmentTokenRequest{Id: "e00000000000"}},
		15: {&forgev1.ReadOutputRequest{TaskId: tid, Offset: 7, Wait: durationpb.New(time.Second)}},
	})
	f.Add(uint8(15), false, []byte(`{"taskId":"t","offset":"-9223372036854775808","wait":"-1s"}`))
	f.Add(uint8(0), false, []byte(`{"type":"echo","selector":"a,"}`))
	f.Add(uint8(0), false, []byte(`{"type":"echo","all":true,"maxAttempts":-1,"timeout":"-315576000000s"}`))
	f.Add(uint8(12), false, []byte(`{"maxUses":-1,"ttl":"1e9s"}`))
	f.Fuzz(func(t *testing.T, proc uint8, asProto bool, body []byte) {
		run(t, targets, controlProcedures[int(proc)%len(controlProcedures)], adminToken, asProto, body)
	})
}
