package redisstore

import (
	"context"
	"strings"
)

// A full Redis (maxmemory reached, maxmemory-policy noeviction) refuses every
// command that may add data, and a script whose first such command it refuses
// writes nothing, so a refused call is never half done. forge answers those
// refusals resource_exhausted (store.MsgStoreFull): a retry cannot help until
// memory is freed. What must go on while Redis is full runs anyway, flagged
// allow-oom: agents poll, heartbeat, hand back and report what they hold,
// cancels and revocations end tasks, and Reap moves tasks on and drops what
// retention lets go — which is what frees memory. What adds new work is
// refused: Dispatch, Register, new live output (the agent sends it again
// later, or with its report).

// oomShebang flags a script allowed to run, and write, while Redis is full (as
// a function of the library, the flag allow-oom: functions.go).
const oomShebang = "#!lua flags=allow-oom\n"

// whileFull are the scripts that run while Redis is full.
var whileFull = []*script{
	authScript, rotateScript, leaseScript, heartbeatScript, returnScript, reportScript,
	releaseScript, cancelScript, revokeScript, agentViewScript, reapScript,
	jobCommitScript, jobAbandonScript, jobStepScript, jobCancelScript, exportClaimScript, dropJobScript, delIfScript, enrollRevokeScript,
	dropJobTasksScript, jobsFinishedScript, oldestJobsScript, jobGoneScript, setScript,
}

// readOnly are the scripts that write nothing: scripts without flags run while
// Redis is full (their writes would be refused), and a function without flags
// does not, so as functions they are flagged no-writes.
var readOnly = []*script{taskScript, readOutputScript}

func init() {
	for _, sc := range readOnly {
		sc.ro = true
	}
	for _, sc := range whileFull {
		sc.oom = true
		sc.setText(oomShebang + sc.text)
	}
}

// checkEviction warns when a Redis node may evict keys: any maxmemory-policy
// but noeviction lets Redis drop forge's keys when it is full, and a pending
// task, an agent or a token would vanish without a trace. A node that does not
// let forge read its configuration (CONFIG GET refused by an ACL, or renamed by
// a managed service) is passed over with a debug line.
func (s *Store) checkEviction(ctx context.Context) {
	for addr, node := range s.client.Nodes() {
		m, err := node.Do(ctx, node.B().ConfigGet().Parameter("maxmemory-policy").Build()).AsStrMap()
		if err != nil {
			s.log.Debug("could not read redis maxmemory-policy", "node", addr, "err", err)
			continue
		}
		if p := m["maxmemory-policy"]; p != "" && !strings.EqualFold(p, "noeviction") {
			s.log.Warn("redis may evict forge's keys when it is full: pending tasks, agents and tokens would vanish; "+
				"set maxmemory-policy noeviction (see docs/operations.md)", "node", addr, "maxmemory-policy", p)
		}
	}
}
