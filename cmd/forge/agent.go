package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/orange-forge/forge/agent"
	"github.com/orange-forge/forge/internal/buildinfo"
)

// runAgent is `forge agent`: parse, build, run until ctx ends (then drain).
func (m *Main) runAgent(ctx context.Context, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "install":
			return m.runAgentInstall(ctx, args[1:])
		case "uninstall":
			return m.runAgentUninstall(ctx, args[1:])
		}
	}
	c, err := m.ParseAgent(args)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		// Interrupted while starting: stop here, before the start below
		// (hideAgentSecrets) hands over to a new process that would not know.
		return nil
	}
	if err := m.hideAgentSecrets(args, c.EnrollToken); err != nil {
		return err
	}
	if m.Exec != nil {
		if err := hideMemory(); err != nil {
			return fmt.Errorf("cannot close the agent's memory to other processes: %w", err)
		}
	}
	if inService() {
		return m.serveAgentService(ctx, c)
	}
	a, err := m.BuildAgent(c)
	if err != nil {
		return cliError(err)
	}
	if m.StopNow != nil {
		ran := make(chan struct{})
		defer close(ran)
		go func() {
			select {
			case <-m.StopNow:
				a.StopNow()
			case <-ran:
			}
		}()
	}
	if err := a.Run(ctx); errors.Is(err, agent.ErrRevoked) {
		// A distinct code, so a service manager can be told not to restart an
		// agent that can never work again (the systemd unit's RestartPreventExitStatus).
		fmt.Fprintf(m.Stderr, "forge agent: %v\n", cliError(err))
		return exitCode(exitRevoked)
	} else {
		return cliError(err)
	}
}

// agentErrorPrefix starts the agent package's errors, as a library's errors
// name their package; the CLI already says "forge agent: ".
const agentErrorPrefix = "agent: "

// cliError returns err as `forge agent` prints it: without the agent
// package's own prefix, so a line reads "forge agent: no server given", not
// "forge agent: agent: no server given". errors.Is and As still see err.
func cliError(err error) error {
	if err == nil || !strings.HasPrefix(err.Error(), agentErrorPrefix) {
		return err
	}
	return prefixless{err}
}

type prefixless struct{ err error }

func (e prefixless) Error() string { return strings.TrimPrefix(e.err.Error(), agentErrorPrefix) }
func (e prefixless) Unwrap() error { return e.err }

// exitRevoked is the exit code of `forge agent` when the server refuses its
// token for good.
const exitRevoked = 3

// AgentConfig is what `forge agent` was told: its flags, each falling back to its
// FORGE_* variable. ParseAgent fills and checks it; BuildAgent makes the agent.
type AgentConfig struct {
	Servers     []string // base URLs, to fail over between
	EnrollToken string
	CA          string // PEM file replacing the system roots; empty: system roots
	Name        string
	Labels      map[string]string
	StateDir    string
	AllowExec   []string // argv[0] values the exec task type may run
	AllowEnv    []string // variables an exec task's env may set
	ExecUser    string   // user commands run as; empty: the agent's
	// SigningPubkeys are PEM files of the server's task-signing public keys to
	// pin; empty: trust those the server gives at the first Register.
	SigningPubkeys []string
	Concurrency    int
	DrainGrace     time.Duration
	Log            logConfig

	// EnrollTokenFile holds the enrollment token (read when EnrollToken is
	// empty); it must not be readable by group or others.
	EnrollTokenFile string
}

