//go:build unix

package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// TestFaultAgentKilledMidOutput: SIGKILL the agent process while its command
// prints; what the server holds is the command's output up to the kill, in
// order and without gaps, missing at most the batch the agent had not sent yet.
func TestFaultAgentKilledMidOutput(t *testing.T) { onBackends(t, faultAgentKilledMidOutput) }

func faultAgentKilledMidOutput(t *testing.T, backend []string) {
	url := startServer(t, backend...)
	ctl := control(url)
	work := t.TempDir()
	ag := startProc(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken, "--label", "fault=liveout",
		"--allow-exec", "/bin/sh")
	a := waitAgents(t, ctl, "fault=liveout", 1)[0]
	// Each line is printed, then recorded with the time it was printed.
	script := `echo $$ > pid; i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo "line $i"; echo "$i $(date +%s%N)" >> printed; sleep 0.05; done`
	payload, _ := json.Marshal(map[string]any{"argv": []string{"/bin/sh", "-c", script}, "dir": work})
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	tid := d.Msg.TaskIds[0]
	t.Cleanup(func() {
		// The killed agent leaves the command's group behind (its next start would end it).
		if b, err := os.ReadFile(filepath.Join(work, "pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(-pid, syscall.SIGKILL)
			}
		}
	})
	read := func(off int64, wait time.Duration) *forgev1.ReadOutputResponse {
		res, err := ctl.ReadOutput(t.Context(), connect.NewRequest(&forgev1.ReadOutputRequest{TaskId: tid, Offset: off, Wait: durationpb.New(wait)}))
		if err != nil {
			t.Fatalf("ReadOutput: %v", err)
		}
		return res.Msg
	}
	var off int64
	var got string
	for strings.Count(got, "\n") < 20 {
		r := read(off, 10*time.Second)
		for _, c := range r.Chunks {
			got += string(c.Data)
		}
		off = r.NextOffset
	}
	// Into the next batch: a few lines printed and not yet sent when the agent dies.
	time.Sleep(150 * time.Millisecond)
	killed := time.Now()
	ag.kill(t)
	time.Sleep(time.Second) // what was in flight at the kill lands, or not

	r := read(0, 0)
	var stored []string
	for _, c := range r.Chunks {
		if c.Stream != forgev1.Stream_STREAM_STDOUT {
			t.Fatalf("a chunk of %s: %q", c.Stream, c.Data)
		}
		stored = append(stored, strings.Split(strings.TrimSuffix(string(c.Data), "\n"), "\n")...)
	}
	for i, l := range stored {
		if l != fmt.Sprintf("line %d", i+1) {
			t.Fatalf("stored line %d is %q: the output has a gap or a repeat", i+1, l)
		}
	}
	b, err := os.ReadFile(filepath.Join(work, "printed"))
	if err != nil {
		t.Fatal(err)
	}
	var lost []string
	var lostAge time.Duration
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var n int
		var ns int64
		if _, err := fmt.Sscanf(l, "%d %d", &n, &ns); err != nil {
			continue
		}
		printed := time.Unix(0, ns)
		if n > len(stored) && printed.Before(killed) {
			lost = append(lost, l)
			lostAge = max(lostAge, killed.Sub(printed))
		}
	}
	t.Logf("%d lines stored; %d printed before the kill were lost, the oldest %v before it", len(stored), len(lost), lostAge)
	// The agent sends a batch 250 ms after its first byte; a loaded machine may
	// take longer to send it, so allow for that, but not for output held back.
	if lostAge > 2*time.Second {
		t.Fatalf("lines printed %v before the kill never reached the server: %q", lostAge, lost)
	}
}
