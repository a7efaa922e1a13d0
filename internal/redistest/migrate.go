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
	m, err := cl.StartMigration(slot, to)
	if err != nil || m == nil {
		return err
	}
	for {
		keys, err := m.Keys(o.Batch)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			break
		}
		if err := m.Move(keys...); err != nil {
			return err
		}
		if o.Pause > 0 {
			time.Sleep(o.Pause)
		}
	}
	return m.Finish()
}

// Migration is a slot on its way from one master to another, for a test that
// moves keys one by one (MigrateSlot does it all).
type Migration struct {
	cl           *Cluster
	slot         int
	from, to     *Server
	fromID, toID string
	moved        int
}

// StartMigration marks slot IMPORTING on to and MIGRATING on its master; Move
// then moves keys and Finish completes the move. It returns nil (and no error)
// when to already serves the slot.
func (cl *Cluster) StartMigration(slot int, to *Server) (*Migration, error) {
	from, err := cl.MasterOf(slot)
	if err != nil {
		return nil, err
	}
	if from == to {
		return nil, nil
	}
	m := &Migration{cl: cl, slot: slot, from: from, to: to}
	if m.fromID, err = from.Do("CLUSTER", "MYID"); err != nil {
		return nil, fmt.Errorf("redistest: migrate slot %d: %w", slot, err)
	}
	if m.toID, err = to.Do("CLUSTER", "MYID"); err != nil {
		return nil, fmt.Errorf("redistest: migrate slot %d: %w", slot, err)
	}
	sl := strconv.Itoa(slot)
	if _, err := to.Do("CLUSTER", "SETSLOT", sl, "IMPORTING", m.fromID); err != nil {
		return nil, fmt.Errorf("redistest: migrate slot %d: importing on %s: %w", slot, to.Addr(), err)
	}
	if _, err := from.Do("CLUSTER", "SETSLOT", sl, "MIGRATING", m.toID); err != nil {
		return nil, fmt.Errorf("redistest: migrate slot %d: migrating on %s: %w", slot, from.Addr(), err)
	}
	return m, nil
}

// Keys returns up to n keys of the slot still on the source.
func (m *Migration) Keys(n int) ([]string, error) {
	keys, err := m.from.doList("CLUSTER", "GETKEYSINSLOT", strconv.Itoa(m.slot), strconv.Itoa(n))
	if err != nil {
		return nil, fmt.Errorf("redistest: migrate slot %d: %w", m.slot, err)
	}
	return keys, nil
}

// Move moves keys of the slot from the source to the target (MIGRATE … KEYS).
func (m *Migration) Move(keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	args := append([]string{"MIGRATE", "127.0.0.1", strconv.Itoa(m.to.port), "", "0", "10000", "KEYS"}, keys...)
	if _, err := m.from.Do(args...); err != nil {
		return fmt.Errorf("redistest: migrate slot %d: MIGRATE of %d keys: %w", m.slot, len(keys), err)
	}
	m.moved += len(keys)
	return nil
}

// Finish moves the keys left and tells every master the slot's new owner, then
// waits until all nodes agree.
func (m *Migration) Finish() error {
	for {
		keys, err := m.Keys(100)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			break
		}
		if err := m.Move(keys...); err != nil {
			return err
		}
	}
	sl := strconv.Itoa(m.slot)
	// The target first, so the slot is never owned by nobody; then the source,
	// then the rest, which would otherwise learn it by gossip.
	if _, err := m.to.Do("CLUSTER", "SETSLOT", sl, "NODE", m.toID); err != nil {
		return fmt.Errorf("redistest: migrate slot %d: node on %s: %w", m.slot, m.to.Addr(), err)
	}
	if _, err := m.from.Do("CLUSTER", "SETSLOT", sl, "NODE", m.toID); err != nil {
		return fmt.Errorf("redistest: migrate slot %d: node on %s: %w", m.slot, m.from.Addr(), err)
	}
	masters, err := m.cl.Masters()
	if err != nil {
		return err
	}
	for _, s := range masters {
		if s != m.to && s != m.from {
			s.Do("CLUSTER", "SETSLOT", sl, "NODE", m.toID) // gossip gets there anyway
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !m.cl.agree() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: nodes do not agree on slot %d after moving %d keys:\n%s", ErrTimeout, m.slot, m.moved, m.cl.describe())
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
