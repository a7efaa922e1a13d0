package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

const (
	identityFile = "identity.json"
	revokedFile  = "revoked.json"
	groupsFile   = "groups.json"
	lockFile     = "lock"
)

// identity is what the agent keeps in its state dir to stay the same agent
// across restarts. The token is a secret: the file is 0600 in a 0700 dir.
type identity struct {
	AgentID    string `json:"agent_id"`
	AgentToken string `json:"agent_token"`
	// SigningKeys are the server's task-signing public keys, learned at Register.
	SigningKeys []signingKey `json:"signing_keys,omitempty"`
}

// signingKey is one of the server's public keys for signed tasks.
type signingKey struct {
	ID        string `json:"id"`
	PublicKey []byte `json:"public_key"`
}

// groupRecord names a process tree started by an exec task. On Unix it is a
// process group: Start (the leader's start time in clock ticks since boot) and
// Boot (the kernel's boot id) let a later agent tell the group it recorded from
// an unrelated one that reuses the number. On Windows Pgid is the command's
// process id and Start its creation time, which together name its Job Object.
type groupRecord struct {
	Pgid  int    `json:"pgid"`
	Start uint64 `json:"start,omitempty"`
	Boot  string `json:"boot,omitempty"`
}

// stateDir is the agent's state directory, held exclusively while the agent runs.
type stateDir struct {
	dir  string
	log  *slog.Logger
	lock *os.File

	mu     sync.Mutex
	groups map[int]groupRecord
}

// openState creates dir (0700) if needed and takes its lock, so two agents never
// share one identity on one machine.
func openState(dir string, log *slog.Logger) (*stateDir, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: state dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: state dir: %w", err)
	}
	lock, err := lockDir(filepath.Join(dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("agent: state dir %s: %w", dir, err)
	}
	return &stateDir{dir: dir, log: log, lock: lock, groups: map[int]groupRecord{}}, nil
}

func (s *stateDir) close() {
	if s.lock != nil {
		s.lock.Close() // releases the lock
	}
}

// loadIdentity returns the saved identity, or a zero one when none was saved.
// A file that exists but cannot be read or parsed is an error, never a reason to
// enroll again: the operator must decide.
func (s *stateDir) loadIdentity() (identity, error) {
	var id identity
	b, err := os.ReadFile(filepath.Join(s.dir, identityFile))
	if errors.Is(err, fs.ErrNotExist) {
		return identity{}, nil
	}
	if err != nil {
		return identity{}, fmt.Errorf("agent: read identity: %w", err)
	}
	if err := json.Unmarshal(b, &id); err != nil || id.AgentID == "" || id.AgentToken == "" {
		return identity{}, fmt.Errorf("agent: %s is damaged; remove it to enroll again", filepath.Join(s.dir, identityFile))
	}
	return id, nil
}

func (s *stateDir) saveIdentity(id identity) error {
	b, err := json.Marshal(id)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.dir, identityFile), b); err != nil {
		return fmt.Errorf("agent: save identity: %w", err)
	}
	return nil
}

// revocation records that the server revoked the identity the state dir holds.
type revocation struct {
	AgentID string    `json:"agent_id"`
	At      time.Time `json:"at"`
}

// loadRevoked returns the recorded revocation, or a zero one when none is.
func (s *stateDir) loadRevoked() (revocation, error) {
	var r revocation
	b, err := os.ReadFile(filepath.Join(s.dir, revokedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return revocation{}, nil
	}
	if err != nil {
		return revocation{}, fmt.Errorf("agent: read revocation record: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil || r.AgentID == "" {
		// Damaged, but written only at a revocation: stay stopped.
		r.AgentID = "(unreadable record)"
	}
	return r, nil
}

// saveRevoked records that agentID was revoked.
func (s *stateDir) saveRevoked(agentID string) error {
	b, err := json.Marshal(revocation{AgentID: agentID, At: time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(s.dir, revokedFile), b)
}

// addGroup records a running process group.
func (s *stateDir) addGroup(pgid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.groups[pgid] = groupRecord{Pgid: pgid, Start: procStartTime(pgid), Boot: bootID()}
	s.saveGroupsLocked()
}

// removeGroup forgets a process group that has ended.
func (s *stateDir) removeGroup(pgid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.groups, pgid)
	s.saveGroupsLocked()
}

func (s *stateDir) saveGroupsLocked() {
	recs := make([]groupRecord, 0, len(s.groups))
	for _, r := range s.groups {
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Pgid < recs[j].Pgid })
	b, _ := json.Marshal(recs)
	if err := writeFileAtomic(filepath.Join(s.dir, groupsFile), b); err != nil {
		s.log.Warn("cannot record running process groups", "err", err)
	}
}

// endLeftovers kills the process groups a previous run of the agent recorded and
// did not see end (it was killed), and waits for them to be gone, so attempts never
// overlap on one machine.
func (s *stateDir) endLeftovers() {
	b, err := os.ReadFile(filepath.Join(s.dir, groupsFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("cannot read recorded process groups", "err", err)
		}
		return
	}
	var recs []groupRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		s.log.Warn("recorded process groups are damaged; ignoring them", "err", err)
	}
	boot := bootID()
	for _, r := range recs {
		if r.Pgid <= 1 || (r.Boot != "" && r.Boot != boot) {
			continue // nonsense, or from before a reboot: long gone
		}
		if !ownGroup(r) {
			continue
		}
		s.log.Warn("ending a process "+treeKind+" left by a previous run of the agent", "id", r.Pgid)
		if !endRecorded(r) {
			s.log.Error("process "+treeKind+" still alive after being killed", "id", r.Pgid)
		}
	}
	s.mu.Lock()
	s.saveGroupsLocked()
	s.mu.Unlock()
}

// writeFileAtomic writes b to name (mode 0600) through a temporary file and a
// rename, so a crash leaves the old file or the new one, never a torn one.
func writeFileAtomic(name string, b []byte) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
