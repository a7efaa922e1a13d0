package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/orange-forge/forge/store"
)

// A Sink receives the history of finished tasks: one JSON line per task, the
// API's TaskInfo as protojson writes it (lowerCamel names, payload, output
// and stderr base64, times RFC 3339), so every task's job, agent, times,
// attempts, exit code, output and state changes outlive its retention.
type Sink interface {
	// Write stores lines (each without its newline) and returns once they are
	// where they go, or fails; a batch that fails is written again.
	Write(ctx context.Context, lines [][]byte) error
}

// NewSink returns the sink dest names: "-" for stdout (w), an http:// or
// https:// URL to POST each batch to (Content-Type application/x-ndjson, any
// 2xx answer accepts it), anything else a file that lines are appended to
// (created if missing, synced after each batch). A URL without a host, or of
// another scheme, is refused.
func NewSink(dest string, stdout io.Writer) (Sink, error) {
	switch {
	case dest == "":
		return nil, errors.New("no export destination")
	case dest == "-":
		return &writerSink{w: stdout}, nil
	case strings.HasPrefix(dest, "http://") || strings.HasPrefix(dest, "https://"):
		u, err := url.Parse(dest)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("%q is not a URL to POST to: it names no host", dest)
		}
		return &httpSink{url: dest, client: &http.Client{}}, nil
	case strings.Contains(dest, "://"):
		return nil, fmt.Errorf("%q: only http:// and https:// URLs, a file or - (stdout) can take the export", dest)
	}
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return &writerSink{w: f, sync: f.Sync}, nil
}

type writerSink struct {
	mu   sync.Mutex
	w    io.Writer
	sync func() error
}

// Close closes the file of a file sink.
func (s *writerSink) Close() error {
	if c, ok := s.w.(io.Closer); ok && s.sync != nil {
		return c.Close()
	}
	return nil
}

func (s *writerSink) Write(_ context.Context, lines [][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.w.Write(joinLines(lines)); err != nil {
		return err
	}
	if s.sync != nil {
		return s.sync()
	}
	return nil
}

type httpSink struct {
	url    string
	client *http.Client
}

func (s *httpSink) Write(ctx context.Context, lines [][]byte) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(joinLines(lines)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("export sink answered %s", resp.Status)
	}
	return nil
}

func joinLines(lines [][]byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// exportLease is how long a replica's export claim lasts without renewal:
// when the exporting replica dies, another takes over within it.
const exportLease = 10 * time.Second

// export runs while the server does: it claims the store's export, reads a
// batch of finished tasks, writes it to the sink, commits it, and goes on at
// once while batches come full, else every ExportInterval. One replica of
// many exports at a time; the others try the claim every interval. A batch
// the sink refuses is read and written again after a backoff (at least once;
// a replica that dies between writing and committing a batch costs that batch
// again, from the replica that takes over).
func (s *Server) export(ctx context.Context, x store.Exporter) {
	defer s.wg.Done()
	owner := "replica-" + rand.Text()[:10]
	var failing, claimed bool
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		n, held, err := s.exportOnce(ctx, x, owner)
		if err == nil && held != claimed {
			claimed = held
			if held {
				s.log.Info("export: this replica exports now", "owner", owner)
			}
		}
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				s.log.Error("export: failed; retrying", "err", err)
			}
			failing = true
			wait = min(max(2*wait, s.cfg.ExportInterval), time.Minute)
			continue
		case err == nil && failing:
			s.log.Info("export: going again")
			failing = false
		}
		wait = s.cfg.ExportInterval
		if n > 0 {
			wait = 0
		}
	}
}

// exportOnce exports one batch: it returns how many entries the batch had
// (tasks, and one for its position) and whether this replica holds the claim.
func (s *Server) exportOnce(ctx context.Context, x store.Exporter, owner string) (int, bool, error) {
	b, err := x.ExportBatch(ctx, owner, exportLease, s.cfg.ExportBatch)
	if err != nil || !b.Claimed || b.Position == "" {
		return 0, b.Claimed, err
	}
	lines := make([][]byte, 0, len(b.Tasks))
	for _, t := range b.Tasks {
		line, err := protojson.Marshal(taskInfo(t))
		if err != nil {
			return 0, true, err
		}
		lines = append(lines, line)
	}
	if len(lines) > 0 {
		if err := s.cfg.Export.Write(ctx, lines); err != nil {
			return 0, true, err
		}
	}
	if err := x.CommitExport(ctx, owner, b); err != nil {
		return 0, true, err
	}
	s.metrics.exported.Add(float64(len(lines)))
	return len(b.Tasks) + 1, true, nil
}
