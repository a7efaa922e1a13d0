// Package outputcap cuts task output to a limit, keeping its head and its tail
// with a marker line between them that says how much was cut. The agent cuts
// what its commands print and the server cuts what agents report with the same
// functions, so an output cut twice reads the same.
//
// A cut never joins two partial lines: the head is kept up to its last newline
// and the tail from after its first one (when they have one), the bytes between
// count as cut, and the marker is a line of its own. So every line of a cut
// output is a line the command printed, or the marker.
package outputcap

import (
	"bytes"
	"fmt"
	"strconv"
)

// Default is the output kept per attempt when nothing says otherwise: 1 MiB,
// the server's default --max-output, and what the agent cuts a handler's
// output to before it reports it, so the server need not cut it again.
const Default = 1 << 20

// Split says how to cut an output of size bytes to at most limit bytes: keep at
// most head bytes from the start and tail bytes from the end, leaving room for
// the marker Join puts between them. A limit too small for the marker keeps the
// first limit bytes, unmarked (tail 0, ok false).
func Split(size int64, limit int) (head, tail int, ok bool) {
	keep := limit - markerRoom(size)
	if keep < 0 {
		return limit, 0, false
	}
	return keep / 2, keep - keep/2, true
}

// markerRoom is the longest marker Join writes for an output of size bytes.
func markerRoom(size int64) int { return len(Marker(size)) }

// markerFmt is Marker's text.
const markerFmt = "\n... [forge: %d bytes cut] ...\n"

// Marker is the note that stands for n bytes cut out of an output, as a line of
// its own whatever comes before it.
func Marker(n int64) string { return fmt.Sprintf(markerFmt, n) }

// IsMarker tells whether b is a Marker.
func IsMarker(b []byte) bool {
	var n int64
	_, err := fmt.Sscanf(string(b), markerFmt, &n)
	return err == nil && Marker(n) == string(b)
}

// Join appends to dst head, a marker line and tail, where cut bytes were
// dropped between head and tail. It trims head back to its last newline and
// tail forward past its first one, counting what it trims as cut, so the
// marker sits between whole lines. A head without a newline, or a tail whose
// only newline ends it (one long line), is kept whole: the marker is still a
// line of its own, and a partial line beats losing the output's end. The marker starts with a newline only when the head does not end with
// one.
func Join(dst, head, tail []byte, cut int64) []byte {
	if i := bytes.LastIndexByte(head, '\n'); i >= 0 {
		cut += int64(len(head) - i - 1)
		head = head[:i+1]
	}
	if i := bytes.IndexByte(tail, '\n'); i >= 0 && i+1 < len(tail) {
		cut += int64(i + 1)
		tail = tail[i+1:]
	}
	dst = append(dst, head...)
	dst = AppendMarker(dst, cut, len(head) == 0 || head[len(head)-1] == '\n')
	return append(dst, tail...)
}

// AppendMarker appends the marker line for cut bytes to dst, after a newline
// unless lineStart says what came before ended a line.
func AppendMarker(dst []byte, cut int64, lineStart bool) []byte {
	if !lineStart {
		dst = append(dst, '\n')
	}
	dst = append(dst, "... [forge: "...)
	dst = strconv.AppendInt(dst, cut, 10)
	return append(dst, " bytes cut] ...\n"...)
}

// Cut cuts out to at most limit bytes as Split and Join say. It reports whether
// it cut, and the size before the cut; an output within the limit is returned
// as is.
func Cut(out []byte, limit int) (cut []byte, truncated bool, size int64) {
	size = int64(len(out))
	if len(out) <= limit {
		return out, false, size
	}
	head, tail, ok := Split(size, limit)
	if !ok {
		return out[:head], true, size
	}
	dropped := size - int64(head+tail)
	return Join(make([]byte, 0, limit), out[:head], out[len(out)-tail:], dropped), true, size
}