// ParseAgent parses the command line of `forge agent` (after the word "agent")
// and the FORGE_* variables into a config, and checks it. It opens nothing.
func (m *Main) ParseAgent(args []string) (AgentConfig, error) {
	var c AgentConfig
	var servers, logFormat, logLevel string
	var labels []string
	f := m.newFlags("agent", "forge agent: run tasks from a forge server on this machine. It dials out; it opens no port.")
	f.StringVar(&servers, "server", "", "server URL; several, comma-separated, to fail over between")
	f.StringVar(&c.EnrollToken, "enroll-token", "", "enrollment token, used only when --state-dir holds no identity yet")
	f.StringVar(&c.EnrollTokenFile, "enroll-token-file", "", "file holding the enrollment token (mode 0600), instead of --enroll-token; it may be gone once the agent has enrolled")
	f.StringVar(&c.CA, "ca", "", "PEM file of the CA that signed the server's certificate (replaces the system roots)")
	f.StringVar(&c.Name, "name", "", "agent name (default: the hostname, plus a suffix of --state-dir unless it is the service's)")
	f.ListVar(&labels, "label", "label k=v for selectors (repeatable)")
	f.StringVar(&c.StateDir, "state-dir", "", "directory keeping the agent's identity and running commands across restarts")
	f.ListVar(&c.AllowExec, "allow-exec", "command the exec task type may run, matched exactly against argv[0] (repeatable)")
	f.ListVar(&c.AllowEnv, "allow-env", "variable an exec task's env may set (repeatable); the loader's, shells' and interpreters' start-up variables never pass")
	f.ListVar(&c.SigningPubkeys, "signing-pubkey", "the server's task-signing public key (PEM, as from `openssl pkey -in key.pem -pubout`) to pin; repeat while rotating. The agent then runs only tasks signed with it")
	f.StringVar(&c.ExecUser, "exec-user", "", "run commands as this user, who cannot read the agent's state dir or token (the agent must run as root)")
	f.IntVar(&c.Concurrency, "concurrency", 4, "most tasks run at once")
	f.DurationVar(&c.DrainGrace, "drain-grace", 30*time.Second, "on SIGTERM or Ctrl-C, how long running tasks may finish before they are stopped (at once on a second one)")
	f.logFlags(&logFormat, &logLevel)
	if err := f.parse(args); err != nil {
		return c, err
	}
	if servers == "" {
		fmt.Fprintln(m.Stderr, "forge agent: --server (or FORGE_SERVER) is required")
		return c, errUsage
	}
	if c.EnrollToken != "" && c.EnrollTokenFile != "" {
		fmt.Fprintln(m.Stderr, "forge agent: give --enroll-token or --enroll-token-file, not both")
		return c, errUsage
	}
	var err error
	if c.Log, err = parseLog(logFormat, logLevel); err != nil {
		return c, err
	}
	if v := m.getenv(tokenFDVar); v != "" && c.EnrollToken == "" && c.EnrollTokenFile == "" {
		if c.EnrollToken, err = readTokenFD(v); err != nil {
			return c, err
		}
	}
	for _, name := range c.AllowEnv {
		if agent.ForbiddenEnv(name) {
			return c, fmt.Errorf("--allow-env %s: never allowed: the loader's, a shell's or an interpreter's start-up variable lets a task run code of its own", name)
		}
	}
	c.Labels = map[string]string{}
	for _, kv := range labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return c, fmt.Errorf("--label %q: want k=v", kv)
		}
		c.Labels[k] = v
	}
	for _, s := range strings.Split(servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.Servers = append(c.Servers, strings.TrimRight(s, "/"))
		}
	}
	return c, nil
}

// BuildAgent makes the agent c describes, with the built-in task types echo and
// exec; the caller runs it. It reads the CA file; the agent dials nothing until Run.
func (m *Main) BuildAgent(c AgentConfig) (*agent.Agent, error) {
	log := m.newLogger(c.Log)
	if c.EnrollTokenFile != "" {
		tok, err := readTokenFile(c.EnrollTokenFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			log.Info("no enrollment token file: the agent can start only with an identity saved in its state dir", "file", c.EnrollTokenFile)
		case err != nil:
			return nil, fmt.Errorf("--enroll-token-file: %w", err)
		default:
			c.EnrollToken = tok
		}
	}
	var pins []ed25519.PublicKey
	for _, file := range c.SigningPubkeys {
		k, err := readSigningPubkey(file)
		if err != nil {
			return nil, fmt.Errorf("--signing-pubkey %s: %w", file, err)
		}
		pins = append(pins, k)
	}
	cfg := agent.Config{
		Servers: c.Servers, EnrollToken: c.EnrollToken, Name: c.Name, Labels: c.Labels, StateDir: c.StateDir,
		Concurrency: c.Concurrency, DrainGrace: c.DrainGrace, Logger: log, Version: buildinfo.Get().Version,
		SigningKeys: pins,
	}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate in it", c.CA)
		}
		cfg.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	a, err := agent.New(cfg)
	if err != nil {
		return nil, err
	}
	opts := []agent.ExecOption{agent.WithAllowEnv(c.AllowEnv...)}
	if c.ExecUser != "" {
		u, err := agent.LookupExecUser(c.ExecUser)
		if err != nil {
			return nil, fmt.Errorf("--exec-user: %w", err)
		}
		opts = append(opts, agent.WithExecUser(u))
	}
	a.Handle("echo", agent.EchoHandler())
	a.Handle("exec", agent.ExecHandler(c.AllowExec, opts...))
	if len(c.AllowExec) == 0 {
		log.Info("exec tasks will be refused: no --allow-exec given")
	} else {
		log.Info("exec tasks may run these commands", "allow_exec", strings.Join(c.AllowExec, ","),
			"allow_env", strings.Join(c.AllowEnv, ","), "exec_user", c.ExecUser)
	}
	return a, nil
}

// readTokenFile reads a token kept in a file: the first line, without the
// spaces around it. Like ssh with a private key, it refuses a file that others
// can read: the token would no longer be a secret. (Windows files are guarded by
// ACLs, which `forge agent install` sets; the mode bits say nothing there.)
func readTokenFile(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if perm := st.Mode().Perm(); runtime.GOOS != "windows" && perm&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %04o); make it 0600 (chmod 600)", name, perm)
	}
	b := make([]byte, 4096)
	n, err := f.Read(b)
	if err != nil && n == 0 {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	line, _, _ := strings.Cut(string(b[:n]), "\n")
	tok := strings.TrimSpace(line)
	if tok == "" {
		return "", fmt.Errorf("%s holds no token", name)
	}
	return tok, nil
}

// readSigningPubkey reads an ed25519 public key from a PEM file (PKIX, "PUBLIC
// KEY"), as `openssl pkey -in key.pem -pubout` writes it from the server's
// --signing-key.
func readSigningPubkey(file string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block in it")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not a public key (want PEM \"PUBLIC KEY\", as from openssl pkey -pubout): %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("not an ed25519 key")
	}
	return pub, nil
}
