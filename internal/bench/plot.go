package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
	"time"
)

// WritePlot draws the latency distributions of the report as an SVG: one
// cumulative curve per latency scenario on a logarithmic time axis, so the
// floor, the medians and the tails can be compared at a glance.
func (rep *Report) WritePlot(w io.Writer) error {
	type series struct {
		name string
		d    dist
	}
	var all []series
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	for _, r := range rep.Results {
		if len(r.Samples) < 2 {
			continue
		}
		d := newDist(r.Samples)
		all = append(all, series{r.Scenario + ": " + r.Name, d})
		lo = min(lo, max(d[0], time.Microsecond))
		hi = max(hi, d.max())
	}
	const (
		width, height       = 900, 520
		left, right         = 70, 20
		top, bottom, legend = 40, 50, 150
	)
	pw, ph := float64(width-left-right), float64(height-top-bottom-legend)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">forge bench: latency distributions (store: %s, %d CPUs)</text>`+"\n", left, html.EscapeString(rep.Store), rep.CPUs)
	if len(all) == 0 {
		b.WriteString(`<text x="70" y="80">no latency samples</text></svg>` + "\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	// Decades that cover the samples.
	lx := math.Floor(math.Log10(float64(lo)))
	hx := math.Ceil(math.Log10(float64(hi)))
	if hx <= lx {
		hx = lx + 1
	}
	x := func(d time.Duration) float64 {
		// Samples below the axis (crossreplica counts early answers as 0) sit on its left edge.
		v := max(math.Log10(float64(max(d, time.Nanosecond))), lx)
		return float64(left) + (v-lx)/(hx-lx)*pw
	}
	y := func(q float64) float64 { return float64(top) + (1-q)*ph }
	// Grid and axes.
	for e := lx; e <= hx; e++ {
		for m := 1; m < 10; m++ {
			d := time.Duration(float64(m) * math.Pow(10, e))
			if e == hx && m > 1 {
				break
			}
			xx := x(d)
			stroke, sw := "#eee", 1
			if m == 1 {
				stroke = "#ccc"
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", xx, y(0)+18, fmtDur(d))
			}
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%d"/>`+"\n", xx, y(0), xx, y(1), stroke, sw)
		}
	}
	for _, q := range []float64{0, .25, .5, .75, .9, .99, 1} {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(q), width-right, y(q))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, y(q)+4, q)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">latency (log scale)</text>`+"\n", float64(left)+pw/2, y(0)+36)
	fmt.Fprintf(&b, `<text x="16" y="%.1f" transform="rotate(-90 16 %.1f)" text-anchor="middle">fraction of calls ≤ latency</text>`+"\n", y(.5), y(.5))
	colors := []string{"#000000", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"}
	for i, s := range all {
		c := colors[i%len(colors)]
		var pts []string
		n := len(s.d)
		step := max(1, n/400) // at most ~400 points a curve
		for j := 0; j < n; j += step {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.d[j]), y(float64(j+1)/float64(n))))
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.d[n-1]), y(1)))
		dash := ""
		if i == 0 {
			dash = ` stroke-dasharray="5,3"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", c, dash, strings.Join(pts, " "))
		ly := float64(height-legend+12) + float64(i)*17
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" stroke-width="3"%s/>`+"\n", left, ly-4, left+28, ly-4, c, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f">%s — p50 %s, p99 %s</text>`+"\n", left+36, ly, html.EscapeString(s.name), fmtDur(s.d.p50()), fmtDur(s.d.p99()))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
