package agent

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

func TestCapOutput(t *testing.T) {
	t.Parallel()
	out, cut, size := capOutput([]byte("short"), 100)
	if string(out) != "short" || cut || size != 5 {
		t.Fatalf("short output changed: %q %v %d", out, cut, size)
	}
	long := bytes.Repeat([]byte("0123456789"), 1000)
	out, cut, size = capOutput(long, 200)
	if !cut || size != 10000 || len(out) > 200 {
		t.Fatalf("cut=%v size=%d len=%d", cut, size, len(out))
	}
	if !bytes.HasPrefix(out, []byte("0123456789")) || !bytes.HasSuffix(out, []byte("0123456789")) {
		t.Fatalf("head or tail lost: %q", out)
	}
	head, tail, marker := capSplit(10000, 200)
	if want := fmt.Sprintf("\n... [forge: %d bytes cut] ...\n", 10000-head-tail); marker != want || !bytes.Contains(out, []byte(marker)) {
		t.Fatalf("marker %q, want %q in %q", marker, want, out)
	}
	// A limit smaller than the marker keeps a plain prefix.
	out, cut, _ = capOutput(long, 5)
	if string(out) != "01234" || !cut {
		t.Fatalf("tiny limit: %q", out)
	}
}

// TestCaptureMatchesCapOutput checks that streaming capture gives exactly what
// capping the whole output would, for any sizes and write patterns.
func TestCaptureMatchesCapOutput(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, limit := range []int{0, 1, 7, 64, 100, 1000} {
		for _, n := range []int{0, 1, limit - 1, limit, limit + 1, 2*limit - 1, 2 * limit, 2*limit + 1, 3*limit + 17, 10 * limit, 5000} {
			if n < 0 {
				continue
			}
			data := make([]byte, n)
			for i := range data {
				data[i] = byte('a' + rng.IntN(26))
			}
			c := newCapture(limit)
			for rest := data; len(rest) > 0; {
				k := min(len(rest), 1+rng.IntN(2*limit+3))
				c.Write(rest[:k])
				rest = rest[k:]
			}
			got, gotCut, gotSize := c.result()
			want, wantCut, wantSize := capOutput(data, limit)
			if !bytes.Equal(got, want) || gotCut != wantCut || gotSize != wantSize {
				t.Fatalf("limit %d, n %d: got %q %v %d, want %q %v %d", limit, n, got, gotCut, gotSize, want, wantCut, wantSize)
			}
		}
	}
}
