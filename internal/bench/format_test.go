package bench

import "testing"

func TestFigRange(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		lo, hi float64
		want   string
	}{{34, 34, "34"}, {34.2, 33.9, "34"}, {33, 35, "33–35"}} {
		if got := figRange("%.0f", c.lo, c.hi); got != c.want {
			t.Errorf("figRange(%v, %v) = %q, want %q", c.lo, c.hi, got, c.want)
		}
	}
}
