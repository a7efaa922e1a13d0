package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

// RedisConfig is how `forge server` and `forge bench` reach Redis: the URL and
// the files that go with it. Secrets come from files, so they are not on the
// command line.
type RedisConfig struct {
	URL                  string // redis[s]://[user[:password]@]host:port/db[?addr=…&master_set=…]; empty: no Redis
	CA                   string // PEM file of the CA that signed Redis' certificate; replaces the system roots
	Cert, Key            string // client certificate and key (PEM), for mutual TLS
	ServerName           string // the name Redis' certificate must carry; default: the URL's host
	PasswordFile         string // the password of the URL's user
	SentinelPasswordFile string // the sentinels' own password
	// WaitReplicas > 0 makes every write wait until that many replicas have
	// it (at most WaitTimeout), so a failover cannot lose what forge accepted.
	WaitReplicas int
	WaitTimeout  time.Duration
}

// redisFlags defines the --redis flags into c.
func (f *flags) redisFlags(c *RedisConfig, urlUsage string) {
	f.StringVar(&c.URL, "redis", "", urlUsage)
	f.StringVar(&c.CA, "redis-ca", "", "PEM file of the CA that signed Redis' certificate (replaces the system roots); needs rediss://")
	f.StringVar(&c.Cert, "redis-cert", "", "client certificate (PEM) for a Redis that asks for one; with --redis-key")
	f.StringVar(&c.Key, "redis-key", "", "key (PEM) of --redis-cert")
	f.StringVar(&c.ServerName, "redis-server-name", "", "name Redis' certificate must carry (default: the URL's host)")
	f.StringVar(&c.PasswordFile, "redis-password-file", "", "file holding the password of the Redis URL's user (instead of writing it in the URL)")
	f.StringVar(&c.SentinelPasswordFile, "redis-sentinel-password-file", "", "file holding the sentinels' own password, if they have one")
	f.IntVar(&c.WaitReplicas, "redis-wait-replicas", 0, "answer a write only once this many replicas have it (Redis WAIT), so a failover cannot lose it; not on a cluster")
	f.DurationVar(&c.WaitTimeout, "redis-wait-timeout", time.Second, "longest wait for --redis-wait-replicas; a write not confirmed by then fails as unavailable")
}

// args returns the flags, other than --redis, that give c to another forge.
func (c RedisConfig) args() []string {
	var out []string
	for _, f := range []struct{ name, v string }{{"redis-ca", c.CA}, {"redis-cert", c.Cert}, {"redis-key", c.Key},
		{"redis-server-name", c.ServerName}, {"redis-password-file", c.PasswordFile},
		{"redis-sentinel-password-file", c.SentinelPasswordFile}} {
		if f.v != "" {
			out = append(out, "--"+f.name, f.v)
		}
	}
	if c.WaitReplicas > 0 {
		out = append(out, "--redis-wait-replicas", strconv.Itoa(c.WaitReplicas), "--redis-wait-timeout", c.WaitTimeout.String())
	}
	return out
}

// check refuses flag combinations that cannot work, before anything connects.
func (c RedisConfig) check() error {
	tlsFlags := c.CA != "" || c.Cert != "" || c.Key != "" || c.ServerName != ""
	if c.URL == "" {
		if tlsFlags || c.PasswordFile != "" || c.SentinelPasswordFile != "" || c.WaitReplicas != 0 {
			return errors.New("the --redis-* flags need --redis")
		}
		return nil
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("--redis-cert and --redis-key go together")
	}
	if c.WaitReplicas < 0 || c.WaitTimeout <= 0 {
		return fmt.Errorf("--redis-wait-replicas must be 0 or more and --redis-wait-timeout positive, not %d and %s", c.WaitReplicas, c.WaitTimeout)
	}
	if tlsFlags && !strings.HasPrefix(c.URL, "rediss://") {
		return fmt.Errorf("--redis-ca, --redis-cert, --redis-key and --redis-server-name are for TLS: use a rediss:// URL, not %s", redisstore.RedactURL(c.URL))
	}
	if c.SentinelPasswordFile != "" && !strings.Contains(c.URL, "master_set=") {
		return errors.New("--redis-sentinel-password-file needs a Sentinel URL (with master_set=NAME)")
	}
	return nil
}

