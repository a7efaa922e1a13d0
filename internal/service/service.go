// Package service installs `forge agent` as the system's service: a systemd
// unit on Linux, a launchd daemon on macOS, a Windows service. The files it
// writes are rendered here, on every system, so they are tested everywhere; the
// packages (.deb, .rpm) ship the same unit, rendered for /usr/bin/forge.
package service

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Name is the service's name: the systemd unit forge-agent.service, the Windows
// service forge-agent.
const Name = "forge-agent"

// LaunchdLabel is the launchd job's label on macOS.
const LaunchdLabel = "com.github.orange-forge.forge-agent"

// User is the dedicated user the Linux service runs as.
const User = "forge"

// Paths on Linux and macOS. The Windows ones are under %ProgramData% (see
// install_windows.go).
const (
	ConfigDir     = "/etc/forge"
	EnvFile       = ConfigDir + "/agent.env"
	TokenFile     = ConfigDir + "/enroll-token"
	StateDir      = "/var/lib/" + Name
	UnitFile      = "/etc/systemd/system/" + Name + ".service"
	PlistFile     = "/Library/LaunchDaemons/" + LaunchdLabel + ".plist"
	DarwinLogFile = "/var/log/" + Name + ".log"
)

// Config is what to install.
type Config struct {
	// Exe is the forge binary the service runs (absolute).
	Exe string
	// Env is the agent's configuration: FORGE_* variables, as `forge agent`
	// reads them (FORGE_SERVER, FORGE_LABEL, FORGE_ALLOW_EXEC ...).
	Env map[string]string
	// EnrollToken, when set, is written to the token file (mode 0600, owned by
	// the service's user). Empty keeps the file already there.
	EnrollToken string
	// User runs the service: the dedicated user (created if missing) on Linux;
	// root when empty on macOS; ignored on Windows (LocalSystem).
	User string
	// NoStart enables the service without starting it now (machine images
	// that enroll at first boot).
	NoStart bool

	// Root, when set, is prepended to every path written, and nothing is
	// run: for tests and for building images.
	Root string
	// Run runs a system command (useradd, systemctl, launchctl); nil runs it
	// for real. Ignored with Root.
	Run func(name string, args ...string) error
}

func (c *Config) path(p string) string {
	if c.Root == "" {
		return p
	}
	return filepath.Join(c.Root, filepath.FromSlash(p))
}

