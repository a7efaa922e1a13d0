// Package bench is the load generator behind `forge bench`: it starts forge
// servers in-process (or targets running ones), simulates fleets of agents with
// the real agent package and the generated clients, and measures the scenarios
// of forge's performance targets beside the floor of a bare Connect call.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/orange-forge/forge/store"
)

// Scenarios are the scenario names, in the order they run. All but scale and
// soak run by default; those run only when asked for.
var Scenarios = []string{
	"ping", "roundtrip", "runwait", "crossreplica", "cancel", "throughput",
	"dispatchstart", "fanout", "idle", "storm", "scale", "soak",
}

// onRequest are the scenarios that run only when named.
var onRequest = []string{"scale", "soak"}

// Config configures a run. Zero values get the defaults noted.
type Config struct {
	// Servers, when set, are running servers to measure instead of in-process
	// ones (the first is used; crossreplica uses the first two). AdminToken and
	// EnrollToken must then be theirs.
	Servers     []string
	AdminToken  string
	EnrollToken string
	// RedisURL makes the in-process servers use Redis through OpenRedis.
	RedisURL  string
	OpenRedis func(ctx context.Context, url string, cfg store.Config) (store.Store, error)
	// RedisArgs are the other flags the child server needs to reach RedisURL
	// (--redis-ca and the like).
	RedisArgs []string
	// ServerExe is a forge binary the idle scenario starts as a child process
	// (`forge server`), so the server's own memory and CPU can be read from
	// /proc. Empty: that scenario reports the server's figures as not measured.
	ServerExe string
	// IdleProfile, when set, is a directory where the idle scenario writes its
	// child server's profiles (started with --debug-listen): runtime metrics
	// before and while the polls are held, an inuse heap profile and the
	// goroutines while they are held, and a CPU profile of the poll window.
	IdleProfile string
	// Scenarios to run (names from Scenarios); empty: all. ping always runs.
	Scenarios []string
	// Agents is the size of the idle and storm fleets; 10,000.
	Agents int
	// Quick shrinks every scenario to a smoke test (seconds in all).
	Quick bool
	// ScaleAgents and ScaleReplicas size the scale scenario: 50,000 agents
	// over 5 replicas (400 over 2 with Quick).
	ScaleAgents, ScaleReplicas int
	// SoakDuration is how long the soak's load runs: 5 minutes (5 s with Quick).
	SoakDuration time.Duration
	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
}

// Result is one row of the table.
type Result struct {
	Scenario string `json:"scenario"`
	// Name says what was measured, with its scale.
	Name string `json:"name"`
	// Summary is the measured figure as printed.
	Summary string `json:"summary"`
	// Floor is what the scenario's path cannot avoid, in bare calls (F) and
	// bare Redis script round trips (R) measured in the same run, such as
	// "3F+3R 301µs"; VsFloor is the result against it ("1.62×").
	Floor   string `json:"floor,omitempty"`
	VsFloor string `json:"vs_floor,omitempty"`
	Target  string `json:"target"`
	// Met is nil when the target could not be judged (not measured, skipped,
	// or a --quick run, whose tiny scale judges nothing).
	Met *bool `json:"met,omitempty"`
	// Status is what the table prints: met, NOT MET, not judged, error or -.
	Status string `json:"status"`
	Note   string `json:"note,omitempty"`
	// failed marks the row of a scenario that could not run.
	failed bool
	// Values are the figures in numbers (µs for latencies).
	Values map[string]float64 `json:"values,omitempty"`
	// Samples are the latencies behind a latency row, for the plot.
	Samples []time.Duration `json:"-"`
}

func (r Result) status() string {
	switch {
	case r.failed:
		return "ERROR"
	case r.Met == nil:
		return "-"
	case *r.Met:
		return "met"
	}
	return "NOT MET"
}

func met(b bool) *bool { return &b }

