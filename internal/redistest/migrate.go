package redistest

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// MigrateOptions tune MigrateSlot.
type MigrateOptions struct {
	// Batch is how many keys one MIGRATE moves; 0 means 100.
	Batch int
	// Pause is how long to wait between batches, so that clients meet the slot
	// half moved (some keys on each node) for a while; 0 means no wait.
	Pause time.Duration
}

// MigrateSlot moves a hash slot to the master to while clients may use it, the
// way redis-cli --cluster reshard does: the target marks the slot IMPORTING, the
// source MIGRATING, the keys move in batches (MIGRATE … KEYS), and then every
// master is told the slot's new owner (CLUSTER SETSLOT … NODE). Meanwhile a
// command for a key already moved is answered ASK by the source, and a command
// over several keys split between the nodes TRYAGAIN. Moving a slot to its own
// master does nothing.
func (cl *Cluster) MigrateSlot(slot int, to *Server, o MigrateOptions) error {
	if o.Batch <= 0 {
		o.Batch = 100
	}
	from, err := cl.MasterOf(slot)
	if err != nil {
		return err
	}
	if from == to {
		return nil
	}
	fromID, err := from.Do("CLUSTER", "MYID")
	if err != nil {
		return fmt.Errorf("redistest: migrate slot %d: %w", slot, err)
	}
	toID, err := to.Do("CLUSTER", "MYID")
	if err != nil {
		return fmt.Errorf("redistest: migrate slot %d: %w", slot, err)
	}
	sl := strconv.Itoa(slot)
	if _, err := to.Do("CLUSTER", "SETSLOT", sl, "IMPORTING", fromID); err != nil {
		return fmt.Errorf("redistest: migrate slot %d: importing on %s: %w", slot, to.Addr(), err)
	}
	if _, err := from.Do("CLUSTER", "SETSLOT", sl, "MIGRATING", toID); err != nil {
		return fmt.Errorf("redistest: migrate slot %d: migrating on %s: %w", slot, from.Addr(), err)
	}
	moved := 0
	for {
		keys, err := from.doList("CLUSTER", "GETKEYSINSLOT", sl, strconv.Itoa(o.Batch))
		if err != nil {
			return fmt.Errorf("redistest: migrate slot %d: %w", slot, err)
		}
		if len(keys) == 0 {
			break
		}
		args := append([]string{"MIGRATE", "127.0.0.1", strconv.Itoa(to.port), "", "0", "10000", "KEYS"}, keys...)
		if _, err := from.Do(args...); err != nil {
			return fmt.Errorf("redistest: migrate slot %d: MIGRATE of %d keys: %w", slot, len(keys), err)
		}
		moved += len(keys)
		if o.Pause > 0 {
			time.Sleep(o.Pause)
		}
	}
	// The target first, so the slot is never owned by nobody; then the source,
	// then the rest, which would otherwise learn it by gossip.
	if _, err := to.Do("CLUSTER", "SETSLOT", sl, "NODE", toID); err != nil {
		return fmt.Errorf("redistest: migrate slot %d: node on %s: %w", slot, to.Addr(), err)
	}
	if _, err := from.Do("CLUSTER", "SETSLOT", sl, "NODE", toID); err != nil {
		return fmt.Errorf("redistest: migrate slot %d: node on %s: %w", slot, from.Addr(), err)
	}
	masters, err := cl.Masters()
	if err != nil {
		return err
	}
	for _, m := range masters {
		if m != to && m != from {
			m.Do("CLUSTER", "SETSLOT", sl, "NODE", toID) // gossip gets there anyway
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !cl.agree() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: nodes do not agree on slot %d after moving %d keys:\n%s", ErrTimeout, slot, moved, cl.describe())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// doList sends one command whose answer is a flat array of strings and returns
// them (Do joins them with newlines, which a key may contain).
func (s *Server) doList(args ...string) ([]string, error) {
	conn, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "-") {
		return nil, fmt.Errorf("%s", line[1:])
	}
	if !strings.HasPrefix(line, "*") {
		return nil, fmt.Errorf("redistest: %s: want an array, got %q", args[0], line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, max(n, 0))
	for i := 0; i < n; i++ {
		v, err := readReply(r)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// DoAsking is Do preceded by ASKING on the same connection: how a client sends a
// command to the node an ASK redirection named, for a slot being imported there.
func (s *Server) DoAsking(args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	b.WriteString("*1\r\n$6\r\nASKING\r\n")
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	if _, err := readReply(r); err != nil {
		return "", err
	}
	return readReply(r)
}
