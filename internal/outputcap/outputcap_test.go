package outputcap_test

import (
	"bytes"
	"fmt"
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
	head, tail, marker := outputcap.Split(10000, 200)
	if want := fmt.Sprintf("\n... [forge: %d bytes cut] ...\n", 10000-head-tail); marker != want || !bytes.Contains(out, []byte(marker)) {
		t.Fatalf("marker %q, want %q in %q", marker, want, out)
	}
	// A limit smaller than the marker keeps a plain prefix.
	out, cut, _ = outputcap.Cut(long, 5)
	if string(out) != "01234" || !cut {
		t.Fatalf("tiny limit: %q", out)
	}
}