// Report is the outcome of a run.
type Report struct {
	Store     string    `json:"store"`
	Target    string    `json:"target"`
	GoVersion string    `json:"go_version"`
	CPUs      int       `json:"cpus"`
	Started   time.Time `json:"started"`
	// Quick is a --quick run: every scenario at a tiny scale, no target judged.
	Quick bool `json:"quick,omitempty"`
	// ScaleStore and ScaleServers say what the scale scenario runs on (its
	// Redis, its replicas), which are not Store and Target: those are the
	// other scenarios' (ping's floor among them).
	ScaleStore   string   `json:"scale_store,omitempty"`
	ScaleServers string   `json:"scale_servers,omitempty"`
	Took         string   `json:"took"`
	Results      []Result `json:"results"`
}

// Run runs the chosen scenarios and returns their results. A scenario that
// fails gives a row saying why (Report.Errors counts them). Run returns an
// error for a bad Config, when the servers cannot be measured (the ping floor
// fails), and when ctx ends: then with the report of the rows measured so far.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Agents <= 0 {
		cfg.Agents = 10000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	want := map[string]bool{"ping": true}
	for _, s := range cfg.Scenarios {
		if !slices.Contains(Scenarios, s) {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(Scenarios, ", "))
		}
		want[s] = true
	}
	if len(cfg.Scenarios) == 0 {
		for _, s := range Scenarios {
			want[s] = !slices.Contains(onRequest, s)
		}
	}
	if cfg.RedisURL != "" && cfg.OpenRedis == nil {
		return nil, errors.New("RedisURL given without OpenRedis")
	}
	raiseFileLimit(cfg.Logger)
	r := &runner{cfg: cfg, log: cfg.Logger}
	if err := r.init(ctx); err != nil {
		return nil, err
	}
	defer r.close(ctx)
	rep := &Report{Store: r.storeName(), Target: r.targetName(), GoVersion: runtime.Version(),
		CPUs: runtime.NumCPU(), Started: time.Now(), Quick: cfg.Quick}
	if want["scale"] {
		rep.ScaleStore, rep.ScaleServers = r.scaleSetup()
	}
	for _, name := range Scenarios {
		if !want[name] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep.done(), err
		}
		r.log.Info("scenario", "name", name)
		t0 := time.Now()
		res := r.run(ctx, name)
		if err := ctx.Err(); err != nil {
			// Interrupted: what the scenario measured stays, its error
			// (context canceled) is no finding.
			rep.Results = append(rep.Results, slices.DeleteFunc(res, func(x Result) bool { return x.failed })...)
			return rep.done(), err
		}
		for i := range res {
			x := &res[i]
			x.Status = x.status()
			if cfg.Quick && x.Met != nil && !x.failed {
				// A smoke test's figures say nothing about the targets.
				x.Met, x.Status = nil, "not judged"
			}
			r.log.Info("result", "scenario", x.Scenario, "summary", x.Summary, "floor", x.Floor, "vs_floor", x.VsFloor, "status", x.Status, "took", time.Since(t0).Round(time.Millisecond))
		}
		rep.Results = append(rep.Results, res...)
		if name == "ping" {
			// Every other scenario stands on the floor: without it they would
			// each wait out their own timeouts against a server that is not
			// there.
			for _, x := range res {
				if x.failed {
					return rep.done(), fmt.Errorf("%s: the bare call (ping) failed: %s", r.url, x.Note)
				}
			}
		}
		runtime.GC()
	}
	return rep.done(), nil
}

// done sets how long the run took, and returns rep.
func (rep *Report) done() *Report {
	rep.Took = time.Since(rep.Started).Round(100 * time.Millisecond).String()
	return rep
}

// Errors counts the rows of scenarios that could not run (status ERROR).
func (rep *Report) Errors() int {
	n := 0
	for _, r := range rep.Results {
		if r.failed || r.Status == "ERROR" {
			n++
		}
	}
	return n
}

// Columns of the table: with their gaps they fit 120 columns; longer cells
// wrap onto the lines below.
var columns = []struct {
	head  string
	width int
}{
	{"SCENARIO", 13}, {"MEASURED", 23}, {"RESULT", 27}, {"FLOOR", 12}, {"×FLOOR", 6}, {"TARGET", 17}, {"STATUS", 10},
}

