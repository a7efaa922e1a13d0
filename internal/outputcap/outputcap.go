// Package outputcap cuts task output to a limit, keeping its head and its tail
// with a marker line between them that says how much was cut. The agent cuts
// what its commands print and the server cuts what agents report with the same
// functions, so an output cut twice reads the same.
package outputcap

import "fmt"

// Default is the output kept per attempt when nothing says otherwise: 1 MiB,
// the server's default --max-output, and what the agent cuts a handler's
// output to before it reports it, so the server need not cut it again.
const Default = 1 << 20

// Split says how to cut an output of size bytes to at most limit bytes: keep
// head bytes from the start and tail bytes from the end, with marker between
// them. A limit too small for the marker keeps the first limit bytes, unmarked.
func Split(size int64, limit int) (head, tail int, marker string) {
	keep := limit
	for range 2 { // the marker's length depends on the number it shows
		marker = Marker(size - int64(keep))
		keep = limit - len(marker)
	}
	if keep < 0 {
		return limit, 0, ""
	}
	return keep / 2, keep - keep/2, marker
}

// Marker is the line that stands for n bytes cut out of an output.
func Marker(n int64) string { return fmt.Sprintf("\n... [forge: %d bytes cut] ...\n", n) }

// Cut cuts out to at most limit bytes as Split says. It reports whether it cut,
// and the size before the cut; an output within the limit is returned as is.
func Cut(out []byte, limit int) (cut []byte, truncated bool, size int64) {
	size = int64(len(out))
	if len(out) <= limit {
		return out, false, size
	}
	head, tail, marker := Split(size, limit)
	cut = make([]byte, 0, head+len(marker)+tail)
	cut = append(cut, out[:head]...)
	cut = append(cut, marker...)
	cut = append(cut, out[len(out)-tail:]...)
	return cut, true, size
}
