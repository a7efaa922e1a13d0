package main_test

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// TestServerDebugListen: --debug-listen serves the process's profiles and
// runtime metrics on a loopback address of its own, never beside the API, and
// is refused off loopback.
func TestServerDebugListen(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{":6060", "0.0.0.0:6060", "10.0.0.1:6060"} {
		out, code := runForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0", "--debug-listen", addr)
		if code != 1 || !strings.Contains(out, "--debug-listen") || !strings.Contains(out, "loopback") {
			t.Errorf("--debug-listen %s: exit %d, output:\n%s", addr, code, out)
		}
	}

	p := startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0", "--debug-listen", "127.0.0.1:0")
	api := p.waitURL(t)
	m := regexp.MustCompile(`debug \(profiles, runtime metrics\): (http://127\.0\.0\.1:\d+)/debug/pprof/`).FindStringSubmatch(p.output())
	if m == nil {
		t.Fatalf("the server does not say where it serves its profiles:\n%s", p.output())
	}
	debug := m[1]
	get := func(url string) (int, string) {
		t.Helper()
		res, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res.StatusCode, string(b)
	}
	if code, body := get(debug + "/debug/runtime-metrics?gc=1"); code != 200 ||
		!regexp.MustCompile(`(?m)^/memory/classes/heap/stacks:bytes [1-9]\d*$`).MatchString(body) ||
		!regexp.MustCompile(`(?m)^/sched/goroutines:goroutines [1-9]\d*$`).MatchString(body) ||
		!regexp.MustCompile(`(?m)^/sched/latencies:seconds count=\d+ mean=`).MatchString(body) {
		t.Errorf("/debug/runtime-metrics: %d\n%s", code, body)
	}
	if code, body := get(debug + "/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile: total") {
		t.Errorf("/debug/pprof/goroutine: %d\n%.300s", code, body)
	}
	if code, body := get(debug + "/debug/pprof/heap"); code != 200 || len(body) == 0 {
		t.Errorf("/debug/pprof/heap: %d, %d bytes", code, len(body))
	}
	// The API's own address serves none of it.
	for _, path := range []string{"/debug/pprof/", "/debug/runtime-metrics"} {
		if code, _ := get(api + path); code == 200 {
			t.Errorf("the API address serves %s", path)
		}
	}
}
