package redisstore

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// pairs reads a flat field, value array (HGETALL inside a script) into a map.
func pairs(m rueidis.RedisMessage) map[string]string {
	arr, err := m.ToArray()
	if err != nil {
		if mm, err := m.AsStrMap(); err == nil {
			return mm
		}
		return nil
	}
	out := make(map[string]string, len(arr)/2)
	for i := 0; i+1 < len(arr); i += 2 {
		k, _ := arr[i].ToString()
		v, _ := arr[i+1].ToString()
		out[k] = v
	}
	return out
}

// msgInt reads an integer reply or a decimal string.
func msgInt(m rueidis.RedisMessage) int64 {
	if n, err := m.ToInt64(); err == nil {
		return n
	}
	n, _ := m.AsInt64()
	return n
}

func msgStr(m rueidis.RedisMessage) string {
	s, _ := m.ToString()
	return s
}

func msgStrs(m rueidis.RedisMessage) []string {
	arr, _ := m.ToArray()
	out := make([]string, len(arr))
	for i, x := range arr {
		if s, err := x.ToString(); err == nil {
			out[i] = s
		} else {
			out[i] = strconv.FormatInt(msgInt(x), 10)
		}
	}
	return out
}

// refs reads a flat task id, attempt array.
func refs(m rueidis.RedisMessage) []store.TaskRef {
	s := msgStrs(m)
	var out []store.TaskRef
	for i := 0; i+1 < len(s); i += 2 {
		n, _ := strconv.ParseInt(s[i+1], 10, 32)
		out = append(out, store.TaskRef{TaskID: s[i], Attempt: int32(n)})
	}
	return out
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func msTime(s string) time.Time {
	n := atoi(s)
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

func msDur(s string) time.Duration { return time.Duration(atoi(s)) * time.Millisecond }

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

func itoa[T ~int | ~int32 | ~int64](n T) string { return strconv.FormatInt(int64(n), 10) }

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

type histEntry struct {
	S  int32  `json:"s"`
	At int64  `json:"at"`
	A  int32  `json:"a"`
	R  string `json:"r"`
}

// decodeTask builds a Task from its record. Fields of the record:
//
//	job type pl      job id, task type, payload
//	js cj            the job's signature (a single-agent job's); the payload and
//	                 the signature are in the job record (a fan-out's: fillContent)
//	st att max       state, current attempt, max attempts
//	to ttl           execution timeout and delivery TTL (ms)
//	lim              the job has rollout limits (the advancer must look after an end)
//	held             held back by the job's max_concurrency
//	cr crr cd tmo    cancel requested, its reason, delivered by a Lease, timed out
//	dl le db         deadline, lease expiry, deliver-by (ms)
//	otr osz ec err rep ro   the report: output cut by the agent, its full size,
//	                 exit code, error, reported, reported outcome
//	oa ob on o1 o2 ohb ohn otb otn   the kept output (see decodeOutput)
//	ca ua hist       created, updated (ms), history (JSON array)
//	h1 h2 ...        a finished task's history instead (decodeHist)
//	oi               a finished task's output, when one short piece, instead of
//	                 its head list (taskScript answers it as the head)
//	tor exr          the reasons to use when it times out or expires (exr for
//	                 records written before ttx; a record may lack it)
//	ttx              the delivery TTL as Go writes it, for deliveryExpiryEnd
func decodeTask(id string, f map[string]string) store.Task {
	agent, _ := store.AgentOfTask(id)
	t := store.Task{
		ID:              id,
		JobID:           f["job"],
		AgentID:         agent,
		Type:            f["type"],
		State:           store.TaskState(atoi(f["st"])),
		Attempt:         int32(atoi(f["att"])),
		MaxAttempts:     int32(atoi(f["max"])),
		Timeout:         msDur(f["to"]),
		DeliveryTTL:     msDur(f["ttl"]),
		Held:            f["held"] == "1",
		CancelRequested: f["cr"] == "1",
		CancelReason:    f["crr"],
		TimedOut:        f["tmo"] == "1",
		Deadline:        msTime(f["dl"]),
		LeaseExpiresAt:  msTime(f["le"]),
		DeliverBy:       msTime(f["db"]),
		ExitCode:        int32(atoi(f["ec"])),
		Error:           f["err"],
		CreatedAt:       msTime(f["ca"]),
		UpdatedAt:       msTime(f["ua"]),
	}
	if p, ok := f["pl"]; ok && p != "" {
		t.Payload = []byte(p)
	}
	t.OutputTruncated, t.OutputSize = store.OutputSummary(decodeOutput(f), f["otr"] == "1", atoi(f["osz"]))
	if o, ok := f["out"]; ok && o != "" {
		// A record written before output was kept as pieces.
		t.Output = []byte(o)
	}
	var h []histEntry
	if json.Unmarshal([]byte(f["hist"]), &h) == nil {
		for _, e := range h {
			t.History = append(t.History, store.StateChange{State: store.TaskState(e.S), At: time.UnixMilli(e.At), Reason: e.R, Attempt: e.A})
		}
	}
	ca := atoi(f["ca"])
	for i := 1; ; i++ {
		e, ok := f["h"+strconv.Itoa(i)]
		if !ok {
			break
		}
		t.History = append(t.History, decodeHist(e, ca))
		t.UpdatedAt = t.History[len(t.History)-1].At // compacted: its last change
	}
	if f["cj"] != "1" {
		// A single-agent job's task keeps its job's signature; its target is its agent.
		t.JobSig = decodeJobSig(f["js"])
		t.Target = store.Target{AgentID: agent}
	}
	return t
}

// decodeHist reads one state change of a finished task's compacted record
// (compact in scripts.go): state, ms after creation ca, attempt and reason,
// separated by single spaces (the reason may hold spaces of its own).
func decodeHist(e string, ca int64) store.StateChange {
	parts := strings.SplitN(e, " ", 4)
	for len(parts) < 4 {
		parts = append(parts, "")
	}
	return store.StateChange{State: store.TaskState(atoi(parts[0])), At: time.UnixMilli(ca + atoi(parts[1])),
		Attempt: int32(atoi(parts[2])), Reason: parts[3]}
}

// decodeOutput reads what a task record says of its kept output (store.OutputMeta):
//
//	oa ob on      the attempt it belongs to, its base cursor, bytes received
//	o1 o2         bytes of stdout and stderr received (the next offsets)
//	ohb ohn       bytes and pieces in the head list (KEYS outHead)
//	otb otn       bytes and pieces in the tail list (KEYS outTail)
func decodeOutput(f map[string]string) store.OutputMeta {
	return store.OutputMeta{
		Attempt: int32(atoi(f["oa"])), Base: atoi(f["ob"]), Total: atoi(f["on"]),
		Stdout: atoi(f["o1"]), Stderr: atoi(f["o2"]),
		HeadBytes: atoi(f["ohb"]), HeadPieces: atoi(f["ohn"]),
		TailBytes: atoi(f["otb"]), TailPieces: atoi(f["otn"]),
	}
}

// outputFields are the record fields readOutputScript answers, in its order.
var outputFields = []string{"st", "oa", "ob", "on", "o1", "o2", "ohb", "ohn", "otb", "otn"}

// decodePieces reads output pieces: a stream digit, then the bytes.
func decodePieces(m rueidis.RedisMessage) []store.OutputChunk {
	arr, _ := m.ToArray()
	out := make([]store.OutputChunk, 0, len(arr))
	for _, x := range arr {
		p, err := x.ToString()
		if err != nil || p == "" {
			continue
		}
		out = append(out, store.OutputChunk{Stream: store.Stream(p[0] - '0'), Data: []byte(p[1:])})
	}
	return out
}

// decodeAgent builds an Agent from its record (without status, running, pending).
// Fields: name host ver labels types (JSON) reg seen rev rr (ms, reason) cur next
// (token hashes) gen pu (poll generation, poll held until) dr (draining) so (stopped:
// its last call was a stopping Heartbeat) ra.
func decodeAgent(id string, f map[string]string) store.Agent {
	a := store.Agent{
		ID:           id,
		Name:         f["name"],
		Hostname:     f["host"],
		Version:      f["ver"],
		RegisteredAt: msTime(f["reg"]),
		LastSeenAt:   msTime(f["seen"]),
		RevokedAt:    msTime(f["rev"]),
	}
	// Both fields are JSON this package wrote from a map and a slice: they
	// cannot fail to decode unless the record was written by something else,
	// and then the agent shows none rather than failing every list it is in.
	if l := f["labels"]; l != "" && l != "null" {
		_ = json.Unmarshal([]byte(l), &a.Labels)
	}
	if ty := f["types"]; ty != "" && ty != "null" {
		_ = json.Unmarshal([]byte(ty), &a.TaskTypes)
	}
	return a
}

// status is store.StatusAt of an agent record's fields (times in ms).
func (s *Store) status(revoked, stopped bool, seen, pollUntil, now int64) store.AgentStatus {
	return store.StatusAt(revoked, stopped, time.UnixMilli(seen), time.UnixMilli(pollUntil), time.UnixMilli(now), s.cfg.OnlineWindow)
}

func splitIDs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, " ")
}
