package store

import (
	"strings"
	"unicode/utf8"
)

// NamePattern matches agent names. Its text form is a name, or a glob over names:
//
//	web-1        the agents named web-1
//	web-*        * matches any run of characters, including none and '/'
//	web-?        ? matches one character
//	web-[1-3]    [...] matches one character of the set; [!...] or [^...] one not in it
//	web-\*       \ takes the next character as it is
//
// Names are not unique (two machines may share a hostname), so even a plain
// name may match several agents. The empty pattern matches nothing.
type NamePattern struct {
	text string
}

// MaxNamePatternLen bounds the text of a name pattern.
const MaxNamePatternLen = 1024

// ParseNamePattern checks the text form of a name pattern: a set must be closed,
// a range must go up, and \ must escape something.
func ParseNamePattern(s string) (NamePattern, error) {
	switch {
	case strings.TrimSpace(s) == "":
		return NamePattern{}, Errorf(KindInvalid, "agent name: must not be empty")
	case len(s) > MaxNamePatternLen:
		return NamePattern{}, Errorf(KindInvalid, "agent name: longer than %d bytes", MaxNamePatternLen)
	case !utf8.ValidString(s):
		return NamePattern{}, Errorf(KindInvalid, "agent name: not valid UTF-8")
	}
	// Matching a pattern against the empty name walks all of it and meets every
	// syntax error, whatever the pattern would match.
	if _, err := globMatch(s, ""); err != nil {
		return NamePattern{}, err
	}
	return NamePattern{text: s}, nil
}

// String returns the pattern's text as given.
func (p NamePattern) String() string { return p.text }

// Matches tells whether name matches the pattern.
func (p NamePattern) Matches(name string) bool {
	if p.text == "" {
		return false
	}
	ok, _ := globMatch(p.text, name)
	return ok
}

// globMatch matches name against pattern and, whatever the answer, reports a
// malformed pattern. It is path.Match without the special meaning of '/',
// walking the whole pattern so errors past the first mismatch are found too.
func globMatch(pattern, name string) (bool, error) {
	// Classic backtracking over the last '*': linear in practice, and names and
	// patterns are short.
	px, nx := 0, 0
	starP, starN := -1, -1
	var syntax error
	for px < len(pattern) || nx < len(name) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				starP, starN = px, nx
				px++
				continue
			case '?':
				if nx < len(name) {
					_, w := utf8.DecodeRuneInString(name[nx:])
					px++
					nx += w
					continue
				}
			case '[':
				end, ok, err := matchSet(pattern[px:], name[nx:])
				if err != nil {
					return false, err
				}
				if ok {
					_, w := utf8.DecodeRuneInString(name[nx:])
					px += end
					nx += w
					continue
				}
			default:
				lit := c
				step := 1
				if c == '\\' {
					if px+1 >= len(pattern) {
						return false, Errorf(KindInvalid, "agent name: '\\' at the end escapes nothing")
					}
					lit = pattern[px+1]
					step = 2
				}
				if nx < len(name) && name[nx] == lit {
					px += step
					nx++
					continue
				}
			}
		}
		if starP >= 0 && starN < len(name) {
			_, w := utf8.DecodeRuneInString(name[starN:])
			starN += w
			px, nx = starP+1, starN
			continue
		}
		// No match: check the rest of the pattern's syntax before saying so.
		syntax = checkGlob(pattern[px:])
		return false, syntax
	}
	return true, nil
}

// checkGlob reports the first syntax error in a pattern's tail.
func checkGlob(p string) error {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			if i+1 >= len(p) {
				return Errorf(KindInvalid, "agent name: '\\' at the end escapes nothing")
			}
			i++
		case '[':
			end, _, err := matchSet(p[i:], "")
			if err != nil {
				return err
			}
			i += end - 1
		}
	}
	return nil
}

// matchSet matches the first rune of name against the set at the start of p
// ("[...]"), returning the set's length in p. With an empty name it only checks
// the set's syntax.
func matchSet(p, name string) (end int, ok bool, err error) {
	bad := func(why string) (int, bool, error) {
		return 0, false, Errorf(KindInvalid, "agent name: %s", why)
	}
	r, _ := utf8.DecodeRuneInString(name)
	i := 1
	negate := false
	if i < len(p) && (p[i] == '!' || p[i] == '^') {
		negate = true
		i++
	}
	matched := false
	first := true
	for {
		if i >= len(p) {
			return bad("'[' without ']'")
		}
		if p[i] == ']' && !first {
			i++
			break
		}
		first = false
		lo, n, err := setChar(p, i)
		if err != nil {
			return 0, false, err
		}
		i += n
		hi := lo
		if i+1 < len(p) && p[i] == '-' && p[i+1] != ']' {
			hi, n, err = setChar(p, i+1)
			if err != nil {
				return 0, false, err
			}
			i += 1 + n
			if hi < lo {
				return bad("a range in [...] goes down")
			}
		}
		if name != "" && lo <= r && r <= hi {
			matched = true
		}
	}
	return i, name != "" && matched != negate, nil
}

// setChar reads one character of a set at p[i], which may be escaped.
func setChar(p string, i int) (rune, int, error) {
	n := 0
	if p[i] == '\\' {
		if i+1 >= len(p) {
			return 0, 0, Errorf(KindInvalid, "agent name: '[' without ']'")
		}
		i++
		n = 1
	}
	r, w := utf8.DecodeRuneInString(p[i:])
	return r, n + w, nil
}