// TableWidth is the widest line WriteTable prints (notes wrap to it too).
const TableWidth = 120

// WriteTable prints the report as an aligned table no wider than TableWidth,
// then the notes. F is the bare Connect call and R the bare Redis script
// round trip, both measured in the same run.
func (rep *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	head := fmt.Sprintf("forge bench · store: %s · server: %s · %s · %d CPUs · took %s", rep.Store, rep.Target, rep.GoVersion, rep.CPUs, rep.Took)
	if rep.ScaleStore != "" {
		others := false
		for _, r := range rep.Results {
			others = others || (r.Scenario != "ping" && r.Scenario != "scale")
		}
		if others {
			head = fmt.Sprintf("forge bench · store: %s · server: %s · scale: %s, %s · %s · %d CPUs · took %s",
				rep.Store, rep.Target, rep.ScaleStore, rep.ScaleServers, rep.GoVersion, rep.CPUs, rep.Took)
		} else {
			head = fmt.Sprintf("forge bench · store: %s · servers: %s · floor (ping): %s on %s · %s · %d CPUs · took %s",
				rep.ScaleStore, rep.ScaleServers, rep.Target, rep.Store, rep.GoVersion, rep.CPUs, rep.Took)
		}
	}
	for _, l := range wrap(head, TableWidth) {
		b.WriteString(l + "\n")
	}
	if rep.Quick {
		b.WriteString("--quick: every scenario at a tiny scale; no target is judged\n")
	}
	b.WriteString("\n")
	heads := make([]string, len(columns))
	for i, c := range columns {
		heads[i] = c.head
	}
	writeRow(&b, heads)
	for _, r := range rep.Results {
		writeRow(&b, []string{r.Scenario, r.Name, r.Summary, dash(r.Floor), dash(r.VsFloor), r.Target, r.Status})
	}
	var notes []string
	said := map[string]bool{} // two rows of a scenario may say the same
	for _, r := range rep.Results {
		if n := r.Scenario + ": " + r.Note; r.Note != "" && !said[n] {
			notes = append(notes, n)
			said[n] = true
		}
	}
	if len(notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range notes {
			for i, l := range wrap(n, TableWidth-4) {
				if i == 0 {
					b.WriteString("  " + l + "\n")
				} else {
					b.WriteString("    " + l + "\n")
				}
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeRow writes one row of cells, each wrapped to its column's width.
func writeRow(b *strings.Builder, cells []string) {
	wrapped := make([][]string, len(cells))
	lines := 1
	for i, c := range cells {
		wrapped[i] = wrap(c, columns[i].width)
		lines = max(lines, len(wrapped[i]))
	}
	for l := range lines {
		var line strings.Builder
		for i := range cells {
			var cell string
			if l < len(wrapped[i]) {
				cell = wrapped[i][l]
			}
			line.WriteString(cell)
			if i < len(cells)-1 {
				line.WriteString(strings.Repeat(" ", columns[i].width-utf8.RuneCountInString(cell)+2))
			}
		}
		b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
	}
}

// wrap breaks s into lines of at most width runes, at spaces where it can.
func wrap(s string, width int) []string {
	var out []string
	var cur []rune
	for _, word := range strings.Fields(s) {
		rw := []rune(word)
		for len(rw) > width { // a word wider than the column is cut
			if len(cur) > 0 {
				out, cur = append(out, string(cur)), nil
			}
			out, rw = append(out, string(rw[:width])), rw[width:]
		}
		switch {
		case len(cur) == 0:
			cur = rw
		case len(cur)+1+len(rw) <= width:
			cur = append(append(cur, ' '), rw...)
		default:
			out, cur = append(out, string(cur)), rw
		}
	}
	if len(cur) > 0 || len(out) == 0 {
		out = append(out, string(cur))
	}
	return out
}

// WriteJSON prints the report as JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
