package store

import (
	"fmt"
	"slices"
	"strings"
)

// Selector matches agents by their labels. Its text form is a comma-separated list
// of requirements, all of which must hold:
//
//	env=prod        label env equals prod (also env==prod)
//	env!=prod       label env is missing or differs
//	role in (a,b)   label role is one of a, b
//	role notin (a)  label role is missing or none of the listed
//	gpu             label gpu exists
//	!gpu            label gpu does not exist
//
// The empty selector matches every agent.
type Selector struct {
	reqs []requirement
	text string
}

type selOp int

const (
	opEq selOp = iota
	opNe
	opIn
	opNotIn
	opExists
	opNotExists
)

type requirement struct {
	key    string
	op     selOp
	values []string
}

// MaxSelectorLen bounds the text of a selector.
const MaxSelectorLen = 4096

// ParseSelector parses the text form of a selector. Errors name the position and
// what was expected.
func ParseSelector(s string) (Selector, error) {
	if len(s) > MaxSelectorLen {
		return Selector{}, Errorf(KindInvalid, "selector: longer than %d bytes", MaxSelectorLen)
	}
	p := selParser{s: s}
	var reqs []requirement
	p.skipSpace()
	if p.eof() {
		return Selector{text: ""}, nil
	}
	for {
		r, err := p.requirement()
		if err != nil {
			return Selector{}, err
		}
		reqs = append(reqs, r)
		p.skipSpace()
		if p.eof() {
			break
		}
		if p.s[p.i] != ',' {
			return Selector{}, p.errorf("expected ',' between requirements")
		}
		p.i++
		p.skipSpace()
	}
	return Selector{reqs: reqs, text: s}, nil
}

// MustParseSelector is ParseSelector for selectors known to be valid; it panics otherwise.
func MustParseSelector(s string) Selector {
	sel, err := ParseSelector(s)
	if err != nil {
		panic(err)
	}
	return sel
}

// String returns the selector's text as given.
func (s Selector) String() string { return s.text }

// Empty tells whether the selector matches everything.
func (s Selector) Empty() bool { return len(s.reqs) == 0 }

// Matches tells whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s.reqs {
		v, ok := labels[r.key]
		var m bool
		switch r.op {
		case opEq:
			m = ok && v == r.values[0]
		case opNe:
			m = !ok || v != r.values[0]
		case opIn:
			m = ok && slices.Contains(r.values, v)
		case opNotIn:
			m = !ok || !slices.Contains(r.values, v)
		case opExists:
			m = ok
		case opNotExists:
			m = !ok
		}
		if !m {
			return false
		}
	}
	return true
}

type selParser struct {
	s string
	i int
}

func (p *selParser) eof() bool { return p.i >= len(p.s) }

func (p *selParser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *selParser) errorf(format string, args ...any) error {
	return Errorf(KindInvalid, "selector: at offset %d: %s", p.i, fmt.Sprintf(format, args...))
}

func isLabelChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == '-' || c == '/' || c == ':'
}

// word reads a label key or value.
func (p *selParser) word() string {
	start := p.i
	for p.i < len(p.s) && isLabelChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

func (p *selParser) requirement() (requirement, error) {
	if p.eof() { // "a=b," ends where a requirement should start
		return requirement{}, p.errorf("expected a label key")
	}
	if p.s[p.i] == '!' {
		p.i++
		p.skipSpace()
		k := p.word()
		if k == "" {
			return requirement{}, p.errorf("expected a label key after '!'")
		}
		return requirement{key: k, op: opNotExists}, nil
	}
	k := p.word()
	if k == "" {
		return requirement{}, p.errorf("expected a label key")
	}
	p.skipSpace()
	if p.eof() || p.s[p.i] == ',' {
		return requirement{key: k, op: opExists}, nil
	}
	switch {
	case strings.HasPrefix(p.s[p.i:], "=="):
		p.i += 2
		return p.single(k, opEq)
	case strings.HasPrefix(p.s[p.i:], "!="):
		p.i += 2
		return p.single(k, opNe)
	case p.s[p.i] == '=':
		p.i++
		return p.single(k, opEq)
	}
	op := p.word()
	switch op {
	case "in":
		return p.set(k, opIn)
	case "notin":
		return p.set(k, opNotIn)
	}
	return requirement{}, p.errorf("expected '=', '!=', 'in' or 'notin' after %q", k)
}

func (p *selParser) single(k string, op selOp) (requirement, error) {
	p.skipSpace()
	v := p.word()
	// An empty value is allowed: env= matches a label env set to "".
	return requirement{key: k, op: op, values: []string{v}}, nil
}

func (p *selParser) set(k string, op selOp) (requirement, error) {
	p.skipSpace()
	if p.eof() || p.s[p.i] != '(' {
		return requirement{}, p.errorf("expected '(' to open the value set of %q", k)
	}
	p.i++
	var vals []string
	for {
		p.skipSpace()
		v := p.word()
		if v == "" {
			return requirement{}, p.errorf("expected a value in the set of %q", k)
		}
		vals = append(vals, v)
		p.skipSpace()
		if p.eof() {
			return requirement{}, p.errorf("expected ')' to close the value set of %q", k)
		}
		if p.s[p.i] == ')' {
			p.i++
			return requirement{key: k, op: op, values: vals}, nil
		}
		if p.s[p.i] != ',' {
			return requirement{}, p.errorf("expected ',' or ')' in the value set of %q", k)
		}
		p.i++
	}
}
