package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// flags is a flag.FlagSet whose flags fall back to FORGE_* environment variables.
// The Var forms write into a config value's fields, so a command's parse step
// fills its config directly; the others return pointers.
type flags struct {
	*flag.FlagSet
	m    *Main
	envs map[string]string // flag name -> variable
}

func (m *Main) newFlags(name, summary string) *flags {
	fs := flag.NewFlagSet("forge "+name, flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	f := &flags{FlagSet: fs, m: m, envs: map[string]string{}}
	fs.Usage = func() {
		fmt.Fprintf(m.Stderr, "%s\n\nFlags (each also read from the variable shown):\n", summary)
		fs.VisitAll(func(fl *flag.Flag) {
			def := ""
			if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "[]" {
				def = " (default " + fl.DefValue + ")"
			}
			fmt.Fprintf(m.Stderr, "  --%s  [%s]\n      %s%s\n", fl.Name, f.envs[fl.Name], fl.Usage, def)
		})
	}
	return f
}

func envName(flagName string) string {
	return "FORGE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// env returns the variable of flag name, and records it for the usage text.
func (f *flags) env(name string) string {
	f.envs[name] = envName(name)
	return f.m.getenv(envName(name))
}

func (f *flags) StringVar(p *string, name, def, usage string) {
	if v := f.env(name); v != "" {
		def = v
	}
	f.FlagSet.StringVar(p, name, def, usage)
}

func (f *flags) BoolVar(p *bool, name string, def bool, usage string) {
	if v := f.env(name); v != "" {
		def = v == "1" || strings.EqualFold(v, "true") || strings.EqualFold(v, "yes")
	}
	f.FlagSet.BoolVar(p, name, def, usage)
}

func (f *flags) IntVar(p *int, name string, def int, usage string) {
	if v := f.env(name); v != "" {
		fmt.Sscan(v, &def)
	}
	f.FlagSet.IntVar(p, name, def, usage)
}

func (f *flags) FloatVar(p *float64, name string, def float64, usage string) {
	if v := f.env(name); v != "" {
		fmt.Sscan(v, &def)
	}
	f.FlagSet.Float64Var(p, name, def, usage)
}

func (f *flags) DurationVar(p *time.Duration, name string, def time.Duration, usage string) {
	if v := f.env(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			def = d
		}
	}
	f.FlagSet.DurationVar(p, name, def, usage)
}

// ListVar defines a repeatable flag; the variable holds a comma-separated list,
// which the command line replaces rather than extends.
func (f *flags) ListVar(p *[]string, name, usage string) {
	l := &listFlag{vals: p}
	if v := f.env(name); v != "" {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				*p = append(*p, s)
			}
		}
		l.fromEnv = true
	}
	f.FlagSet.Var(l, name, usage)
}

func (f *flags) String(name, def, usage string) *string {
	p := new(string)
	f.StringVar(p, name, def, usage)
	return p
}

func (f *flags) Bool(name string, def bool, usage string) *bool {
	p := new(bool)
	f.BoolVar(p, name, def, usage)
	return p
}

func (f *flags) Int(name string, def int, usage string) *int {
	p := new(int)
	f.IntVar(p, name, def, usage)
	return p
}

func (f *flags) Duration(name string, def time.Duration, usage string) *time.Duration {
	p := new(time.Duration)
	f.DurationVar(p, name, def, usage)
	return p
}

// List defines a repeatable flag (see ListVar).
func (f *flags) List(name, usage string) *[]string {
	p := new([]string)
	f.ListVar(p, name, usage)
	return p
}

type listFlag struct {
	vals    *[]string
	fromEnv bool
}

func (l *listFlag) String() string {
	if l.vals == nil { // the zero value flag.PrintDefaults makes
		return ""
	}
	return strings.Join(*l.vals, ",")
}

func (l *listFlag) Set(s string) error {
	if l.fromEnv { // the command line replaces the environment's list
		*l.vals, l.fromEnv = nil, false
	}
	*l.vals = append(*l.vals, s)
	return nil
}

func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

// noArgs refuses positional arguments for commands that take none.
func (f *flags) noArgs(cmd string) error {
	if f.NArg() > 0 {
		fmt.Fprintf(f.m.Stderr, "forge %s: unexpected argument %q\n", cmd, f.Arg(0))
		return errUsage
	}
	return nil
}

// logConfig is what --log-format and --log-level ask for.
type logConfig struct {
	Format string // text or json
	Level  slog.Level
}

// logFlags defines --log-format and --log-level; check their values with parseLog.
func (f *flags) logFlags(format, level *string) {
	f.StringVar(format, "log-format", "text", "log format: text or json")
	f.StringVar(level, "log-level", "info", "log level: debug, info, warn, error")
}

// parseLog checks the values of --log-format and --log-level.
func parseLog(format, level string) (logConfig, error) {
	c := logConfig{Format: format}
	if err := c.Level.UnmarshalText([]byte(level)); err != nil {
		return c, fmt.Errorf("--log-level: %v", err)
	}
	if format != "text" && format != "json" {
		return c, fmt.Errorf("--log-format: want text or json, not %q", format)
	}
	return c, nil
}

// newLogger returns the logger c asks for, writing to m.Stderr.
func (m *Main) newLogger(c logConfig) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.Level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(m.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(m.Stderr, opts))
}

// logger returns the slog.Logger the flags ask for.
func (m *Main) logger(format, level string) (*slog.Logger, error) {
	c, err := parseLog(format, level)
	if err != nil {
		return nil, err
	}
	return m.newLogger(c), nil
}
