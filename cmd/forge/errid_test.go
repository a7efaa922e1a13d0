package main_test

import (
	"strings"
	"testing"

	"github.com/orange-forge/forge/internal/redistest"
)

// TestErrorsNameIDOnce: a command refused about an id the server's message
// names already ("task "t…" not found") does not name it again in front; a
// message that does not name it (a server that cannot be reached) keeps it in
// front. On the memory and the Redis store alike.
func TestErrorsNameIDOnce(t *testing.T) {
	t.Parallel()
	const (
		task  = "t0kq5c3vd7wx4abcd-a0kq5c3vd7wx4m2a"
		job   = "j0kq5c3vd7wx4m2a"
		agent = "a0kq5c3vd7wx4m2a"
		token = "e0kq5c3vd7wx"
	)
	// A server that cannot be reached says nothing of the id: it stays in front.
	out, code := runForge(t, env{"FORGE_SERVER": "http://127.0.0.1:1", "FORGE_ADMIN_TOKEN": adminToken}, "task", "--give-up-after", "1s", task)
	if code == 0 || !strings.Contains(out, "forge task: "+task+": ") || strings.Count(out, task) != 1 {
		t.Errorf("forge task %s of an unreachable server: exit %d; want the id once, in front:\n%s", task, code, out)
	}
	for name, backend := range map[string][]string{"memory": nil, "redis": {"--redis", redistest.Start(t).URL()}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := env{"FORGE_SERVER": startServer(t, backend...), "FORGE_ADMIN_TOKEN": adminToken}
			for _, c := range []struct {
				args []string
				id   string
				want string
			}{
				{[]string{"task", task}, task, "not found"},
				{[]string{"tasks", task}, task, "not found"},
				{[]string{"job", job}, job, "not found"},
				{[]string{"cancel", task}, task, "not found"},
				{[]string{"cancel", "--job", job}, job, "not found"},
				{[]string{"revoke", agent}, agent, "not found"},
				{[]string{"tokens", "revoke", token}, token, "not found"},
			} {
				out, code := runForge(t, e, c.args...)
				if code == 0 || !strings.Contains(out, c.want) || strings.Count(out, c.id) != 1 {
					t.Errorf("forge %s: exit %d; want an error naming %s once, saying %q:\n%s", strings.Join(c.args, " "), code, c.id, c.want, out)
				}
			}
		})
	}
}
