package server_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/forgetest"
)

// gzipBomb returns a gzip body of members that each inflate to 1 MiB of
// spaces: n MiB once inflated, about a thousandth of that on the wire.
func gzipBomb(t *testing.T, n int) []byte {
	t.Helper()
	var one bytes.Buffer
	w, _ := gzip.NewWriterLevel(&one, gzip.BestCompression)
	w.Write(bytes.Repeat([]byte(" "), 1<<20))
	w.Close()
	return bytes.Repeat(one.Bytes(), n)
}

// postGzip posts body, marked gzip-compressed, as a unary Connect JSON call and
// returns the HTTP status and the Connect error's code and message, if any.
func postGzip(t *testing.T, url, token string, body []byte) (status int, code, msg string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", "gzip")
	if token != "" {
		bearer.Set(req.Header, token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var e struct{ Code, Message string }
	json.Unmarshal(b, &e)
	return res.StatusCode, e.Code, e.Message
}

// TestAttackGzipBomb sends bodies of a few MiB that inflate to GiBs, with an
// agent's token and to the Ping that needs none: each is refused as too big
// (resource_exhausted) once it has inflated past the read limit — not after
// inflating all of it, which took a core for seconds per call — and a
// compressed call within the limits still works.
func TestAttackGzipBomb(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		_, tok := e.Register("bombed", nil)
		bomb := gzipBomb(t, 3900) // 3.9 GiB inflated, within the 4 MiB body limit
		if len(bomb) > 4<<20 {
			t.Fatalf("the bomb is %d bytes, over the body limit", len(bomb))
		}
		for _, c := range []struct {
			path, token string
			body        []byte
		}{
			{"/forge.v1.AgentService/Heartbeat", tok, bomb},
			{"/forge.v1.ControlService/ListAgents", adminToken, bomb},
			{"/forge.v1.PingService/Ping", "", gzipBomb(t, 1)[:1000]}, // the first KiB of one member: 1 MiB, to a 1 KiB limit
		} {
			_, code, msg := postGzip(t, e.URL+c.path, c.token, c.body)
			if code != "resource_exhausted" || !strings.Contains(msg, "inflates to more than") {
				t.Errorf("%s: a gzip bomb got %s %q; want resource_exhausted, stopped at the limit", c.path, code, msg)
			}
		}
		var small bytes.Buffer
		w := gzip.NewWriter(&small)
		w.Write([]byte(`{"running":[]}`))
		w.Close()
		if status, code, msg := postGzip(t, e.URL+"/forge.v1.AgentService/Heartbeat", tok, small.Bytes()); status != 200 {
			t.Errorf("a small compressed Heartbeat: %d %s %s", status, code, msg)
		}
	})
}
