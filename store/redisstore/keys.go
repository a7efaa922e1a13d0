package redisstore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
)

// NumShards is how many shards agents are spread over. Every key of an agent —
// its record, queue, running set, undelivered cancels, task list, and the records
// of its tasks — carries its shard's hash tag, so one Lua script can act on all
// of them in one Redis Cluster slot. Each shard also holds a sorted set of due
// times (lease expiry, execution deadline, delivery TTL, retention), which is what
// Reap reads: it never scans every agent.
//
// 64 balances three costs: it is enough slots to spread a fleet evenly over any
// realistic cluster (a shard is one slot, so at most 64 masters share the agent
// load, and 3–16 masters each get several); Reap reads each shard's due index each
// pass (one pipelined read per shard; a script only where something is due), and every process holds one sharded subscription per shard, so both stay
// at 64 — pipelined, a handful of round trips. The count is part of the data
// layout: changing it moves every agent to another slot, so it is a constant.
const NumShards = 64

// keys builds every Redis key the store uses, from one prefix (default "forge").
//
// Per shard (hash tag {P:sNN}):
//
//	{P:sNN}:a:<agent>    hash   agent record: labels, token hashes, last seen, poll generation
//	{P:sNN}:q:<agent>    zset   ready queue; score 0, so members sort by task id = age
//	{P:sNN}:r:<agent>    zset   running (leased) tasks
//	{P:sNN}:c:<agent>    zset   running tasks whose cancel Lease has not yet delivered
//	{P:sNN}:at:<agent>   zset   every retained task of the agent (ListTasks by agent)
//	{P:sNN}:t:<task>     hash   task record, history included, and what is kept
//	                            of its output (o* fields, see decodeOutput)
//	{P:sNN}:oh:<task>    list   the head of the task's kept output: pieces, each
//	                            a stream digit (1 stdout, 2 stderr) and its bytes
//	{P:sNN}:ot:<task>    list   the tail of the task's kept output, same pieces;
//	                            both lists expire and go with the task record
//	{P:sNN}:due          zset   task id -> next time Reap must look at it (ms);
//	                            also agent ids (agent retention) and "fin": the
//	                            time the oldest finished task passes the retention
//	{P:sNN}:fin          stream finished tasks (field t: the task id) in the
//	                            order they finished, ids from the finish time:
//	                            Reap drops them after the retention, an export
//	                            reads them
//	{P:sNN}:xp           string the id of the last entry of fin an export has
//	                            written to its sink (0-0: none yet; expires
//	                            store.ExportHold after the export last ran)
//	{P:sNN}:jfc          string the id of the last entry of fin the count of
//	                            jobs kept has read (keepjobs.go)
//	{P:sNN}:tasks        zset   every retained task of the shard (ListTasks)
//	{P:sNN}:st:<n>       zset   tasks of the shard in state n (ListTasks by state)
//	{P:sNN}:jc:<job>     hash   a fan-out's tasks in this shard counted by state,
//	                            and in all (n): GetJob sums at most 64 of these
//	                            instead of reading every task (a single-agent job
//	                            keeps none: its task's state is its counts)
//	{P:sNN}:on           zset   agents neither stopped nor revoked -> time of their
//	                            last call (ms): Stats counts the online ones
//	{P:sNN}:rv           set    revoked agents (Stats)
//	{P:sNN}:n            hash   the shard's counters: lx, leases that ran out (Stats)
//	{P:sNN}:wake         channel (sharded pub/sub) of watch keys that changed
//	{P:sNN}:guard        never written: every shard script declares it, so none
//	                     runs while the shard's slot moves (see guardSuffix)
//
// Per job (hash tag {P:j:<job>}): the job record, a hash.
// Per idempotency key (hash tag {P:i:<sha256 of key>}): a string naming the job.
//
// Global (hash tag {P}): the agent list, the job list, rollout jobs for the
// advancer, the job retention index, finished jobs in the order they finished
// (jfin) and the newest job their count dropped (jcut), and enrollment tokens. Each is written after
// the record it indexes, so a crash between the two leaves an unlisted record,
// never a listed one that does not exist.
type keys struct {
	prefix string
	shard  [NumShards]string // hash tags, precomputed
}

func newKeys(prefix string) *keys {
	k := &keys{prefix: prefix}
	for i := range k.shard {
		k.shard[i] = fmt.Sprintf("{%s:s%02d}", prefix, i)
	}
	return k
}

