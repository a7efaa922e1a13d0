package client

import (
	"bytes"
	"testing"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/store"
)

// A cut note between a stream's partial lines does not splice them on stdout:
// the head's partial line is ended, the tail resumes after its first newline.
func TestFollowKeepsLinesAcrossCut(t *testing.T) {
	t.Parallel()
	var out, errs bytes.Buffer
	var l wholeLines
	for _, c := range []*forgev1.OutputChunk{
		{Stream: forgev1.Stream_STREAM_STDOUT, Data: []byte("88\n89")},
		{Data: []byte(store.NoteCut(100))},
		{Stream: forgev1.Stream_STREAM_STDOUT, Data: []byte("2\n900\n901\n")},
		{Stream: forgev1.Stream_STREAM_STDOUT, Data: []byte("902\n")},
		{Data: []byte(store.NoteCut(5))},
		{Stream: forgev1.Stream_STREAM_STDOUT, Data: []byte("one long line's end\n")},
	} {
		if err := l.write(c, &out, &errs); err != nil {
			t.Fatal(err)
		}
	}
	if want := "88\n89\n900\n901\n902\none long line's end\n"; out.String() != want {
		t.Fatalf("stdout %q, want %q", out.String(), want)
	}
	if want := "... [forge: 100 bytes cut] ...\n... [forge: 5 bytes cut] ...\n"; errs.String() != want {
		t.Fatalf("stderr %q, want %q", errs.String(), want)
	}
}
