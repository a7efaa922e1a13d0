//go:build unix

package main_test

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// TestCLIRetentionJobs: a server started with --retention-jobs 1 (memory and
// Redis; its own reaper running) keeps only the job that finished last; `forge
// job ID` and `forge task ID` of the older one answer that it is gone, and why.
func TestCLIRetentionJobs(t *testing.T) {
	onBackends(t, func(t *testing.T, backend []string) {
		e := fleet(t, append(backend, "--retention-jobs", "1"), "keep", "keep-1")
		ctl := control(e["FORGE_SERVER"])
		id := agentID(t, e, "keep-1")
		var jobs, tasks []string
		for range 2 {
			res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
				Target: &forgev1.DispatchRequest_AgentId{AgentId: id}, Wait: durationpb.New(30 * time.Second)}))
			if err != nil || len(res.Msg.Tasks) != 1 || res.Msg.Tasks[0].State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
				t.Fatalf("Dispatch with wait: %v, %v", res, err)
			}
			jobs, tasks = append(jobs, res.Msg.JobId), append(tasks, res.Msg.TaskIds[0])
		}
		const why = "only the newest 1 finished jobs are kept (--retention-jobs)"
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, errs, code := runSplit(t, e, "job", jobs[0])
			if code != 0 {
				if !strings.Contains(errs, why) {
					t.Fatalf("forge job of the older job: exit %d:\n%s", code, errs)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the reaper never dropped the older job")
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, errs, code := runSplit(t, e, "task", tasks[0]); code == 0 || !strings.Contains(errs, why) {
			t.Fatalf("forge task of the older job's task: exit %d:\n%s", code, errs)
		}
		if out, errs, code := runSplit(t, e, "job", jobs[1]); code != 0 || !strings.Contains(out, jobs[1]) {
			t.Fatalf("forge job of the newest job: exit %d:\n%s%s", code, out, errs)
		}
	})
}
