// Package bench is the load generator behind `forge bench`: it starts forge
// servers in-process (or targets running ones), simulates fleets of agents with
// the real agent package and the generated clients, and measures the scenarios
// of forge's performance targets beside the floor of a bare Connect call.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/orange-forge/forge/store"
)

// Scenarios are the scenario names, in the order they run.
var Scenarios = []string{
	"ping", "roundtrip", "runwait", "crossreplica", "cancel", "throughput",
	"dispatchstart", "fanout", "idle", "storm",
}

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
	// Scenarios to run (names from Scenarios); empty: all. ping always runs.
	Scenarios []string
	// Agents is the size of the idle and storm fleets; 10,000.
	Agents int
	// Quick shrinks every scenario to a smoke test (seconds in all).
	Quick bool
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
	// VsBare is the figure against the bare call, where the target asks for it.
	VsBare string `json:"vs_bare,omitempty"`
	Target string `json:"target"`
	// Met is nil when the target could not be judged (not measured, skipped).
	Met  *bool  `json:"met,omitempty"`
	Note string `json:"note,omitempty"`
	// Values are the figures in numbers (µs for latencies).
	Values map[string]float64 `json:"values,omitempty"`
	// Samples are the latencies behind a latency row, for the plot.
	Samples []time.Duration `json:"-"`
}

func (r Result) status() string {
	switch {
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
	Took      string    `json:"took"`
	Results   []Result  `json:"results"`
}

// Run runs the chosen scenarios and returns their results. A scenario that
// fails gives a row saying why; Run returns an error only for a bad Config or
// when ctx ends.
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
			want[s] = true
		}
	}
	if cfg.RedisURL != "" && cfg.OpenRedis == nil {
		return nil, fmt.Errorf("bench: RedisURL given without OpenRedis")
	}
	raiseFileLimit(cfg.Logger)
	r := &runner{cfg: cfg, log: cfg.Logger}
	if err := r.init(ctx); err != nil {
		return nil, err
	}
	defer r.close(ctx)
	rep := &Report{Store: r.storeName(), Target: r.targetName(), GoVersion: runtime.Version(),
		CPUs: runtime.NumCPU(), Started: time.Now()}
	for _, name := range Scenarios {
		if !want[name] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		r.log.Info("scenario", "name", name)
		t0 := time.Now()
		res := r.run(ctx, name)
		for _, x := range res {
			r.log.Info("result", "scenario", x.Scenario, "summary", x.Summary, "vs_bare", x.VsBare, "status", x.status(), "took", time.Since(t0).Round(time.Millisecond))
		}
		rep.Results = append(rep.Results, res...)
		runtime.GC()
	}
	rep.Took = time.Since(rep.Started).Round(100 * time.Millisecond).String()
	return rep, nil
}

// WriteTable prints the report as an aligned table.
func (rep *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "forge bench · store: %s · server: %s · %s · %d CPUs · took %s\n\n",
		rep.Store, rep.Target, rep.GoVersion, rep.CPUs, rep.Took)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tMEASURED\tRESULT\tVS BARE\tTARGET\tSTATUS")
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Scenario, r.Name, r.Summary, dash(r.VsBare), r.Target, r.status())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var notes []string
	for _, r := range rep.Results {
		if r.Note != "" {
			notes = append(notes, fmt.Sprintf("  %s: %s", r.Scenario, r.Note))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nNotes:\n%s\n", strings.Join(notes, "\n"))
	}
	return nil
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
