package main_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

var updateAPIDoc = flag.Bool("update-api-doc", false, "rewrite the answers shown in docs/api.md with those the server gives (memory store)")

const apiDocPath = "../../docs/api.md"

// docExample is one ```sh block of docs/api.md and the answer block after it.
type docExample struct {
	code   string
	lang   string // the answer's language: "json", "text", or "" when none is shown
	answer string
	// ansStart and ansEnd delimit the answer's text in the file (for -update-api-doc).
	ansStart, ansEnd int
}

var fenceRE = regexp.MustCompile("(?s)```([a-z]*)\n(.*?)```\n")

// apiDocExamples returns docs/api.md's ```sh blocks in order, each with the
// ```json or ```text block that follows it, if any. The reflection block, run by
// TestReflectionDocs, is left out.
func apiDocExamples(t *testing.T, doc string) []docExample {
	t.Helper()
	var out []docExample
	fences := fenceRE.FindAllStringSubmatchIndex(doc, -1)
	for i, f := range fences {
		if doc[f[2]:f[3]] != "sh" || strings.HasSuffix(doc[:f[0]], "<!-- reflection:start -->\n") {
			continue
		}
		ex := docExample{code: doc[f[4]:f[5]]}
		if i+1 < len(fences) {
			n := fences[i+1]
			lang := doc[n[2]:n[3]]
			if strings.TrimSpace(doc[f[1]:n[0]]) == "" && (lang == "json" || lang == "text") {
				ex.lang, ex.answer, ex.ansStart, ex.ansEnd = lang, doc[n[4]:n[5]], n[4], n[5]
			}
		}
		out = append(out, ex)
	}
	return out
}

// apiDocServer is the line docs/api.md starts its server with.
var apiDocServer = regexp.MustCompile(`^FORGE_ENROLL_TOKEN=(\S+) FORGE_ADMIN_TOKEN=(\S+) go run ./cmd/forge server\n$`)

// TestAPIDoc runs every curl example of docs/api.md, as printed and in order, in
// one bash session against the built binary — on the memory store and on Redis —
// and compares each answer with the one shown after it: JSON as JSON (the server
// sends one line; the page shows it indented), text as text, with ids, tokens
// and times, which differ from run to run, replaced by placeholders numbered in
// order of appearance, so an id that recurs must recur in the same places. An
// example that prints must show its answer. The first example, the server, is
// started as the built binary with the tokens it names, on a free port.
//
// go test ./cmd/forge -run TestAPIDoc -update-api-doc rewrites the answers shown.
func TestAPIDoc(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("docs/api.md's examples need %s (apt-get install -y %s)", tool, tool)
		}
	}
	b, err := os.ReadFile(apiDocPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	examples := apiDocExamples(t, doc)
	if len(examples) < 3 {
		t.Fatalf("docs/api.md has %d sh blocks", len(examples))
	}
	m := apiDocServer.FindStringSubmatch(examples[0].code)
	if m == nil || examples[0].lang != "" {
		t.Fatalf("docs/api.md's first sh block is not the server this test starts:\n%s", examples[0].code)
	}
	enroll, admin := m[1], m[2]
	for _, want := range []string{"FORGE=http://127.0.0.1:8080\n", "ENROLL=" + enroll + "\n", "ADMIN=" + admin + "\n"} {
		if !strings.Contains(examples[1].code, want) {
			t.Fatalf("docs/api.md's second sh block does not set %q:\n%s", want, examples[1].code)
		}
	}
	examples = examples[1:]
	checkCalls(t, doc, examples)

	backends := []string{"memory", "redis"}
	if *updateAPIDoc {
		backends = backends[:1]
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			args := []string{"server", "--listen", "127.0.0.1:0"}
			if backend == "redis" {
				args = append(args, "--redis", redistest.Start(t).URL())
			}
			u := startProc(t, env{"FORGE_ENROLL_TOKEN": enroll, "FORGE_ADMIN_TOKEN": admin}, "forge", args...).waitURL(t)
			outs := runAPIDoc(t, examples, u)
			if *updateAPIDoc {
				rewriteAPIDoc(t, doc, examples, outs)
				return
			}
			defer func() {
				if t.Failed() {
					t.Log("when the server's new answers are the right ones, write them into docs/api.md with: " +
						"go test ./cmd/forge -run 'TestAPIDoc$' -update-api-doc")
				}
			}()
			got, want := &idNormalizer{}, &idNormalizer{}
			for i, ex := range examples {
				out := outs[i]
				if ex.lang == "" {
					if strings.TrimSpace(out) != "" {
						t.Errorf("this example prints, but docs/api.md shows no answer after it:\n%s\nit printed:\n%s", ex.code, out)
					}
					continue
				}
				g, w := got.text(out), want.text(ex.answer)
				if ex.lang == "json" {
					gv, gerr := jsonValues(g)
					wv, werr := jsonValues(w)
					if gerr != nil || werr != nil {
						t.Errorf("example:\n%s\nanswered (%v):\n%s\ndocs/api.md shows (%v):\n%s", ex.code, gerr, out, werr, ex.answer)
						continue
					}
					if !reflect.DeepEqual(gv, wv) {
						t.Errorf("example:\n%s\nanswered:\n%s\ndocs/api.md shows:\n%s\n(compared as JSON with ids and times replaced:\n%s\nand\n%s)", ex.code, out, ex.answer, g, w)
					}
					continue
				}
				if strings.TrimSpace(g) != strings.TrimSpace(w) {
					t.Errorf("example:\n%s\nanswered:\n%s\ndocs/api.md shows:\n%s", ex.code, out, ex.answer)
				}
			}
		})
	}
}

