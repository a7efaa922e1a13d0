package store_test

import (
	"path"
	"strings"
	"testing"

	"github.com/orange-forge/forge/store"
)

func TestNamePattern(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"web-1", "web-1", true},
		{"web-1", "web-10", false},
		{"web-*", "web-", true},
		{"web-*", "web-abc", true},
		{"web-*", "db-1", false},
		{"*", "anything/at all", true},
		{"*-1", "rack/web-1", true},
		{"w*b*1", "web-1", true},
		{"w*b*1", "web-12", false},
		{"web-?", "web-1", true},
		{"web-?", "web-12", false},
		{"web-?", "web-é", true},
		{"web-[12]", "web-2", true},
		{"web-[12]", "web-3", false},
		{"web-[1-3]", "web-3", true},
		{"web-[!1-3]", "web-3", false},
		{"web-[^1-3]", "web-4", true},
		{"web-[]]", "web-]", true},
		{"web-[a\\]]", "web-]", true},
		{`web-\*`, "web-*", true},
		{`web-\*`, "web-1", false},
		{"a*a*a*a*b", strings.Repeat("a", 60), false},
	} {
		p, err := store.ParseNamePattern(c.pattern)
		if err != nil {
			t.Fatalf("ParseNamePattern(%q): %v", c.pattern, err)
		}
		if got := p.Matches(c.name); got != c.want {
			t.Errorf("%q matches %q = %v, want %v", c.pattern, c.name, got, c.want)
		}
		if p.String() != c.pattern {
			t.Errorf("String() = %q", p.String())
		}
	}
	for _, bad := range []string{"", "  ", "web-[1", "web-[", `web-\`, "web-[3-1]", "a*[", "x\xff", strings.Repeat("a", store.MaxNamePatternLen+1)} {
		if _, err := store.ParseNamePattern(bad); store.KindOf(err) != store.KindInvalid {
			t.Errorf("ParseNamePattern(%q) = %v, want KindInvalid", bad, err)
		}
	}
	if (store.NamePattern{}).Matches("") {
		t.Error("the zero pattern matched")
	}
}

// FuzzNamePattern checks the matcher against path.Match on names without '/',
// where the two agree.
func FuzzNamePattern(f *testing.F) {
	for _, s := range []string{"web-*", "w?b", "[a-c]x", "[!a]*", `\*`, "*a*b*"} {
		f.Add(s, "web-1")
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if strings.ContainsAny(pattern+name, "/^]") || strings.Contains(pattern, "[!]") {
			return // path.Match differs on '/', '[^', a leading ']' in a set
		}
		p, err := store.ParseNamePattern(pattern)
		want, perr := path.Match(pattern, name)
		if err != nil || perr != nil {
			return
		}
		if got := p.Matches(name); got != want {
			t.Fatalf("%q matches %q = %v; path.Match says %v", pattern, name, got, want)
		}
	})
}