func (c *Config) run(name string, args ...string) error {
	if c.Root != "" {
		return nil
	}
	if c.Run != nil {
		return c.Run(name, args...)
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeFile writes b to p (under Root) with mode, creating its directory.
func (c *Config) writeFile(p string, b []byte, mode os.FileMode) error {
	name := c.path(p)
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	tmp := name + ".new"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil { // whatever the umask
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, name)
}

// sortedEnv returns env's names in order.
func sortedEnv(env map[string]string) []string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// SystemdUnit returns the systemd unit that runs `exe agent` as the dedicated
// user, configured by EnvFile, with its identity in StateDir.
func SystemdUnit(exe string) string {
	return strings.ReplaceAll(systemdUnit, "@EXE@", exe)
}

const systemdUnit = `# forge agent: runs tasks from a forge server. It dials out and opens no port.
# Configuration: /etc/forge/agent.env (FORGE_SERVER, FORGE_LABEL, FORGE_ALLOW_EXEC ...).
# Enrollment token: /etc/forge/enroll-token (mode 0600, owned by forge); it may
# be removed once the agent has enrolled (its identity is in /var/lib/forge-agent).
# Local changes: systemctl edit forge-agent
[Unit]
Description=forge agent
Documentation=https://github.com/orange-forge/forge/blob/main/docs/operations.md
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User=forge
Group=forge
Environment=FORGE_STATE_DIR=/var/lib/forge-agent FORGE_ENROLL_TOKEN_FILE=/etc/forge/enroll-token
EnvironmentFile=/etc/forge/agent.env
ExecStart=@EXE@ agent
StateDirectory=forge-agent
StateDirectoryMode=0700
UMask=0027

# Restart after a crash or a lost server, but not after a usage error (2) or a
# revoked token (3): restarting cannot fix either.
Restart=on-failure
RestartSec=5s
RestartPreventExitStatus=2 3

# Stop is a drain: SIGTERM goes to the agent alone, which takes no new task and
# lets running ones finish (--drain-grace, 30 s), then stops them (5 s more) and
# reports them; only then are leftovers of the unit killed.
KillMode=mixed
TimeoutStopSec=90s

# Hardening that takes from the agent, and from the commands it runs as forge,
# only what an unprivileged user could not do anyway. Commands keep the whole
# file system (deploy scripts write where forge may write), every system call and
# writable-executable memory (interpreters, JITs), devices, and the network.
# NoNewPrivileges stops set-uid programs (sudo): to run commands as root, run
# the agent as root (User=root in a drop-in); see docs/operations.md.
NoNewPrivileges=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
`

// EnvFileContent returns the configuration file holding env, one NAME=value a
// line, as systemd's EnvironmentFile reads it.
func EnvFileContent(env map[string]string) (string, error) {
	var b strings.Builder
	b.WriteString(envHeader)
	for _, k := range sortedEnv(env) {
		v := env[k]
		if strings.ContainsAny(v, "\n\r\x00") || strings.ContainsAny(k, "= \t\n\r\x00") {
			return "", fmt.Errorf("%s: a value on one line is needed", k)
		}
		// Double quotes keep spaces and '#'; backslash and '"' are escaped, and
		// '$' is literal in EnvironmentFile.
		fmt.Fprintf(&b, "%s=\"%s\"\n", k, strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v))
	}
	return b.String(), nil
}

const envHeader = `# forge agent configuration, read by the forge-agent service.
# Each line sets a variable that a ` + "`forge agent`" + ` flag reads: FORGE_SERVER is
# --server, FORGE_LABEL is --label (comma-separated k=v), FORGE_ALLOW_EXEC is
# --allow-exec (comma-separated), FORGE_CA is --ca. ` + "`forge agent -h`" + ` lists them.
# After a change: systemctl restart forge-agent (running tasks drain first).
`

// LaunchdPlist returns the launchd daemon definition that runs `exe agent` with
// env, as user (root when empty).
func LaunchdPlist(exe string, env map[string]string, user string) string {
	var b strings.Builder
	x := xmlEscape
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- forge agent: runs tasks from a forge server. Written by ` + "`forge agent install`" + `. -->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>` + LaunchdLabel + `</string>
	<key>ProgramArguments</key>
	<array>
		<string>` + x(exe) + `</string>
		<string>agent</string>
	</array>
	<key>EnvironmentVariables</key>
	<dict>
`)
	all := map[string]string{"FORGE_STATE_DIR": StateDir, "FORGE_ENROLL_TOKEN_FILE": TokenFile}
	for k, v := range env {
		all[k] = v
	}
	for _, k := range sortedEnv(all) {
		fmt.Fprintf(&b, "\t\t<key>%s</key>\n\t\t<string>%s</string>\n", x(k), x(all[k]))
	}
	b.WriteString(`	</dict>
`)
	if user != "" {
		fmt.Fprintf(&b, "\t<key>UserName</key>\n\t<string>%s</string>\n", x(user))
	}
	b.WriteString(`	<key>RunAtLoad</key>
	<true/>
	<!-- Restart unless it exited cleanly; at most every 10 s. -->
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ThrottleInterval</key>
	<integer>10</integer>
	<!-- Stop is a drain: SIGTERM, then up to 90 s for running tasks to finish. -->
	<key>ExitTimeOut</key>
	<integer>90</integer>
	<key>StandardOutPath</key>
	<string>` + DarwinLogFile + `</string>
	<key>StandardErrorPath</key>
	<string>` + DarwinLogFile + `</string>
</dict>
</plist>
`)
	return b.String()
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}

// replaceUser makes unit run as user instead of the dedicated one.
func replaceUser(unit, user string) string {
	return strings.NewReplacer("\nUser="+User+"\n", "\nUser="+user+"\n", "\nGroup="+User+"\n", "\n").Replace(unit)
}