// checkCalls fails unless every call of the API has an example in docs/api.md
// whose answer is shown.
func checkCalls(t *testing.T, doc string, examples []docExample) {
	t.Helper()
	var shown strings.Builder
	for _, ex := range examples {
		if ex.lang != "" {
			shown.WriteString(ex.code)
		}
	}
	calls := 0
	for _, proto := range []string{"agent.proto", "control.proto", "ping.proto"} {
		b, err := os.ReadFile("../../proto/forge/v1/" + proto)
		if err != nil {
			t.Fatal(err)
		}
		service := regexp.MustCompile(`(?m)^service (\w+) \{`).FindSubmatch(b)
		for _, rpc := range regexp.MustCompile(`(?m)^\s*rpc (\w+)\(`).FindAllSubmatch(b, -1) {
			calls++
			path := fmt.Sprintf("/forge.v1.%s/%s", service[1], rpc[1])
			if !strings.Contains(shown.String(), "$FORGE"+path+" ") {
				t.Errorf("docs/api.md has no curl example of %s with its answer", path)
			}
			if !strings.Contains(doc, fmt.Sprintf("\n### %s.%s\n", service[1], rpc[1])) {
				t.Errorf("docs/api.md has no section ### %s.%s", service[1], rpc[1])
			}
		}
	}
	if calls < 20 {
		t.Fatalf("found %d calls in proto/forge/v1; the pattern no longer matches the protos", calls)
	}
}

// exampleEnd separates the examples' outputs.
const exampleEnd = "@@ end of a docs/api.md example @@"

// runAPIDoc runs the examples in order in one bash session against the server at
// url and returns what each printed (stdout and stderr).
func runAPIDoc(t *testing.T, examples []docExample, url string) []string {
	t.Helper()
	var script strings.Builder
	for _, ex := range examples {
		script.WriteString(ex.code)
		fmt.Fprintf(&script, "printf '\\n%%s\\n' '%s'\n", exampleEnd)
	}
	cmd := exec.CommandContext(t.Context(), "bash", "-euo", "pipefail", "-c",
		strings.ReplaceAll(script.String(), "http://127.0.0.1:8080", url))
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	parts := strings.Split(string(out), "\n"+exampleEnd+"\n")
	if err != nil || len(parts) != len(examples)+1 {
		n := len(parts) - 1
		failed := "?"
		if n < len(examples) {
			failed = examples[n].code
		}
		t.Fatalf("docs/api.md's examples stopped (%v) after %d of %d; the one that failed:\n%s\nit printed:\n%s",
			err, n, len(examples), failed, parts[len(parts)-1])
	}
	return parts[:len(examples)]
}

