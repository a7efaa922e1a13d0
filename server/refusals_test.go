package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// TestRefusalsSayWhy: every refusal at the HTTP level carries a body that says
// what was wrong, so `curl -sS` shows it; Connect's own errors are untouched.
func TestRefusalsSayWhy(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b, Server: server.Config{Limits: server.Limits{MaxBodyBytes: 2048}}})
		const list = "/forge.v1.ControlService/ListAgents"
		cases := []struct {
			name, method, path, token, ctype, body string
			status                                 int
			wantIn                                 []string
		}{
			{"no Content-Type", "POST", list, adminToken, "", "{}", 415,
				[]string{"415 Unsupported Media Type: the request has no Content-Type", "-H 'Content-Type: application/json'"}},
			{"curl -d's form type", "POST", list, adminToken, "application/x-www-form-urlencoded", "{}", 415,
				[]string{`Content-Type "application/x-www-form-urlencoded" is not one this endpoint takes`, "application/json"}},
			{"no Content-Type and no token", "POST", list, "", "", "{}", 415,
				[]string{"the request has no Content-Type"}},
			{"GET", "GET", list, adminToken, "", "", 405,
				[]string{`method "GET" is not allowed here (Allow: POST)`}},
			{"GET without a token", "GET", list, "", "", "", 401,
				[]string{"missing token"}},
			{"PUT with JSON", "PUT", list, adminToken, "application/json", "{}", 405,
				[]string{`method "PUT" is not allowed here`}},
			{"unknown path", "POST", "/nope", "", "application/json", "{}", 404,
				[]string{`no endpoint "/nope"`, "/healthz"}},
			{"unknown procedure", "POST", "/forge.v1.ControlService/Nope", adminToken, "application/json", "{}", 404,
				[]string{`no endpoint "/forge.v1.ControlService/Nope"`}},
			{"body too large", "POST", list, adminToken, "application/json", `{"name":"` + strings.Repeat("x", 4096) + `"}`, 429,
				[]string{`"code":"resource_exhausted"`, "2048"}},
			{"reflection over HTTP/1.1", "POST", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "", "application/connect+json", "{}", 505,
				[]string{"needs HTTP/2", "--http2-prior-knowledge"}},
			// Connect's own errors keep their JSON.
			{"Connect's not_found", "POST", "/forge.v1.ControlService/GetTask", adminToken, "application/json", `{"taskId":"t00000000000aaaa-a000000000000000"}`, 404,
				[]string{`"code":"not_found"`}},
			{"Connect's unauthenticated", "POST", list, "", "application/json", "{}", 401,
				[]string{`"code":"unauthenticated"`, "missing token"}},
		}
		for _, c := range cases {
			req, err := http.NewRequestWithContext(t.Context(), c.method, e.URL+c.path, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			if c.token != "" {
				bearer.Set(req.Header, c.token)
			}
			if c.ctype != "" {
				req.Header.Set("Content-Type", c.ctype)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != c.status {
				t.Errorf("%s: status %d, want %d (body %q)", c.name, res.StatusCode, c.status, body)
				continue
			}
			for _, w := range c.wantIn {
				if !strings.Contains(string(body), w) {
					t.Errorf("%s: body %q does not say %q", c.name, body, w)
				}
			}
			if res.StatusCode != 200 && res.Header.Get("Content-Type") == "" {
				t.Errorf("%s: a body without a Content-Type", c.name)
			}
		}
	})
}
