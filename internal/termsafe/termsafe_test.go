package termsafe_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/termsafe"
)

// attacks are texts an agent could send to reach an operator's terminal.
var attacks = map[string]string{
	"OSC 52 clipboard write": "ok\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07",
	"window title":           "\x1b]0;all good\x07done",
	"line erase":             "FAILED\r\x1b[2Kall good",
	"8-bit CSI":              "a\u009b2Jb",
	"bidi override":          "invoice\u202efdp.exe",
	"bidi isolate":           "a\u2066b\u2069c",
	"zero-width space":       "web\u200b01",
	"zero-width joiner":      "web\u200d01",
	"byte order mark":        "\ufeffroot",
	"line separator":         "a\u2028b",
	"hangul filler":          "adm\u3164in",
	"invalid UTF-8":          "a\xffb\xc3",
	"DEL":                    "a\x7fb",
	"NUL":                    "a\x00b",
}

// visible tells whether s holds nothing a terminal would act on or hide.
func visible(s string, keepLines bool) bool {
	for _, r := range s {
		if keepLines && (r == '\n' || r == '\t') {
			continue
		}
		if termsafe.Unsafe(r) || r == '\ufffd' {
			return false
		}
	}
	return true
}

func TestLineEscapesAttacks(t *testing.T) {
	t.Parallel()
	for name, s := range attacks {
		got := termsafe.Line(s)
		if !visible(got, false) {
			t.Errorf("%s: Line(%q) = %q still holds an unsafe character", name, s, got)
		}
		if termsafe.Safe(s) {
			t.Errorf("%s: Safe(%q) = true", name, s)
		}
		if got == s {
			t.Errorf("%s: Line(%q) changed nothing", name, s)
		}
	}
	for _, s := range []string{"web-01", "café", "日本語", "a b", "emoji 🚀", "back\\slash"} {
		if got := termsafe.Line(s); got != s {
			t.Errorf("Line(%q) = %q, want it unchanged", s, got)
		}
		if !termsafe.Safe(s) {
			t.Errorf("Safe(%q) = false", s)
		}
	}
	if got := termsafe.Line("a\nb\tc"); got != `a\nb\tc` {
		t.Errorf("Line kept a newline or a tab: %q", got)
	}
}

func TestTextKeepsLines(t *testing.T) {
	t.Parallel()
	in := "line 1\n\tline 2\n\x1b]52;c;ZXZpbA==\x07\r\x1b[2Kdone\n"
	got := string(termsafe.Text([]byte(in)))
	want := "line 1\n\tline 2\n\\x1b]52;c;ZXZpbA==\\x07\\r\\x1b[2Kdone\n"
	if got != want {
		t.Fatalf("Text = %q, want %q", got, want)
	}
	// CR LF ends a line (Windows commands); any other CR still shows.
	for in, want := range map[string]string{"a\r\nb\r\n": "a\nb\n", "50%\r100%\r\n": "50%\\r100%\n", "end\r": "end\\r"} {
		if got := string(termsafe.Text([]byte(in))); got != want {
			t.Errorf("Text(%q) = %q, want %q", in, got, want)
		}
	}
	for name, s := range attacks {
		if got := string(termsafe.Text([]byte(s))); !visible(got, true) {
			t.Errorf("%s: Text(%q) = %q still holds an unsafe character", name, s, got)
		}
	}
}

func TestJSONEscapesWhatEncodersLeave(t *testing.T) {
	t.Parallel()
	for name, s := range attacks {
		info := &forgev1.AgentInfo{Name: s, Labels: map[string]string{"k": s}}
		b, err := protojson.Marshal(info)
		if err != nil {
			// protojson refuses invalid UTF-8 in strings: nothing to print.
			continue
		}
		got := termsafe.JSON(b)
		if !visible(string(got), false) {
			t.Errorf("%s: JSON left an unsafe character in %s", name, got)
		}
		var back forgev1.AgentInfo
		if err := protojson.Unmarshal(got, &back); err != nil || back.Name != s {
			t.Errorf("%s: escaped JSON %s no longer reads back as the same value: %v, %q", name, got, err, back.Name)
		}
		var v any
		if err := json.Unmarshal(got, &v); err != nil {
			t.Errorf("%s: escaped JSON is not JSON: %v", name, err)
		}
	}
}

func TestPrinterRaw(t *testing.T) {
	t.Parallel()
	s := attacks["OSC 52 clipboard write"]
	if got := (termsafe.Printer{Raw: true}).Line(s); got != s {
		t.Errorf("raw Printer changed %q to %q", s, got)
	}
	if got := (termsafe.Printer{}).Line(s); strings.Contains(got, "\x1b") {
		t.Errorf("Printer left ESC in %q", got)
	}
}

func ExamplePrinter() {
	p := termsafe.Printer{} // termsafe.Printer{Raw: true} with --raw
	name := "web\u200b01"
	output := []byte("deployed\n\x1b]52;c;ZXZpbA==\x07")
	fmt.Printf("--- %s\n%s\n", p.Line(name), p.Text(output))
	// Output:
	// --- web\u200b01
	// deployed
	// \x1b]52;c;ZXZpbA==\x07
}
