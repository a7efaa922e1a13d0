package client_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// endless answers every call 200 with a body that never ends, as a broken or
// hostile server might; it stops when the client goes away.
func endless(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/proto")
		chunk := make([]byte, 64<<10)
		for i := range chunk {
			chunk[i] = 0x0a
		}
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestMaxAnswer: an answer larger than WithMaxAnswer fails the call with
// resource_exhausted, at once (it is not retried), however long the server
// would go on sending.
func TestMaxAnswer(t *testing.T) {
	t.Parallel()
	c, err := client.New(endless(t), "admin-test-0123456789", client.WithMaxAnswer(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	var retries int
	c2, _ := client.New(endless(t), "admin-test-0123456789", client.WithMaxAnswer(1<<20),
		client.OnRetry(func(client.Retry) { retries++ }))
	for _, cl := range []*client.Client{c, c2} {
		start := time.Now()
		_, err = cl.Control().ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{}))
		t.Logf("took %v: %v", time.Since(start), err)
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("ListAgents from a server sending without end = %v, want resource_exhausted", err)
		}
	}
	if retries != 0 {
		t.Fatalf("an answer over the limit was retried %d times", retries)
	}
}
