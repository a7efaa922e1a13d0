package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/orange-forge/forge/internal/termsafe"
)

// flags is a flag.FlagSet whose flags that say where and how (addresses,
// tokens, files, limits) fall back to FORGE_* environment variables; flags that
// say what a command does (targets, --all, --json) are defined on the FlagSet
// itself and read nothing from the environment, so a stray export cannot
// retarget a run. Booleans never read the environment, except those defined
// with BoolEnvVar. The Var forms write into a config value's fields, so a
// command's parse step fills its config directly; the others return pointers.
type flags struct {
	*flag.FlagSet
	m        *Main
	name     string
	summary  string
	usage    string            // the command's synopsis lines
	examples string            // example command lines, one a line
	envs     map[string]string // flag name -> variable
	hidden   map[string]bool   // internal flags, left out of the help
	// interspersed lets flags come after positional arguments (true for every
	// command but run, whose first positional argument starts the command).
	interspersed bool
	args         []string // positional arguments, once parsed
	// envBad holds, by flag name, why its variable's value was not taken;
	// parse refuses it unless the command line gives the flag.
	envBad map[string]string
	// noEnv makes every flag read nothing from the environment (forge bench:
	// a shell set up for production must not point a load test at it).
	noEnv bool
}

// newFlags returns the flags of `forge name`. summary is the first paragraph of
// its help; usage its synopsis (without "Usage:").
func (m *Main) newFlags(name, summary string) *flags {
	fs := flag.NewFlagSet("forge "+name, flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	f := &flags{FlagSet: fs, m: m, name: name, summary: summary, envs: map[string]string{}, hidden: map[string]bool{}, envBad: map[string]string{}, interspersed: true}
	fs.Usage = func() {} // parse prints the help itself, to stdout on -h
	return f
}

// hide leaves internal flags out of the help.
func (f *flags) hide(names ...string) {
	for _, n := range names {
		f.hidden[n] = true
	}
}

// printHelp writes the command's help: summary, usage, examples, then each flag
// with its variable, what it does and its default (once, and only when it is
// not a zero value: what zero means is said by the flag's own text).
func (f *flags) printHelp(w io.Writer) {
	fmt.Fprintf(w, "%s\n", strings.TrimRight(f.summary, "\n"))
	if f.usage != "" {
		fmt.Fprintf(w, "\nUsage:\n")
		for _, l := range strings.Split(strings.TrimRight(f.usage, "\n"), "\n") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	if f.examples != "" {
		fmt.Fprintf(w, "\nExamples:\n")
		for _, l := range strings.Split(strings.TrimRight(f.examples, "\n"), "\n") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	fmt.Fprintf(w, "\nFlags:\n")
	f.VisitAll(func(fl *flag.Flag) {
		if f.hidden[fl.Name] {
			return
		}
		text := fl.Usage
		head := "  --" + fl.Name
		if v := f.envs[fl.Name]; v != "" {
			head += "  [" + v + "]"
		}
		if !zeroDefault(fl) && !strings.Contains(text, "(default") {
			text += " (default " + fl.DefValue + ")"
		}
		fmt.Fprintf(w, "%s\n      %s\n", head, text)
	})
}

// zeroDefault tells whether a flag's default is its type's zero value, which the
// help does not print.
func zeroDefault(fl *flag.Flag) bool {
	switch fl.DefValue {
	case "", "0", "0s", "false", "[]":
		return true
	}
	return false
}

func envName(flagName string) string {
	return "FORGE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// env returns the variable of flag name, and records it for the usage text;
// nothing when f.noEnv.
func (f *flags) env(name string) string {
	if f.noEnv {
		return ""
	}
	f.envs[name] = envName(name)
	return f.m.getenv(envName(name))
}

func (f *flags) StringVar(p *string, name, def, usage string) {
	if v := f.env(name); v != "" {
		def = v
	}
	f.FlagSet.StringVar(p, name, def, usage)
}

// BoolVar defines a boolean flag; it reads no variable (see flags).
func (f *flags) BoolVar(p *bool, name string, def bool, usage string) {
	f.FlagSet.BoolVar(p, name, def, usage)
}

// BoolEnvVar defines a boolean flag that says how a long-running command works
// (forge server --insecure), which its variable may set too.
func (f *flags) BoolEnvVar(p *bool, name string, def bool, usage string) {
	if v := f.env(name); v != "" {
		switch strings.ToLower(v) {
		case "1", "true", "yes":
			def = true
		case "0", "false", "no":
			def = false
		default:
			f.envBad[name] = "want true or false"
		}
	}
	f.FlagSet.BoolVar(p, name, def, usage)
}

func (f *flags) IntVar(p *int, name string, def int, usage string) {
	if v := f.env(name); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			def = n
		} else {
			f.envBad[name] = "want a whole number"
		}
	}
	f.FlagSet.IntVar(p, name, def, usage)
}

func (f *flags) FloatVar(p *float64, name string, def float64, usage string) {
	if v := f.env(name); v != "" {
		if x, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			def = x
		} else {
			f.envBad[name] = "want a number"
		}
	}
	f.FlagSet.Float64Var(p, name, def, usage)
}

func (f *flags) DurationVar(p *time.Duration, name string, def time.Duration, usage string) {
	if v := f.env(name); v != "" {
		if d, err := time.ParseDuration(strings.TrimSpace(v)); err == nil {
			def = d
		} else {
			f.envBad[name] = "want a duration such as 90s, 15m or 168h"
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

// parse parses the command line. Flags may come before or after positional
// arguments (unless f.interspersed is off); everything after "--" is
// positional. -h and --help print the help to stdout; a bad flag prints what
// was wrong and how to get the help, to stderr.
func (f *flags) parse(args []string) error {
	f.args = nil
	for {
		var msg strings.Builder
		f.SetOutput(&msg)
		err := f.Parse(args)
		f.SetOutput(f.m.Stderr)
		if errors.Is(err, flag.ErrHelp) {
			f.printHelp(f.m.Stdout)
			return err
		}
		if err != nil {
			// The flag package names flags with one dash; forge's help and the
			// user write two.
			fmt.Fprintf(f.m.Stderr, "forge %s: %s\nRun \"forge %s -h\" for help.\n", f.name,
				oneDash.ReplaceAllString(termsafe.Line(err.Error()), "$1--$2"), f.name)
			return errUsage
		}
		rest := f.FlagSet.Args()
		if len(rest) == 0 {
			return f.checkEnv()
		}
		// Parse stops at the first positional argument, or after "--".
		if used := len(args) - len(rest); !f.interspersed || (used > 0 && args[used-1] == "--") {
			f.args = append(f.args, rest...)
			return f.checkEnv()
		}
		f.args = append(f.args, rest[0])
		args = rest[1:]
	}
}

// checkEnv refuses a variable whose value its flag cannot take (a duration
// that does not parse, "1.5" for a count), unless the command line gives the
// flag: a mistyped FORGE_RETENTION must not quietly leave the default.
func (f *flags) checkEnv() error {
	for _, name := range slices.Sorted(maps.Keys(f.envBad)) {
		if f.set(name) {
			continue
		}
		v := f.envs[name]
		return f.usageError("%s=%q is not a value for --%s: %s", v, termsafe.Line(f.m.getenv(v)), name, f.envBad[name])
	}
	return nil
}

// oneDash finds a flag's name as the flag package writes it in an error ("for
// flag -limit", "not defined: -x").
var oneDash = regexp.MustCompile(`(flag |for |: )-([A-Za-z])`)

// set tells whether the command line gave the flag name.
func (f *flags) set(name string) bool {
	found := false
	f.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
	return found
}

// Args returns the positional arguments.
func (f *flags) Args() []string { return f.args }

// NArg returns how many positional arguments there are.
func (f *flags) NArg() int { return len(f.args) }

// Arg returns the i'th positional argument, or "".
func (f *flags) Arg(i int) string {
	if i < 0 || i >= len(f.args) {
		return ""
	}
	return f.args[i]
}

// noArgs refuses positional arguments for commands that take none.
func (f *flags) noArgs() error {
	if f.NArg() > 0 {
		fmt.Fprintf(f.m.Stderr, "forge %s: unexpected argument %q\nRun \"forge %s -h\" for help.\n", f.name, termsafe.Line(f.Arg(0)), f.name)
		return errUsage
	}
	return nil
}

// usageError prints msg and how to get the help, and returns errUsage.
func (f *flags) usageError(format string, args ...any) error {
	fmt.Fprintf(f.m.Stderr, "forge %s: %s\nRun \"forge %s -h\" for help.\n", f.name, fmt.Sprintf(format, args...), f.name)
	return errUsage
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
