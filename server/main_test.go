package server_test

import (
	"testing"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/forgetest"
)

func TestMain(m *testing.M) { forgetest.Main(m) }

const (
	enrollToken = forgetest.EnrollToken
	adminToken  = forgetest.AdminToken
)

// register enrolls an agent and returns its id and a client with its token.
func register(e *forgetest.Server, name string, labels map[string]string) (string, forgev1connect.AgentServiceClient) {
	id, tok := e.Register(name, labels)
	return id, e.Agent(tok)
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
}

// codeOf names a call's outcome as the wire shows it: "ok" or the Connect code.
func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

func i32(v int32) *int32 { return &v }