// rewriteAPIDoc writes outs into docs/api.md as the examples' answers: JSON
// indented, text as printed.
func rewriteAPIDoc(t *testing.T, doc string, examples []docExample, outs []string) {
	t.Helper()
	var b strings.Builder
	last := 0
	for i, ex := range examples {
		if ex.lang == "" {
			continue
		}
		answer := strings.TrimSpace(outs[i]) + "\n"
		if ex.lang == "json" {
			var buf bytes.Buffer
			dec := json.NewDecoder(strings.NewReader(outs[i]))
			for {
				var raw json.RawMessage
				if err := dec.Decode(&raw); err == io.EOF {
					break
				} else if err != nil {
					t.Fatalf("example:\n%s\nanswered no JSON (%v):\n%s", ex.code, err, outs[i])
				}
				if buf.Len() > 0 {
					buf.WriteString("\n")
				}
				json.Indent(&buf, raw, "", "  ")
				buf.WriteString("\n")
			}
			answer = buf.String()
		}
		b.WriteString(doc[last:ex.ansStart])
		b.WriteString(answer)
		last = ex.ansEnd
	}
	b.WriteString(doc[last:])
	if err := os.WriteFile(apiDocPath, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log("rewrote the answers in docs/api.md")
}

// jsonValues decodes the JSON values of s, one after another.
func jsonValues(s string) ([]any, error) {
	var out []any
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	for {
		var v any
		if err := dec.Decode(&v); errors.Is(err, io.EOF) {
			if out == nil {
				return nil, errors.New("no JSON")
			}
			return out, nil
		} else if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
}

var (
	timeRE = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)
	// wordRE finds the runs of characters ids, tokens' ids and secrets are made
	// of; those of 12 or more characters of the id alphabet are ids.
	wordRE = regexp.MustCompile(`[0-9a-z]+`)
)

// idNormalizer replaces times with <time> and ids (agents, jobs, tasks,
// enrollment tokens) and token secrets with <id1>, <id2>… in order of first
// appearance, the same id with the same placeholder.
type idNormalizer struct{ ids map[string]string }

func (n *idNormalizer) text(s string) string {
	if n.ids == nil {
		n.ids = map[string]string{}
	}
	s = timeRE.ReplaceAllString(s, "<time>")
	return wordRE.ReplaceAllStringFunc(s, func(w string) string {
		if len(w) < 12 || strings.Trim(w, "0123456789abcdefghjkmnpqrstvwxyz") != "" {
			return w
		}
		p, ok := n.ids[w]
		if !ok {
			p = fmt.Sprintf("<id%d>", len(n.ids)+1)
			n.ids[w] = p
		}
		return p
	})
}

// TestAPIDocFields checks that docs/api.md names every field a request of the
// API takes (in its examples or its text), so a field added to a call is
// documented with it.
func TestAPIDocFields(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(apiDocPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	n := 0
	for _, fd := range []protoreflect.FileDescriptor{forgev1.File_forge_v1_agent_proto, forgev1.File_forge_v1_control_proto} {
		for i := 0; i < fd.Services().Len(); i++ {
			methods := fd.Services().Get(i).Methods()
			for j := 0; j < methods.Len(); j++ {
				m := methods.Get(j)
				fields := m.Input().Fields()
				for k := 0; k < fields.Len(); k++ {
					name := fields.Get(k).JSONName()
					n++
					if !strings.Contains(doc, `"`+name+`"`) && !strings.Contains(doc, `\"`+name+`\"`) && !strings.Contains(doc, "`"+name+"`") {
						t.Errorf("docs/api.md does not name %s's field %q", m.FullName(), name)
					}
				}
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d request fields found", n)
	}
}
