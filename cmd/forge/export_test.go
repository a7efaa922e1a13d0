package main_test

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

// readSink reads an export file: how many times each task appears, and each
// task's last line.
func readSink(t *testing.T, path string) (map[string]int, map[string]*forgev1.TaskInfo) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		t.Fatal(err)
	}
	defer f.Close()
	seen, last := map[string]int{}, map[string]*forgev1.TaskInfo{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var ti forgev1.TaskInfo
		if err := protojson.Unmarshal(sc.Bytes(), &ti); err != nil {
			continue // a line cut by the kill; the batch comes again
		}
		seen[ti.Id]++
		last[ti.Id] = &ti
	}
	return seen, last
}

// TestExportReplicaKilled: a replica exporting finished tasks to a file is
// killed (SIGKILL) while tasks finish; another replica takes the export over
// from the position kept in Redis. Every finished task ends up in the file,
// with its result, and no more than the killed replica's last batch twice.
func TestExportReplicaKilled(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t)
	sink := filepath.Join(t.TempDir(), "history.jsonl")
	const batch = 10
	exporter := func() *proc {
		return startProc(t, tokensEnv, "forge", "server", "--listen", "127.0.0.1:0", "--redis", redis.URL(),
			"--export", sink, "--export-batch", "10")
	}
	first := exporter()
	first.waitURL(t)
	// The agents and the operator use a replica that does not export.
	work := startProc(t, tokensEnv, "forge", "server", "--listen", "127.0.0.1:0", "--redis", redis.URL())
	url := work.waitURL(t)
	const agents = 4
	for range agents {
		startAgent(t, url)
	}
	ctl := control(url)
	waitAgents(t, ctl, "", agents)

	var mu sync.Mutex
	var jobs []string
	dispatch := func(n int) {
		for range n {
			d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
				Target: &forgev1.DispatchRequest_All{All: true}}))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			jobs = append(jobs, d.Msg.JobId)
			mu.Unlock()
		}
	}
	dispatch(20)
	waitFor(t, "the first replica to export", func() bool { seen, _ := readSink(t, sink); return len(seen) > 0 })
	more := make(chan struct{})
	go func() { defer close(more); dispatch(40) }()
	first.kill(t)
	<-more
	second := exporter()
	second.waitURL(t)

	want := map[string]bool{}
	for _, j := range jobs {
		w, err := ctl.WaitJob(t.Context(), connect.NewRequest(&forgev1.WaitJobRequest{JobId: j, Wait: durationpb.New(time.Minute)}))
		if err != nil {
			t.Fatal(err)
		}
		if !w.Msg.Job.GetDone() {
			t.Fatalf("job %s not done: %v", j, w.Msg)
		}
		for _, ti := range w.Msg.Tasks {
			want[ti.Id] = true
		}
	}
	if len(want) != 60*agents {
		t.Fatalf("%d tasks finished, want %d", len(want), 60*agents)
	}
	var seen map[string]int
	var last map[string]*forgev1.TaskInfo
	waitFor(t, "every finished task in the export", func() bool {
		seen, last = readSink(t, sink)
		for id := range want {
			if seen[id] == 0 {
				return false
			}
		}
		return true
	})
	dups := 0
	for id, n := range seen {
		if !want[id] {
			t.Errorf("exported task %s was not dispatched here", id)
		}
		dups += n - 1
		if ti := last[id]; ti.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || string(ti.Output) != "hi" || ti.AgentId == "" || ti.JobId == "" {
			t.Errorf("exported %s: state %v, output %q, agent %q, job %q", id, ti.State, ti.Output, ti.AgentId, ti.JobId)
		}
	}
	// One batch reads at most batch tasks of each shard the agents are in.
	if dups > batch*agents {
		t.Errorf("%d tasks exported twice; the killed replica's last batch held at most %d", dups, batch*agents)
	}
	t.Logf("%d tasks exported, %d twice (the batch the killed replica wrote and did not commit)", len(seen), dups)
	if !strings.Contains(second.output(), "this replica exports now") {
		t.Errorf("the second replica did not say it exports:\n%s", second.output())
	}
}
