package agent

import "fmt"

// capSplit says how to cut an output of size bytes to at most limit bytes: keep
// head bytes from the start and tail bytes from the end, with marker between them.
// The marker says how many bytes were cut, so the result is honest about the gap.
// It matches the server's own cap, so an output cut twice reads the same.
func capSplit(size int64, limit int) (head, tail int, marker string) {
	keep := limit
	for range 2 { // the marker's length depends on the number it shows
		marker = fmt.Sprintf("\n... [forge: %d bytes cut] ...\n", size-int64(keep))
		keep = limit - len(marker)
	}
	if keep < 0 {
		return limit, 0, ""
	}
	return keep / 2, keep - keep/2, marker
}

// capOutput cuts out to at most limit bytes, keeping its head and tail. It
// reports whether it cut, and the size before the cut.
func capOutput(out []byte, limit int) ([]byte, bool, int64) {
	size := int64(len(out))
	if len(out) <= limit {
		return out, false, size
	}
	head, tail, marker := capSplit(size, limit)
	capped := make([]byte, 0, head+len(marker)+tail)
	capped = append(capped, out[:head]...)
	capped = append(capped, marker...)
	capped = append(capped, out[len(out)-tail:]...)
	return capped, true, size
}

// capture is an io.Writer that keeps the first limit bytes and the last limit
// bytes written, so a command can write any amount while memory stays bounded, and
// result gives the same bytes capOutput would give for the whole stream.
type capture struct {
	limit int
	head  []byte // the first bytes, up to limit
	ring  []byte // the last bytes after head filled, up to limit, circular
	pos   int    // next write position in ring once it is full
	total int64
}

func newCapture(limit int) *capture { return &capture{limit: limit} }

// Write never fails.
func (c *capture) Write(p []byte) (int, error) {
	n := len(p)
	c.total += int64(n)
	if room := c.limit - len(c.head); room > 0 {
		k := min(room, len(p))
		c.head = append(c.head, p[:k]...)
		p = p[k:]
	}
	if c.limit == 0 {
		return n, nil
	}
	if len(p) >= c.limit { // only the last limit bytes can survive
		p = p[len(p)-c.limit:]
	}
	for len(p) > 0 {
		if len(c.ring) < c.limit {
			k := min(c.limit-len(c.ring), len(p))
			c.ring = append(c.ring, p[:k]...)
			p = p[k:]
			continue
		}
		k := copy(c.ring[c.pos:], p)
		c.pos = (c.pos + k) % c.limit
		p = p[k:]
	}
	return n, nil
}

// result returns the captured output cut to the limit, whether it was cut, and
// the number of bytes written.
func (c *capture) result() ([]byte, bool, int64) {
	// The ring in write order.
	last := append(append([]byte(nil), c.ring[c.pos:]...), c.ring[:c.pos]...)
	if c.total <= int64(2*c.limit) { // nothing was skipped between head and ring
		return capOutput(append(c.head, last...), c.limit)
	}
	head, tail, marker := capSplit(c.total, c.limit)
	out := make([]byte, 0, head+len(marker)+tail)
	out = append(out, c.head[:head]...)
	out = append(out, marker...)
	out = append(out, last[len(last)-tail:]...)
	return out, true, c.total
}
