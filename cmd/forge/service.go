package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/orange-forge/forge/internal/service"
)

const installUsage = `forge agent install: install this binary's agent as the system's service, and start it.

  Linux    a systemd unit (forge-agent.service) running as the user forge, its
           configuration in /etc/forge/agent.env, the enrollment token in
           /etc/forge/enroll-token (0600), its identity in /var/lib/forge-agent
  macOS    a launchd daemon (/Library/LaunchDaemons/` + service.LaunchdLabel + `.plist)
  Windows  a service (forge-agent) whose configuration is its environment

Stopping the service drains the agent: running tasks finish first. Running install
again applies a new configuration. Every ` + "`forge agent`" + ` flag is taken (--server is
required; --enroll-token or --enroll-token-file, unless the agent has enrolled), and:

  --user NAME   run as NAME (Linux: default forge, created if missing; macOS: root)
  --no-start    enable the service without starting it (machine images)
  --root DIR    write the files under DIR and run nothing (images, checks)
`

const uninstallUsage = `forge agent uninstall: stop the agent's service (a drain) and remove it.

  --purge       also remove its configuration, token and identity (it would
                enroll as a new agent)
  --root DIR    remove the files under DIR and run nothing
`

// runAgentInstall is `forge agent install`.
func (m *Main) runAgentInstall(_ context.Context, args []string) error {
	own, rest, err := splitOwnFlags(args, map[string]bool{"user": true, "root": true}, map[string]bool{"no-start": true})
	if err != nil || own["help"] != "" {
		fmt.Fprint(m.Stderr, installUsage)
		if err != nil {
			fmt.Fprintf(m.Stderr, "\nforge agent install: %v\n", err)
			return errUsage
		}
		return nil
	}
	c, err := m.ParseAgent(rest)
	if err != nil {
		return err
	}
	cfg := service.Config{User: own["user"], NoStart: own["no-start"] != "", Root: own["root"]}
	if cfg.Exe, err = os.Executable(); err != nil {
		return err
	}
	if cfg.Exe, err = filepath.EvalSymlinks(cfg.Exe); err != nil {
		return err
	}
	if cfg.Env, err = installEnv(c); err != nil {
		return err
	}
	switch {
	case c.EnrollToken != "":
		cfg.EnrollToken = c.EnrollToken
	case c.EnrollTokenFile != "":
		if cfg.EnrollToken, err = readTokenFile(c.EnrollTokenFile); err != nil {
			return fmt.Errorf("--enroll-token-file: %w", err)
		}
	}
	if err := service.Install(cfg); err != nil {
		return err
	}
	what := "installed and started"
	if cfg.NoStart {
		what = "installed; it starts at the next boot"
	}
	if cfg.Root != "" {
		what = "written under " + cfg.Root
	}
	fmt.Fprintf(m.Stdout, "forge agent: service %s %s (%s)\n", service.Name, what, cfg.Exe)
	return nil
}

// runAgentUninstall is `forge agent uninstall`.
func (m *Main) runAgentUninstall(_ context.Context, args []string) error {
	own, rest, err := splitOwnFlags(args, map[string]bool{"root": true}, map[string]bool{"purge": true})
	if err == nil && len(rest) > 0 {
		err = fmt.Errorf("unexpected argument %q", rest[0])
	}
	if err != nil || own["help"] != "" {
		fmt.Fprint(m.Stderr, uninstallUsage)
		if err != nil {
			fmt.Fprintf(m.Stderr, "\nforge agent uninstall: %v\n", err)
			return errUsage
		}
		return nil
	}
	if err := service.Uninstall(service.Config{Root: own["root"]}, own["purge"] != ""); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "forge agent: service %s removed\n", service.Name)
	return nil
}

// splitOwnFlags takes the flags of install and uninstall out of args (valued:
// --name V or --name=V; bools: --name) and returns the rest, the agent's flags.
// "help" is set for -h or --help.
func splitOwnFlags(args []string, valued, bools map[string]bool) (map[string]string, []string, error) {
	own := map[string]string{}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case !strings.HasPrefix(a, "-"):
			rest = append(rest, a)
		case name == "h" || name == "help":
			own["help"] = "1"
		case bools[name]:
			if hasVal {
				return nil, nil, fmt.Errorf("--%s takes no value", name)
			}
			own[name] = "1"
		case valued[name]:
			if !hasVal {
				if i+1 >= len(args) {
					return nil, nil, fmt.Errorf("--%s needs a value", name)
				}
				i++
				val = args[i]
			}
			own[name] = val
		default:
			rest = append(rest, a)
		}
	}
	return own, rest, nil
}

