package agent

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/orange-forge/forge/internal/outputcap"
)

// TestCaptureMatchesCut checks that streaming capture gives exactly what
// capping the whole output would, for any sizes and write patterns.
func TestCaptureMatchesCut(t *testing.T) {
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
			want, wantCut, wantSize := outputcap.Cut(data, limit)
			if !bytes.Equal(got, want) || gotCut != wantCut || gotSize != wantSize {
				t.Fatalf("limit %d, n %d: got %q %v %d, want %q %v %d", limit, n, got, gotCut, gotSize, want, wantCut, wantSize)
			}
		}
	}
}
