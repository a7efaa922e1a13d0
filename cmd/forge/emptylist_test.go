package main_test

import (
	"encoding/json"
	"testing"

	forge "github.com/orange-forge/forge/cmd/forge"
	"github.com/orange-forge/forge/internal/redistest"
)

// TestEmptyListings: a listing with nothing to list prints one line saying so,
// naming the filters given, to stdout with exit 0 — not a bare header — and
// --json an empty list; on the memory and the Redis store alike.
func TestEmptyListings(t *testing.T) {
	t.Parallel()
	for name, backend := range map[string][]string{"memory": nil, "redis": {"--redis", redistest.Start(t).URL()}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := env{"FORGE_SERVER": startServer(t, backend...), "FORGE_ADMIN_TOKEN": adminToken}
			run := func(args ...string) (stdout, stderr string) {
				t.Helper()
				var out, errs buffer
				m := &forge.Main{Stdout: &out, Stderr: &errs, Getenv: e.get}
				if code := m.Run(t.Context(), args); code != 0 {
					t.Fatalf("forge %q: exit %d:\n%s%s", args, code, out.String(), errs.String())
				}
				return out.String(), errs.String()
			}
			for _, c := range []struct {
				args []string
				want string
			}{
				{[]string{"agents"}, "no agents\n"},
				{[]string{"agents", "--selector", "env=prod,role in (web,api)", "--status", "online"},
					"no agents matching --selector 'env=prod,role in (web,api)' --status online\n"},
				{[]string{"agents", "--agent", "web-*"}, "no agents matching --agent 'web-*'\n"},
				{[]string{"jobs"}, "no jobs\n"},
				{[]string{"tasks"}, "no tasks\n"},
				{[]string{"tasks", "--state", "failed", "--job", "j0kq5c3vd7wx4m2a"}, "no tasks matching --job j0kq5c3vd7wx4m2a --state failed\n"},
				{[]string{"tokens"}, "no enrollment tokens\n"},
			} {
				if out, errs := run(c.args...); out != c.want || errs != "" {
					t.Errorf("forge %q printed %q (stderr %q); want %q", c.args, out, errs, c.want)
				}
			}
			for cmd, key := range map[string]string{"agents": "agents", "jobs": "jobs", "tasks": "tasks", "tokens": "tokens"} {
				out, _ := run(cmd, "--json")
				var v map[string][]any
				if err := json.Unmarshal([]byte(out), &v); err != nil || v[key] == nil || len(v[key]) != 0 {
					t.Errorf("forge %s --json printed %q (%v); want an empty %q list", cmd, out, err, key)
				}
			}
		})
	}
}
