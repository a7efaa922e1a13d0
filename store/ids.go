package store

import (
	"crypto/rand"
	"strings"
	"sync/atomic"
	"time"
)

// IDAlphabet is what ids and token secrets are written in: a lowercase base32
// alphabet without look-alike letters, so they are safe in URLs, Redis keys and
// tokens (they never contain '_' or '-'). A character's place in it is its value
// (CreatedAt).
const IDAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// SecretLen is the length of a token secret: 32 random characters, 160 bits.
const SecretLen = 32

// NewSecret returns a new random token secret of SecretLen characters.
func NewSecret() string { return randomChars(SecretLen) }

// NewEnrollmentTokenID returns a new random id for a stored enrollment token: "e"
// and 11 random characters.
func NewEnrollmentTokenID() string { return "e" + randomChars(11) }

// AgentIDLen is the length of an agent id: "a" and 15 random characters (75 bits).
const AgentIDLen = 16

// NewAgentID returns a new random agent id.
func NewAgentID() string { return "a" + randomChars(AgentIDLen-1) }

// JobIDLen is the length of a job id: "j", 11 time characters and 4 random ones.
const JobIDLen = 16

// NewJobID returns a new job id; ids made later sort after earlier ones.
func NewJobID() string { return "j" + timeChars() + randomChars(JobIDLen-12) }

// ValidJobID tells whether s has the shape of an id NewJobID makes: what a
// Dispatch given its job id (JobSpec.ID) accepts.
func ValidJobID(s string) bool { return len(s) == JobIDLen && ValidID(s, 'j') }

// NewTaskID returns a new id for a task of the given agent. The id ends with the
// agent's id, so any replica can find the task's agent (and its Redis slot) from
// the id alone; ids made later sort after earlier ones.
func NewTaskID(agentID string) string { return "t" + timeChars() + randomChars(4) + "-" + agentID }

// AgentOfTask returns the agent id embedded in a task id, or false if the id is
// not a well-formed task id.
func AgentOfTask(taskID string) (string, bool) {
	i := strings.IndexByte(taskID, '-')
	if i < 0 || len(taskID) < 2 || taskID[0] != 't' {
		return "", false
	}
	a := taskID[i+1:]
	return a, ValidID(a, 'a')
}

// ValidID tells whether s looks like an id with the given leading letter: the
// letter followed by characters of the id alphabet, 8 to 64 in all.
func ValidID(s string, lead byte) bool {
	if len(s) < 8 || len(s) > 64 || s[0] != lead {
		return false
	}
	for i := 1; i < len(s); i++ {
		if strings.IndexByte(IDAlphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// ValidTaskID tells whether s is a well-formed task id.
func ValidTaskID(s string) bool {
	if len(s) > 128 {
		return false
	}
	i := strings.IndexByte(s, '-')
	if i < 0 {
		return false
	}
	_, ok := AgentOfTask(s)
	return ok && ValidID(s[:i], 't')
}

func randomChars(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	for i := range b {
		b[i] = IDAlphabet[b[i]&31]
	}
	return string(b)
}

var lastMicro atomic.Int64

// timeChars encodes the current time in microseconds as 11 base32 characters (55
// bits, good for a millennium). Within a process every call returns a larger value
// than the one before, so ids sort in the order they were made.
func timeChars() string {
	now := time.Now().UnixMicro()
	for {
		last := lastMicro.Load()
		if now <= last {
			now = last + 1
		}
		if lastMicro.CompareAndSwap(last, now) {
			break
		}
	}
	var b [11]byte
	for i := 10; i >= 0; i-- {
		b[i] = IDAlphabet[now&31]
		now >>= 5
	}
	return string(b[:])
}

// CreatedAt returns when a task or job id was made (to the microsecond), from
// its time characters, or false when the id has none.
func CreatedAt(id string) (time.Time, bool) {
	if len(id) < 12 || (id[0] != 't' && id[0] != 'j') {
		return time.Time{}, false
	}
	var us int64
	for i := 1; i <= 11; i++ {
		c := strings.IndexByte(IDAlphabet, id[i])
		if c < 0 {
			return time.Time{}, false
		}
		us = us<<5 | int64(c)
	}
	return time.UnixMicro(us), true
}