// options reads the files c names into redisstore.Options.
func (c RedisConfig) options(log *slog.Logger) (redisstore.Options, error) {
	opts := redisstore.Options{Logger: log, WaitReplicas: c.WaitReplicas, WaitTimeout: c.WaitTimeout}
	var err error
	if opts.Password, err = readSecret("--redis-password-file", c.PasswordFile); err != nil {
		return opts, err
	}
	if opts.SentinelPassword, err = readSecret("--redis-sentinel-password-file", c.SentinelPasswordFile); err != nil {
		return opts, err
	}
	if c.PasswordFile != "" && opts.Password == "" {
		return opts, fmt.Errorf("--redis-password-file %s is empty", c.PasswordFile)
	}
	if opts.Password != "" {
		if u, err := url.Parse(c.URL); err == nil && u.User != nil {
			if _, set := u.User.Password(); set {
				return opts, errors.New("the Redis URL has a password and --redis-password-file gives one too: keep one")
			}
		}
	}
	if c.CA == "" && c.Cert == "" && c.ServerName == "" {
		return opts, nil // a rediss:// URL alone: the system's roots
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return opts, fmt.Errorf("--redis-ca: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return opts, fmt.Errorf("--redis-ca %s: no PEM certificate in it", c.CA)
		}
	}
	if c.Cert != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return opts, fmt.Errorf("--redis-cert/--redis-key: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	opts.TLS = t
	return opts, nil
}

// readSecret reads a one-line secret file; "" when no file is named.
func readSecret(flag, file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// openRedis opens the Redis store, retrying while Redis cannot be used so a
// server started before its Redis (or before its ACL user or certificate is in
// place) comes up by itself. Each failed attempt is logged with its cause and
// given to waiting (when not nil).
func openRedis(ctx context.Context, c RedisConfig, cfg store.Config, log *slog.Logger, waiting func(error)) (store.Store, string, error) {
	opts, err := c.options(log)
	if err != nil {
		return nil, "", err
	}
	desc := "redis " + redisstore.RedactURL(c.URL)
	delay := 200 * time.Millisecond
	var last redisstore.Cause
	for {
		st, err := redisstore.Open(ctx, c.URL, cfg, opts)
		if err == nil {
			if last != redisstore.CauseNone {
				log.Info("redis is usable", "redis", redisstore.RedactURL(c.URL))
			}
			return st, desc, nil
		}
		if store.KindOf(err) != store.KindUnavailable || ctx.Err() != nil {
			return nil, "", err
		}
		last = redisstore.CauseOf(err)
		args := []any{"redis", redisstore.RedactURL(c.URL), "cause", string(last), "err", err}
		if raw := errors.Unwrap(err); raw != nil {
			args = append(args, "detail", raw.Error())
		}
		if hint := redisHints[last]; hint != "" {
			args = append(args, "hint", hint)
		}
		log.Warn("redis not usable; retrying", append(args, "in", delay)...)
		if waiting != nil {
			waiting(err)
		}
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// redisHints name the flags that fix each cause.
var redisHints = map[redisstore.Cause]string{
	redisstore.CauseTLS:        "--redis-ca names the CA that signed Redis' certificate; --redis-cert/--redis-key give a client certificate; --redis-server-name the name to verify",
	redisstore.CauseAuth:       "give the user in the URL (redis://user@host:port/0) and its password with --redis-password-file",
	redisstore.CausePermission: "docs/operations.md has the ACL line forge needs",
	redisstore.CauseDatabase:   "the database is the URL's path: /0",
	redisstore.CauseTopology:   "one node: redis://host:port/0; a cluster: add ?addr=host2:port; Sentinel: the sentinels and ?master_set=NAME",
}
