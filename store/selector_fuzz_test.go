package store

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzParseSelector checks that ParseSelector never panics, fails only with
// KindInvalid, and that a selector it accepts round-trips: its String and its
// canonical rendering both parse back to the same requirements and so the same
// matcher.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{
		"", "env=prod", "env==prod", "env!=prod", "env=", "role in (web,api)", "role notin (a)",
		"gpu", "!gpu", "env=prod, role in (web, api), !gpu, zone", "a,", "a=b, ", "a in (b),",
		"in in (in)", "a in ()", "a in (b", "! ", "k.io/x:y=v-1_2", "a\tin\t(b,\tc)", "a=b=c", "=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			if KindOf(err) != KindInvalid {
				t.Fatalf("ParseSelector(%q) error of kind %v: %v", s, KindOf(err), err)
			}
			return
		}
		again, err := ParseSelector(sel.String())
		if err != nil {
			t.Fatalf("String() %q of a parsed selector does not parse: %v", sel.String(), err)
		}
		if !reflect.DeepEqual(again.reqs, sel.reqs) {
			t.Fatalf("String() round trip of %q: %+v, want %+v", s, again.reqs, sel.reqs)
		}
		canon := canonical(sel)
		c, err := ParseSelector(canon)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canon, s, err)
		}
		if !reflect.DeepEqual(c.reqs, sel.reqs) {
			t.Fatalf("canonical form %q of %q parses to %+v, want %+v", canon, s, c.reqs, sel.reqs)
		}
		for _, labels := range labelSets(sel) {
			if sel.Matches(labels) != c.Matches(labels) || sel.Matches(labels) != again.Matches(labels) {
				t.Fatalf("%q and %q disagree on %v", s, canon, labels)
			}
		}
	})
}

// canonical renders a selector's requirements in one fixed spelling.
func canonical(s Selector) string {
	var parts []string
	for _, r := range s.reqs {
		switch r.op {
		case opEq:
			parts = append(parts, r.key+"="+r.values[0])
		case opNe:
			parts = append(parts, r.key+"!="+r.values[0])
		case opIn:
			parts = append(parts, r.key+" in ("+strings.Join(r.values, ",")+")")
		case opNotIn:
			parts = append(parts, r.key+" notin ("+strings.Join(r.values, ",")+")")
		case opExists:
			parts = append(parts, r.key)
		case opNotExists:
			parts = append(parts, "!"+r.key)
		}
	}
	return strings.Join(parts, ",")
}

// labelSets returns label sets built from the selector's own keys and values, so
// that matching is exercised on both sides of every requirement.
func labelSets(s Selector) []map[string]string {
	sets := []map[string]string{{}}
	all := map[string]string{}
	for _, r := range s.reqs {
		v := "other"
		if len(r.values) > 0 {
			v = r.values[0]
		}
		all[r.key] = v
		sets = append(sets, map[string]string{r.key: v}, map[string]string{r.key: "other"})
	}
	return append(sets, all)
}
