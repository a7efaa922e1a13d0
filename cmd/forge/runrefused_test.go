//go:build unix

package main_test

import (
	"strings"
	"testing"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

// TestRunRefused: a server that answers and refuses the job — its store full,
// or the operator's token not one it knows — ends forge run with exit 6 and
// the server's reason, at once; never exit 5, which says the server could not
// be reached.
func TestRunRefused(t *testing.T) {
	t.Parallel()
	rd := redistest.Start(t, redistest.WithArgs("--maxmemory-policy", "noeviction"))
	url := startServer(t, "--redis", rd.URL())
	reg, err := agentClient(url, enrollToken).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "full-1", TaskTypes: []string{"exec"}}))
	if err != nil {
		t.Fatal(err)
	}
	e := env{"FORGE_SERVER": url, "FORGE_ADMIN_TOKEN": adminToken}
	args := []string{"run", "--agent", reg.Msg.AgentId, "--give-up-after", "2m", "--", "/bin/true"}

	_, errs, code := runSplit(t, env{"FORGE_SERVER": url, "FORGE_ADMIN_TOKEN": "not-an-operator-0123456789"}, args...)
	if code != 6 || strings.Contains(errs, "cannot reach") {
		t.Errorf("forge run with a token the server does not know: exit %d, want 6:\n%s", code, errs)
	}

	rd.MustDo("CONFIG", "SET", "maxmemory", "1") // below what it holds: every write refused
	_, errs, code = runSplit(t, e, args...)
	if code != 6 || !strings.Contains(errs, "full") || strings.Contains(errs, "cannot reach") {
		t.Errorf("forge run on a full store: exit %d, want 6 with the server's reason:\n%s", code, errs)
	}
}
