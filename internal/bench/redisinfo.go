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

// redisCalls returns the number of commands Redis has run, from INFO
// commandstats, leaving out the bench's own INFO, AUTH, HELLO and SELECT, and
// how many of them were script calls (EVALSHA, EVAL, FCALL: each one round
// trip, whose inner commands count in total too). It speaks RESP itself so the
// bench needs no Redis client.
func (r *runner) redisCalls(ctx context.Context) (total, scripts int64, err error) {
	if r.cfg.RedisURL == "" {
		return 0, 0, errors.New("no Redis")
	}
	u, err := url.Parse(r.cfg.RedisURL)
	if err != nil {
		return 0, 0, err
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
	info, err := respDo(conn, br, "INFO", "commandstats")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		cmd := strings.TrimPrefix(name, "cmdstat_")
		switch cmd {
		case "info", "auth", "hello", "select":
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				total += n
				switch cmd {
				case "evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro":
					scripts += n
				}
			}
		}
	}
	return total, scripts, nil
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
