package server_test

import (
	"strings"
	"testing"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/store"
)

// TestAttackTerminalText registers agents whose names, hostnames, versions,
// labels and task types carry what would act on an operator's terminal or make
// one name pass for another (issue 13, finding 6) — spaces at either end or
// other than U+0020 included: each is refused with
// invalid_argument naming the field, and nothing is registered.
func TestAttackTerminalText(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		s := forgetest.Start(t, forgetest.Options{Backend: b})
		ctx := t.Context()
		cases := map[string]*forgev1.RegisterRequest{
			"name with a bidi override":         {Name: "invoice\u202efdp.exe"},
			"name with a zero-width space":      {Name: "web\u200b01"},
			"name with a zero-width joiner":     {Name: "web\u200d01"},
			"name with an OSC 52 sequence":      {Name: "x\x1b]52;c;ZXZpbA==\x07"},
			"hostname with a bidi isolate":      {Name: "x", Hostname: "a\u2066b"},
			"hostname with a byte order mark":   {Name: "x", Hostname: "\ufeffhost"},
			"version with a line erase":         {Name: "x", Version: "1.0\r\x1b[2K"},
			"name with an 8-bit CSI":            {Name: "a\u009b2J"},
			"name with a Hangul filler":         {Name: "adm\u3164in"},
			"label value with a zero-width":     {Name: "x", Labels: map[string]string{"role": "web\u200b"}},
			"label key with a bidi override":    {Name: "x", Labels: map[string]string{"r\u202eole": "web"}},
			"task type with a zero-width space": {Name: "x", TaskTypes: []string{"ex\u200bec"}},
			// Spaces that make one name pass for another.
			"name with a trailing space":         {Name: "web-1 "},
			"name with a leading space":          {Name: " web-1"},
			"name with a no-break space":         {Name: "web\u00a01"},
			"name with an en quad":               {Name: "web\u20001"},
			"hostname with an ideographic space": {Name: "x", Hostname: "host\u3000a"},
			"version with a narrow no-break":     {Name: "x", Version: "1.0\u202f"},
			"task type with a trailing space":    {Name: "x", TaskTypes: []string{"exec "}},
		}
		for name, req := range cases {
			_, err := s.Agent(enrollToken).Register(ctx, connect.NewRequest(req))
			if codeOf(err) != "invalid_argument" {
				t.Errorf("%s: Register = %v, want invalid_argument", name, err)
			}
		}
		res, err := s.Control.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Msg.Agents) != 0 {
			t.Fatalf("%d agents registered, want none", len(res.Msg.Agents))
		}
		// The same characters in a dispatched task type.
		_, err = s.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "ec\u202eho", Target: &forgev1.DispatchRequest_All{All: true}}))
		if codeOf(err) != "invalid_argument" {
			t.Errorf("Dispatch of a type with a bidi override = %v, want invalid_argument", err)
		}
		_, err = s.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo ", Target: &forgev1.DispatchRequest_All{All: true}}))
		if codeOf(err) != "invalid_argument" {
			t.Errorf("Dispatch of a type with a trailing space = %v, want invalid_argument", err)
		}
		// Names in other scripts are fine, and so are spaces inside.
		if _, err := s.Agent(enrollToken).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "café-日本 2"})); err != nil {
			t.Errorf("Register of a plain non-ASCII name: %v", err)
		}
	})
}

// TestRegisterAgentNames: a name that --agent, a name pattern or a listing would
// misread — empty, "*" or another glob character, shaped like an agent id — is
// refused with invalid_argument saying what a name may be, at Register and when
// an agent gives its name again with its own token; nothing changes.
func TestRegisterAgentNames(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		s := forgetest.Start(t, forgetest.Options{Backend: b})
		ctx := t.Context()
		id, token := s.Register("web-1", nil)
		for _, bad := range []string{"", "*", "web-*", "web-?", "web-[12]", `web\1`, "a0123456789abcde"} {
			_, err := s.Agent(enrollToken).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: bad}))
			if codeOf(err) != "invalid_argument" || !strings.Contains(err.Error(), store.AgentNameRule) {
				t.Errorf("Register named %q = %v, want invalid_argument saying %q", bad, err, store.AgentNameRule)
			}
			_, err = s.Agent(token).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: bad}))
			if codeOf(err) != "invalid_argument" || !strings.Contains(err.Error(), store.AgentNameRule) {
				t.Errorf("Register again named %q = %v, want invalid_argument saying %q", bad, err, store.AgentNameRule)
			}
		}
		res, err := s.Control.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Msg.Agents) != 1 || res.Msg.Agents[0].Id != id || res.Msg.Agents[0].Name != "web-1" {
			t.Fatalf("agents after refused names = %v, want web-1 (%s) alone", res.Msg.Agents, id)
		}
	})
}
