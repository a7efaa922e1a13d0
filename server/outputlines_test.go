package server_test

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
)

var cutLine = regexp.MustCompile(`^\.\.\. \[forge: (\d+) bytes cut\] \.\.\.$`)

// numbered returns n lines "<prefix> <i>", as seq would print them.
func numbered(prefix string, n int) []byte {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, "%s %d\n", prefix, i)
	}
	return b.Bytes()
}

// wholeLines fails unless every line of out is a line numbered printed, in
// order, or a single cut marker; it returns the bytes of printed lines kept
// and the marker's count.
func wholeLines(t *testing.T, out []byte, prefix string) (kept, cut int64) {
	t.Helper()
	if !bytes.HasSuffix(out, []byte("\n")) {
		t.Fatalf("%s: output ends mid-line: %q", prefix, out[max(len(out)-40, 0):])
	}
	next, markers := 0, 0
	for _, l := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if m := cutLine.FindStringSubmatch(l); m != nil {
			cut, _ = strconv.ParseInt(m[1], 10, 64)
			markers++
			next = -1
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(l, prefix+" "))
		if err != nil || l != fmt.Sprintf("%s %d", prefix, n) || (next >= 0 && n != next) {
			t.Fatalf("%s: line %q is not one the command printed (after line %d)", prefix, l, next-1)
		}
		kept += int64(len(l) + 1)
		next = n + 1
	}
	if markers != 1 {
		t.Fatalf("%s: %d cut markers, want 1", prefix, markers)
	}
	return kept, cut
}

// A cut keeps whole lines: the kept head ends at a newline, the kept tail
// starts after one, the marker is a line of its own and counts every byte not
// kept; stdout and stderr each keep their own head and tail.
func TestOutputCapKeepsWholeLines(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		ctx := t.Context()
		t.Run("streamed", func(t *testing.T) {
			ag, _, task := leased(t, e)
			out, errs := numbered("line", 300000), numbered("err", 100000)
			var offs [2]int64
			send := func(s forgev1.Stream, i int, data []byte, n int) {
				end := min(offs[i]+int64(n), int64(len(data)))
				if _, err := appendOut(ctx, ag, task, s, offs[i], string(data[offs[i]:end])); err != nil {
					t.Fatal(err)
				}
				offs[i] = end
			}
			for offs[0] < int64(len(out)) || offs[1] < int64(len(errs)) {
				send(stdout, 0, out, 65521) // chunks that end mid-line
				send(stderr, 1, errs, 30011)
			}
			if _, err := ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: task.Id, Attempt: task.Attempt,
				Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED})); err != nil {
				t.Fatal(err)
			}
			info := e.Task(task.Id)
			keptOut, cutOut := wholeLines(t, info.Output, "line")
			keptErr, cutErr := wholeLines(t, info.Stderr, "err")
			if want := int64(len(out) + len(errs)); !info.OutputTruncated || info.OutputSize != want {
				t.Fatalf("truncated %v, size %d, want %d", info.OutputTruncated, info.OutputSize, want)
			}
			if cutOut != int64(len(out))-keptOut || cutErr != int64(len(errs))-keptErr {
				t.Fatalf("markers count %d and %d; cut were %d and %d", cutOut, cutErr, int64(len(out))-keptOut, int64(len(errs))-keptErr)
			}
		})
		t.Run("reported", func(t *testing.T) {
			ag, _, task := leased(t, e)
			out := numbered("line", 250000)
			if _, err := ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: task.Id, Attempt: task.Attempt,
				Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED, Output: out})); err != nil {
				t.Fatal(err)
			}
			info := e.Task(task.Id)
			kept, cut := wholeLines(t, info.Output, "line")
			if !info.OutputTruncated || info.OutputSize != int64(len(out)) || cut != info.OutputSize-kept {
				t.Fatalf("truncated %v, size %d, marker %d, cut %d", info.OutputTruncated, info.OutputSize, cut, info.OutputSize-kept)
			}
		})
	})
}
