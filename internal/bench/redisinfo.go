package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// redisStat is what Redis says of the work it has done, from INFO
// commandstats and INFO cpu.
type redisStat struct {
	// Cmds counts every command run, those run inside scripts included, but
	// not the bench's own INFO, AUTH, HELLO and SELECT.
	Cmds int64
	// Scripts counts the script calls among them (EVALSHA, EVAL, FCALL: each
	// one round trip).
	Scripts int64
	// CPU is the Redis process's CPU time, user and system: commands, scripts,
	// networking, everything (INFO cpu). Unlike ScriptTime, a machine loaded by
	// other work does not inflate it.
	CPU time.Duration
	// ScriptTime is the time spent inside script calls, the commands they run
	// included (INFO commandstats usec of EVALSHA, EVAL, FCALL): wall time
	// inside Redis, which grows when Redis waits for a core.
	ScriptTime time.Duration
	// Mem is the memory Redis holds for data (used_memory).
	Mem int64
}

func (a redisStat) sub(b redisStat) redisStat {
	return redisStat{Cmds: a.Cmds - b.Cmds, Scripts: a.Scripts - b.Scripts, CPU: a.CPU - b.CPU, ScriptTime: a.ScriptTime - b.ScriptTime, Mem: a.Mem - b.Mem}
}

func (a redisStat) add(b redisStat) redisStat {
	return redisStat{Cmds: a.Cmds + b.Cmds, Scripts: a.Scripts + b.Scripts, CPU: a.CPU + b.CPU, ScriptTime: a.ScriptTime + b.ScriptTime, Mem: a.Mem + b.Mem}
}

// redisCalls returns the commands and script calls Redis has run (redisStat).
func (r *runner) redisCalls(ctx context.Context) (total, scripts int64, err error) {
	st, err := r.redisStats(ctx)
	return st.Cmds, st.Scripts, err
}

// redisStats reads the stats of the in-process servers' Redis.
func (r *runner) redisStats(ctx context.Context) (redisStat, error) {
	if r.cfg.RedisURL == "" {
		return redisStat{}, errors.New("no Redis")
	}
	u, err := url.Parse(r.cfg.RedisURL)
	if err != nil {
		return redisStat{}, err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "6379")
	}
	user := u.User.Username()
	pw, _ := u.User.Password()
	return redisStatsAt(ctx, host, user, pw)
}

// redisStatsAt reads the stats of the Redis node at host. It speaks RESP
// itself so the bench needs no Redis client.
func redisStatsAt(ctx context.Context, host, user, pw string) (redisStat, error) {
	var st redisStat
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return st, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	if pw != "" {
		args := []string{"AUTH", pw}
		if user != "" {
			args = []string{"AUTH", user, pw}
		}
		if _, err := respDo(conn, br, args...); err != nil {
			return st, err
		}
	}
	info, err := respDo(conn, br, "INFO", "commandstats", "cpu", "memory")
	if err != nil {
		return st, err
	}
	var cpu float64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch name {
		case "used_cpu_sys", "used_cpu_user":
			v, _ := strconv.ParseFloat(rest, 64)
			cpu += v
			continue
		case "used_memory":
			st.Mem, _ = strconv.ParseInt(rest, 10, 64)
			continue
		}
		cmd, ok := strings.CutPrefix(name, "cmdstat_")
		if !ok {
			continue
		}
		switch cmd {
		case "info", "auth", "hello", "select":
			continue
		}
		script := false
		switch cmd {
		case "evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro":
			script = true
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				st.Cmds += n
				if script {
					st.Scripts += n
				}
			}
			if v, ok := strings.CutPrefix(kv, "usec="); ok && script {
				n, _ := strconv.ParseInt(v, 10, 64)
				st.ScriptTime += time.Duration(n) * time.Microsecond
			}
		}
	}
	st.CPU = time.Duration(cpu * float64(time.Second))
	return st, nil
}

// respDo sends one command and reads a simple or bulk string answer.
func respDo(w io.Writer, br *bufio.Reader, args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return "", err
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "-"):
		return "", errors.New("redis: " + line[1:])
	case strings.HasPrefix(line, ":"):
		return line[1:], nil
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("redis: bad answer %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redis: unexpected answer %q", line)
}

// redisUsage returns what Redis holds: used_memory (INFO memory) and its key
// count (DBSIZE). Only a URL naming one node is measured (a cluster's other
// nodes would be missed): err otherwise.
func (r *runner) redisUsage(ctx context.Context) (bytes, keys int64, err error) {
	if r.cfg.RedisURL == "" {
		return 0, 0, errors.New("no Redis")
	}
	u, err := url.Parse(r.cfg.RedisURL)
	if err != nil {
		return 0, 0, err
	}
	if u.Query().Has("addr") || u.Query().Has("master_set") {
		return 0, 0, errors.New("not one node")
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "6379")
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	if pw, ok := u.User.Password(); ok {
		args := []string{"AUTH", pw}
		if name := u.User.Username(); name != "" {
			args = []string{"AUTH", name, pw}
		}
		if _, err := respDo(conn, br, args...); err != nil {
			return 0, 0, err
		}
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" && db != "0" {
		if _, err := respDo(conn, br, "SELECT", db); err != nil {
			return 0, 0, err
		}
	}
	info, err := respDo(conn, br, "INFO", "memory")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			bytes, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	n, err := respDo(conn, br, "DBSIZE")
	if err != nil {
		return 0, 0, err
	}
	keys, _ = strconv.ParseInt(n, 10, 64)
	return bytes, keys, nil
}

// retainedNote measures what the tasks finished since (b0, k0) cost Redis
// each, for a scenario's note and values; nothing when Redis cannot be
// measured. what names a task of the scenario's shape: a single-agent job
// (its job record counted with it) or a fan-out task.
func (r *runner) retainedNote(ctx context.Context, row *Result, b0, k0 int64, tasks int, what string) {
	b1, k1, err := r.redisUsage(ctx)
	if err != nil || tasks <= 0 || b0 == 0 {
		return
	}
	per, keys := float64(b1-b0)/float64(tasks), float64(k1-k0)/float64(tasks)
	row.Values["redis_bytes_per_task"], row.Values["redis_keys_per_task"] = per, keys
	note := fmt.Sprintf("Redis holds %.0f bytes and %.2f keys per finished %s (INFO used_memory and DBSIZE over %d tasks)", per, keys, what, tasks)
	if row.Note != "" {
		note = row.Note + "; " + note
	}
	row.Note = note
}
