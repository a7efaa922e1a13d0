package agent

import "github.com/orange-forge/forge/internal/outputcap"

// capture is an io.Writer that keeps the first limit bytes and the last limit
// bytes written, so a command can write any amount while memory stays bounded, and
// result gives the same bytes outputcap.Cut would give for the whole stream.
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
		return outputcap.Cut(append(c.head, last...), c.limit)
	}
	head, tail, ok := outputcap.Split(c.total, c.limit)
	if !ok {
		return append([]byte(nil), c.head[:head]...), true, c.total
	}
	dropped := c.total - int64(head+tail)
	return outputcap.Join(make([]byte, 0, c.limit), c.head[:head], last[len(last)-tail:], dropped), true, c.total
}
