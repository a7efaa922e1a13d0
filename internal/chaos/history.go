//go:build linux

package chaos

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Event is one line of an agent process's history: a handler started or ended.
// Every process appends to its own JSON-lines file; the checker reads them all.
type Event struct {
	Ev    string `json:"ev"`              // "start" or "end"
	Run   string `json:"run"`             // unique per handler invocation
	Task  string `json:"task"`            // task id
	Job   string `json:"job,omitempty"`   // job id
	Att   int32  `json:"att"`             // attempt
	Agent string `json:"agent,omitempty"` // agent id (the task id names it too)
	Host  string `json:"host"`            // the agent process's label, as the fault log names it
	PID   int    `json:"pid"`             // the process that ran the handler
	At    int64  `json:"at"`              // unix microseconds
	How   string `json:"how,omitempty"`   // end: ok, failed, canceled (the context ended), signal
	Cause string `json:"cause,omitempty"` // end: why the context ended, when it did
}

// Time returns the event's time.
func (e Event) Time() time.Time { return time.UnixMicro(e.At) }

// HistoryWriter appends events to a history file. Each event is one write of one
// line to a file opened O_APPEND, so processes may share a file and a process
// killed mid-run leaves whole lines.
type HistoryWriter struct {
	mu sync.Mutex
	f  *os.File
}

// OpenHistory opens (creating) a history file for appending.
func OpenHistory(path string) (*HistoryWriter, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &HistoryWriter{f: f}, nil
}

// Write appends one event.
func (w *HistoryWriter) Write(e Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err = w.f.Write(b)
	return err
}

// Close closes the file.
func (w *HistoryWriter) Close() error { return w.f.Close() }

// ReadHistories reads every *.jsonl file of dir. A torn last line (a process
// killed while writing it) is skipped.
func ReadHistories(dir string) ([]Event, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		return nil, err
	}
	var out []Event
	for _, name := range files {
		b, err := os.ReadFile(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		lines := strings.Split(string(b), "\n")
		lines = lines[:len(lines)-1] // after the last newline: empty, or torn
		for i, text := range lines {
			if strings.TrimSpace(text) == "" {
				continue
			}
			var e Event
			if err := json.Unmarshal([]byte(text), &e); err != nil {
				return nil, fmt.Errorf("%s:%d: %v", name, i+1, err)
			}
			out = append(out, e)
		}
	}
	return out, nil
}
