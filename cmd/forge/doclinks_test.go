package main_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docFiles are the documents a reader of the repository follows.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"../../README.md"}
	for _, pattern := range []string{"../../docs/*.md", "../../examples/*/README.md"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 6 {
		t.Fatalf("found only %q", files)
	}
	return files
}

var (
	mdLinkRE  = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRE = regexp.MustCompile("(?m)^#{1,6} (.+)$")
	fencedRE  = regexp.MustCompile("(?s)```.*?```")
)

// anchor is the fragment GitHub gives a heading: lower case, punctuation other
// than hyphens dropped, spaces as hyphens.
func anchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestDocLinks checks that every relative link of the README, docs/ and the
// examples' READMEs names a file of the repository, and a heading of it when it
// has a fragment, so that no document sends a reader to something that is not
// there.
func TestDocLinks(t *testing.T) {
	t.Parallel()
	for _, file := range docFiles(t) {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		text := fencedRE.ReplaceAllString(string(b), "")
		for _, m := range mdLinkRE.FindAllStringSubmatch(text, -1) {
			link := m[1]
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			path, frag, _ := strings.Cut(link, "#")
			target := file
			if path != "" {
				target = filepath.Join(filepath.Dir(file), path)
			}
			tb, err := os.ReadFile(target)
			if err != nil {
				if fi, serr := os.Stat(target); serr == nil && fi.IsDir() && frag == "" {
					continue
				}
				t.Errorf("%s links %q: %v", file, link, err)
				continue
			}
			if frag == "" {
				continue
			}
			found := false
			for _, h := range headingRE.FindAllStringSubmatch(fencedRE.ReplaceAllString(string(tb), ""), -1) {
				if anchor(h[1]) == frag {
					found = true
				}
			}
			if !found {
				t.Errorf("%s links %q: %s has no heading with that anchor", file, link, target)
			}
		}
	}
}

// outsideRefRE finds references to what a reader of the repository cannot
// see: the project's issue numbers and documents kept outside it.
var outsideRefRE = regexp.MustCompile(`\b(?i:issue #?\d+)|\b(?:DESIGN|STYLE|TEAM)\.md\b`)

// TestDocsStayInRepository checks that the documents cite nothing outside the
// repository: no issue numbers of the project's tracker, no design notes kept
// elsewhere. (An upstream project's issue, such as Go's, names its project:
// "Go issue 22088".)
func TestDocsStayInRepository(t *testing.T) {
	t.Parallel()
	for _, file := range docFiles(t) {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, m := range outsideRefRE.FindAllStringIndex(line, -1) {
				if strings.HasSuffix(strings.TrimSpace(line[:m[0]]), "Go") {
					continue
				}
				t.Errorf("%s:%d cites %q, which is outside the repository", file, i+1, line[m[0]:m[1]])
			}
		}
	}
}
