// Package termsafe makes text that came from agents or API callers safe to show
// on an operator's terminal. An agent's output, an error it reported, a name it
// registered with: any of them may hold escape sequences (OSC 52 writes the
// clipboard, others set the window title or erase lines), bidi overrides that
// reorder what is shown (U+202E), or invisible characters that make two names
// look alike (U+200B). termsafe shows each such character as a visible escape
// (\x1b, \u202e) and leaves everything else as it is.
//
// Every CLI command prints what came from the API through a Printer, which
// passes text through untouched when the operator asked for raw output (--raw):
//
//	p := termsafe.Printer{Raw: raw}
//	fmt.Fprintf(w, "%s\t%s\n", p.Line(agent.Name), p.Line(agent.Hostname)) // table cells
//	w.Write(p.Text(task.Output))                                           // multi-line output
//	w.Write(p.JSON(b))                                                     // protojson output
//
// The server refuses the same characters (Unsafe) in names and labels, so
// they never reach a terminal that does not escape them.
package termsafe

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Unsafe tells whether r must not reach a terminal as it is: a control
// character (C0, DEL, C1), a format character (Unicode category Cf: bidi
// controls such as U+202E, zero-width characters such as U+200B, U+200D and
// U+FEFF), a line or paragraph separator (U+2028, U+2029), or one of the
// characters that render as nothing although they are letters (the Hangul
// fillers U+115F, U+1160, U+3164, U+FFA0). Newline and tab are control
// characters too: callers that keep them say so (Text).
func Unsafe(r rune) bool {
	switch {
	case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
		return true
	case r == 0x2028 || r == 0x2029:
		return true
	case r == 0x115f || r == 0x1160 || r == 0x3164 || r == 0xffa0:
		return true
	case r == utf8.RuneError:
		return false // a real U+FFFD; invalid bytes are caught before this
	}
	return unicode.Is(unicode.Cf, r)
}

// Safe tells whether s is valid UTF-8 with no Unsafe character, newlines and
// tabs included: what the server accepts in a name.
func Safe(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if Unsafe(r) {
			return false
		}
	}
	return true
}

// Line returns s for a one-line field (a table cell, a name, an error message):
// every Unsafe character, newline and tab included, and every byte that is not
// valid UTF-8 is escaped.
func Line(s string) string { return string(escape([]byte(s), false)) }

// Text returns b for a block of output: as Line, but newlines and tabs are kept,
// and a line ended by CR LF (as Windows commands end them) is shown ended by
// its newline alone. Any other carriage return is escaped, since it lets a line
// overwrite the one shown.
func Text(b []byte) []byte { return escape(b, true) }

// escape returns b with unsafe characters escaped; it returns b itself when
// nothing needs escaping.
func escape(b []byte, keepLines bool) []byte {
	clean := true
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if (r == utf8.RuneError && n == 1) || (Unsafe(r) && !(keepLines && (r == '\n' || r == '\t'))) ||
			(keepLines && r == '\r') {
			clean = false
			break
		}
		i += n
	}
	if clean {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			out = fmt.Appendf(out, `\x%02x`, b[i])
		case keepLines && (r == '\n' || r == '\t'):
			out = append(out, byte(r))
		case keepLines && r == '\r' && i+1 < len(b) && b[i+1] == '\n':
			// CR LF: the line's end, shown as LF.
		case r == '\n':
			out = append(out, `\n`...)
		case r == '\t':
			out = append(out, `\t`...)
		case r == '\r':
			out = append(out, `\r`...)
		case r < 0x80 && Unsafe(r):
			out = fmt.Appendf(out, `\x%02x`, r)
		case Unsafe(r):
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	return out
}

// JSON returns JSON text b with every Unsafe character inside its strings
// written as a \uXXXX escape. JSON encoders escape C0 control characters
// already, but pass bidi overrides and zero-width characters through raw; the
// result is the same JSON value, safe to print. b must be valid JSON as an
// encoder wrote it (protojson, encoding/json); DEL is escaped too, which
// protojson leaves raw.
func JSON(b []byte) []byte {
	clean := true
	for _, r := range string(b) {
		if r >= 0x7f && Unsafe(r) || r == utf8.RuneError {
			clean = false
			break
		}
	}
	if clean {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			out = append(out, `\ufffd`...) // encoders never write invalid UTF-8; be safe anyway
		case r >= 0x7f && Unsafe(r):
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	return out
}

// Printer escapes what it is given unless Raw is set, when it passes it
// through: every CLI command prints text that came from the API through one,
// made from its --raw flag.
type Printer struct {
	// Raw passes text through unchanged (the operator asked for it with --raw).
	Raw bool
}

// Line is Line, unless p.Raw.
func (p Printer) Line(s string) string {
	if p.Raw {
		return s
	}
	return Line(s)
}

// Text is Text, unless p.Raw.
func (p Printer) Text(b []byte) []byte {
	if p.Raw {
		return b
	}
	return Text(b)
}

// JSON is JSON, unless p.Raw.
func (p Printer) JSON(b []byte) []byte {
	if p.Raw {
		return b
	}
	return JSON(b)
}