// shardOf returns the shard of an agent: FNV-1a of its id. Agent ids are random,
// so shards fill evenly.
func shardOf(agentID string) int {
	h := fnv.New32a()
	h.Write([]byte(agentID))
	return int(h.Sum32() % NumShards)
}

// tag returns the hash tag of an agent's shard.
func (k *keys) tag(agentID string) string { return k.shard[shardOf(agentID)] }

func (k *keys) agent(id string) string   { return k.tag(id) + ":a:" + id }
func (k *keys) queue(id string) string   { return k.tag(id) + ":q:" + id }
func (k *keys) running(id string) string { return k.tag(id) + ":r:" + id }
func (k *keys) cancels(id string) string { return k.tag(id) + ":c:" + id }
func (k *keys) agentTasks(id string) string {
	return k.tag(id) + ":at:" + id
}

// task returns the key of a task's record; agentID is the agent its id names.
func (k *keys) task(agentID, taskID string) string { return k.tag(agentID) + ":t:" + taskID }

// outHead and outTail return the keys of a task's kept output (store/output.go).
func (k *keys) outHead(agentID, taskID string) string { return k.tag(agentID) + ":oh:" + taskID }
func (k *keys) outTail(agentID, taskID string) string { return k.tag(agentID) + ":ot:" + taskID }

func (k *keys) due(shard int) string            { return k.shard[shard] + ":due" }
func (k *keys) shardTasks(shard int) string     { return k.shard[shard] + ":tasks" }
func (k *keys) stateIndex(shard, st int) string { return fmt.Sprintf("%s:st:%d", k.shard[shard], st) }
func (k *keys) wake(shard int) string           { return k.shard[shard] + ":wake" }
func (k *keys) online(shard int) string         { return k.shard[shard] + ":on" }
func (k *keys) revoked(shard int) string        { return k.shard[shard] + ":rv" }
func (k *keys) counters(shard int) string       { return k.shard[shard] + ":n" }
func (k *keys) finished(shard int) string       { return k.shard[shard] + ":fin" }
func (k *keys) exported(shard int) string       { return k.shard[shard] + ":xp" }
func (k *keys) jobsRead(shard int) string       { return k.shard[shard] + ":jfc" }
func (k *keys) jobCounts(shard int, job string) string {
	return k.shard[shard] + ":jc:" + job
}

func (k *keys) job(id string) string { return "{" + k.prefix + ":j:" + id + "}" }

func (k *keys) idem(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "{" + k.prefix + ":i:" + hex.EncodeToString(sum[:16]) + "}"
}

// enrollReplay names the agent a registration with request key key made
// (store.RegisterParams.RequestKey; already a hash), for its replay window.
func (k *keys) enrollReplay(key string) string { return "{" + k.prefix + ":er:" + key + "}" }

func (k *keys) global() string { return "{" + k.prefix + "}" }

// agents lists every agent id (score 0, ordered by id).
func (k *keys) agents() string { return k.global() + ":agents" }

// jobs lists every retained job id (score 0, ordered by id, so by creation).
func (k *keys) jobs() string { return k.global() + ":jobs" }

// jobsRetain scores each job id with the time (ms) at which Reap should see
// whether it can be dropped.
func (k *keys) jobsRetain() string { return k.global() + ":jret" }

// jobsFinished scores each finished job id with the time (ms) it finished,
// for the count of jobs kept (Config.KeepJobs; only then).
func (k *keys) jobsFinished() string { return k.global() + ":jfin" }

// jobsCut holds one member, scored with the newest creation time (µs) of a
// job the count of jobs kept dropped (store.Dropped.JobsUpTo).
func (k *keys) jobsCut() string { return k.global() + ":jcut" }

// jobsAdvance scores each live job with rollout limits with the time (ms) at which
// Reap's advancer should look at it again, so a crash between a task's end and
// its job's next step delays the job but never strands it.
func (k *keys) jobsAdvance() string { return k.global() + ":jadv" }

// exportOwner names the replica that exports now (export.go).
func (k *keys) exportOwner() string { return k.global() + ":xown" }

func (k *keys) enrollments() string         { return k.global() + ":enrolls" }
func (k *keys) enrollment(id string) string { return k.global() + ":e:" + id }
