package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/orange-forge/forge/internal/forgetest"
)

// TestPageServed: the fleet page's files are served without a token (they hold
// no data), each with headers that keep other sites' code out of it; no
// directory is listed. The page itself is driven in a browser by
// server/browsertest.
func TestPageServed(t *testing.T) {
	t.Parallel()
	e := forgetest.Start(t, forgetest.Options{})
	get := func(path string) (*http.Response, string) {
		t.Helper()
		res, err := http.Get(e.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	for path, ctype := range map[string]string{"/": "text/html", "/ui/app.js": "javascript", "/ui/style.css": "text/css"} {
		res, body := get(path)
		if res.StatusCode != http.StatusOK || !strings.Contains(res.Header.Get("Content-Type"), ctype) || body == "" {
			t.Errorf("GET %s: %s %q, %d bytes; want 200 %s", path, res.Status, res.Header.Get("Content-Type"), len(body), ctype)
		}
		csp := res.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: Content-Security-Policy %q lacks %q", path, csp, want)
			}
		}
		if res.Header.Get("X-Content-Type-Options") != "nosniff" || res.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("GET %s: headers %v", path, res.Header)
		}
	}
	if _, body := get("/"); !strings.Contains(body, `src="ui/app.js"`) || strings.Contains(body, "<script>") {
		t.Errorf("the page must load its script from its own file, with no inline script:\n%s", body)
	}
	for _, path := range []string{"/ui/", "/ui/nothing.js", "/index.html"} {
		if res, _ := get(path); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", path, res.Status)
		}
	}
}
