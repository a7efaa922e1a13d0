package outputcap_test

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/orange-forge/forge/internal/outputcap"
)

func TestCut(t *testing.T) {
	t.Parallel()
	out, cut, size := outputcap.Cut([]byte("short"), 100)
	if string(out) != "short" || cut || size != 5 {
		t.Fatalf("short output changed: %q %v %d", out, cut, size)
	}
	long := bytes.Repeat([]byte("0123456789"), 1000)
	out, cut, size = outputcap.Cut(long, 200)
	if !cut || size != 10000 || len(out) > 200 {
		t.Fatalf("cut=%v size=%d len=%d", cut, size, len(out))
	}
	if !bytes.HasPrefix(out, []byte("0123456789")) || !bytes.HasSuffix(out, []byte("0123456789")) {
		t.Fatalf("head or tail lost: %q", out)
	}
	head, tail, ok := outputcap.Split(10000, 200)
	if want := fmt.Sprintf("\n... [forge: %d bytes cut] ...\n", 10000-head-tail); !ok || !bytes.Contains(out, []byte(want)) {
		t.Fatalf("marker %q not in %q", want, out)
	}
	// A limit smaller than the marker keeps a plain prefix.
	out, cut, _ = outputcap.Cut(long, 5)
	if string(out) != "01234" || !cut {
		t.Fatalf("tiny limit: %q", out)
	}
}

var markerLine = regexp.MustCompile(`^\.\.\. \[forge: (\d+) bytes cut\] \.\.\.$`)

// CheckLines fails unless every line of out is a "line N" line printed in
// order, or one marker line whose count is size minus the bytes kept.
func CheckLines(t testing.TB, out []byte, size int64) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	kept, markers, next := int64(0), 0, -1
	for _, l := range lines {
		if m := markerLine.FindStringSubmatch(l); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			markers++
			if n <= 0 {
				t.Fatalf("marker counts %d", n)
			}
			next = -1
			defer func(n int64) {
				if n != size-kept {
					t.Errorf("marker counts %d bytes, want size %d - kept %d = %d", n, size, kept, size-kept)
				}
			}(n)
			continue
		}
		var i int
		if _, err := fmt.Sscanf(l, "line %d", &i); err != nil || l != fmt.Sprintf("line %d", i) || (next >= 0 && i != next) {
			t.Fatalf("line %q is not one the command printed (next %d)", l, next)
		}
		kept += int64(len(l) + 1)
		next = i + 1
	}
	if markers != 1 {
		t.Fatalf("%d markers, want 1", markers)
	}
}

func lines(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.Bytes()
}

// TestCutKeepsWholeLines: a cut never joins two partial lines, and the marker
// counts every byte not kept, whatever the limit.
func TestCutKeepsWholeLines(t *testing.T) {
	t.Parallel()
	out := lines(5000)
	for limit := 100; limit < 400; limit += 7 {
		cut, truncated, size := outputcap.Cut(out, limit)
		if !truncated || len(cut) > limit {
			t.Fatalf("limit %d: truncated=%v len=%d", limit, truncated, len(cut))
		}
		CheckLines(t, cut, size)
	}
}

func TestIsMarker(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		s    string
		want bool
	}{{outputcap.Marker(0), true}, {outputcap.Marker(65571), true}, {"\n... [forge: output of attempt 2] ...\n", false},
		{"... [forge: 5 bytes cut] ...\n", false}, {outputcap.Marker(5) + "x", false}} {
		if got := outputcap.IsMarker([]byte(c.s)); got != c.want {
			t.Errorf("IsMarker(%q) = %v", c.s, got)
		}
	}
}