// installedAgentFields are the AgentConfig fields installEnv carries into the
// service's configuration or refuses; a test checks none is forgotten.
var installedAgentFields = []string{"Servers", "EnrollToken", "EnrollTokenFile", "CA", "Name", "Labels",
	"StateDir", "AllowExec", "AllowEnv", "ExecUser", "SigningPubkeys", "Concurrency", "DrainGrace", "Log"}

// installEnv returns the FORGE_* variables that configure the service as c
// does: only what differs from the defaults, so later defaults still apply.
// The token goes to its own file, never to the configuration.
func installEnv(c AgentConfig) (map[string]string, error) {
	def, err := (&Main{Stderr: discard{}}).ParseAgent([]string{"--server", "x"})
	if err != nil {
		return nil, err
	}
	if c.StateDir != "" {
		return nil, errors.New("--state-dir: the service keeps its identity in its own state dir; it cannot be chosen at install")
	}
	env := map[string]string{"FORGE_SERVER": strings.Join(c.Servers, ",")}
	if c.CA != "" {
		abs, err := filepath.Abs(c.CA)
		if err != nil {
			return nil, err
		}
		env["FORGE_CA"] = abs
	}
	if c.Name != "" {
		env["FORGE_NAME"] = c.Name
	}
	if len(c.Labels) > 0 {
		kv := make([]string, 0, len(c.Labels))
		for k, v := range c.Labels {
			if strings.Contains(k+v, ",") {
				return nil, fmt.Errorf("--label %s=%s: a service's labels cannot hold a comma", k, v)
			}
			kv = append(kv, k+"="+v)
		}
		sort.Strings(kv)
		env["FORGE_LABEL"] = strings.Join(kv, ",")
	}
	if len(c.AllowExec) > 0 {
		for _, a := range c.AllowExec {
			if strings.Contains(a, ",") {
				return nil, fmt.Errorf("--allow-exec %q: a service's allowed commands cannot hold a comma", a)
			}
		}
		env["FORGE_ALLOW_EXEC"] = strings.Join(c.AllowExec, ",")
	}
	if len(c.AllowEnv) > 0 {
		env["FORGE_ALLOW_ENV"] = strings.Join(c.AllowEnv, ",")
	}
	if c.ExecUser != "" {
		env["FORGE_EXEC_USER"] = c.ExecUser
	}
	if len(c.SigningPubkeys) > 0 {
		files := make([]string, len(c.SigningPubkeys))
		for i, f := range c.SigningPubkeys {
			abs, err := filepath.Abs(f)
			if err != nil {
				return nil, err
			}
			if strings.Contains(abs, ",") {
				return nil, fmt.Errorf("--signing-pubkey %q: a service's key files cannot hold a comma", f)
			}
			files[i] = abs
		}
		env["FORGE_SIGNING_PUBKEY"] = strings.Join(files, ",")
	}
	if c.Concurrency != def.Concurrency {
		env["FORGE_CONCURRENCY"] = fmt.Sprint(c.Concurrency)
	}
	if c.DrainGrace != def.DrainGrace {
		env["FORGE_DRAIN_GRACE"] = c.DrainGrace.String()
	}
	if c.Log.Format != def.Log.Format {
		env["FORGE_LOG_FORMAT"] = c.Log.Format
	}
	if c.Log.Level != def.Log.Level {
		env["FORGE_LOG_LEVEL"] = strings.ToLower(c.Log.Level.String())
	}
	if runtime.GOOS == "windows" {
		// The service manager keeps no log of stderr: the agent writes to the
		// event log, as text.
		delete(env, "FORGE_LOG_FORMAT")
	}
	return env, nil
}

// discard is an io.Writer that keeps nothing.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// logLevelOf returns the level a log line of slog's text or JSON handler was
// written at (info when it names none), for a sink with levels of its own such
// as the Windows event log.
func logLevelOf(line string) slog.Level {
	for _, lv := range []slog.Level{slog.LevelError, slog.LevelWarn, slog.LevelDebug} {
		if strings.Contains(line, " level="+lv.String()+" ") || strings.Contains(line, `"level":"`+lv.String()+`"`) {
			return lv
		}
	}
	return slog.LevelInfo
}
