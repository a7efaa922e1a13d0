// Package luaprelude writes the Lua prelude that every redisstore script starts
// with: package store's lifecycle constants and texts as Lua locals, and, as small
// named Lua functions, the rules a script must apply atomically inside Redis, each
// the twin of a Go function of package store (named in its comment).
//
// `go generate ./store/redisstore` writes Source to store/redisstore/prelude.lua,
// which redisstore embeds and commits. A test there fails when the file drifts
// from Source, and another runs every constant and rule of the prelude in a real
// Redis against its Go twin, so Go and Lua cannot disagree unnoticed.
package luaprelude

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/orange-forge/forge/store"
)

// CodeIDTaken is the error code registerScript answers when the agent id it was
// given is taken. It is no store.Kind: RegisterAgent retries with another id.
const CodeIDTaken = 100

// MsgIDTaken is the message that goes with CodeIDTaken, for the log.
const MsgIDTaken = "agent id taken"

// CodeTypeUnhandled is the error code createTasksScript answers when the single
// agent of a dispatch does not handle its type (store.HandlesType); the message
// is the agent's task types as JSON, from which Go makes the error
// (store.CheckTaskType). It is no store.Kind.
const CodeTypeUnhandled = 101

// A constant is one Lua local and its value: a number or a string.
type constant struct {
	name  string
	value any
}

type group struct {
	doc    string
	consts []constant
}

func groups() []group {
	var states []constant
	for st := store.StatePending; st <= store.StateLost; st++ {
		states = append(states, constant{strings.ReplaceAll(st.String(), " ", "_"), int(st)})
	}
	return []group{
		{"Task states (store.TaskState).", states},
		{"Outcomes (store.Outcome).", []constant{
			{"OUTCOME_SUCCEEDED", int(store.OutcomeSucceeded)},
			{"OUTCOME_FAILED", int(store.OutcomeFailed)},
		}},
		{"Error codes scripts answer with, fail(E_*, msg): the store.Kind values, and\n-- E_ID_TAKEN and E_TYPE_UNHANDLED (luaprelude.CodeIDTaken, CodeTypeUnhandled), the\n-- Redis store's own.", []constant{
			{"E_NOT_FOUND", int(store.KindNotFound)},
			{"E_UNAUTHENTICATED", int(store.KindUnauthenticated)},
			{"E_PRECONDITION", int(store.KindPrecondition)},
			{"E_EXHAUSTED", int(store.KindExhausted)},
			{"E_INVALID", int(store.KindInvalid)},
			{"E_ID_TAKEN", CodeIDTaken},
			{"E_TYPE_UNHANDLED", CodeTypeUnhandled},
		}},
		{"Cancel modes and what they do (store.CancelMode, store.CancelAction).", []constant{
			{"CANCEL_MODE_TASK", int(store.CancelModeTask)},
			{"CANCEL_MODE_JOB", int(store.CancelModeJob)},
			{"CANCEL_MODE_STOP", int(store.CancelModeStop)},
			{"CANCEL_SKIP", int(store.CancelSkip)},
			{"CANCEL_END", int(store.CancelEnd)},
			{"CANCEL_REQUEST", int(store.CancelRequest)},
			{"CANCEL_REFUSE", int(store.CancelRefuse)},
		}},
		{"Watch-key prefixes (store.AgentKey, store.TaskKey, store.OutputKey, store.JobKey).", []constant{
			{"WATCH_AGENT", store.AgentKey("")},
			{"WATCH_TASK", store.TaskKey("")},
			{"WATCH_OUTPUT", store.OutputKey("")},
			{"WATCH_JOB", store.JobKey("")},
		}},
		{"What ids are written in (store.IDAlphabet).", []constant{
			{"ID_ALPHABET", store.IDAlphabet},
		}},
		{"How long an export holds retention back after it last ran, in ms (store.ExportHold).", []constant{
			{"EXPORT_HOLD_MS", int(store.ExportHold.Milliseconds())},
		}},
		{"Output streams and the sizes of kept output (store.Stream, store.OutputPieceMax,\n-- store.OutputPieceCost).", []constant{
			{"STREAM_STDOUT", int(store.StreamStdout)},
			{"STREAM_STDERR", int(store.StreamStderr)},
			{"OUTPUT_PIECE_MAX", store.OutputPieceMax},
			{"OUTPUT_PIECE_COST", store.OutputPieceCost},
		}},
		{"Reasons of a task's history (store.Reason*, store.Fmt*).", []constant{
			{"REASON_DISPATCHED", store.ReasonDispatched},
			{"REASON_AGENT_REVOKED", store.ReasonAgentRevoked},
			{"REASON_AGENT_NOT_FOUND", store.ReasonAgentNotFound},
			{"REASON_LEASE_EXPIRED", store.ReasonLeaseExpired},
			{"REASON_SUCCEEDED", store.ReasonSucceeded},
			{"REASON_FAILED", store.ReasonFailed},
			{"FMT_LEASED", store.FmtLeased},
			{"FMT_REQUEUED", store.FmtRequeued},
			{"FMT_RETURNED", store.FmtReturned},
			{"FMT_LOST", store.FmtLost},
			{"FMT_EXPIRED", store.FmtExpired},
			{"FMT_LOST_UNPICKED", store.FmtLostUnpicked},
			{"FMT_QUEUE_FULL", store.FmtQueueFull},
			{"FMT_CAUSE", store.FmtCause},
		}},
		{"Error messages (store.Msg*, store.Fmt*).", []constant{
			{"MSG_UNKNOWN_AGENT", store.MsgUnknownAgent},
			{"MSG_AGENT_REVOKED", store.MsgAgentRevoked},
			{"MSG_ENROLL_TOKEN", store.MsgEnrollToken},
			{"MSG_BAD_OUTCOME", store.MsgBadOutcome},
			{"MSG_BAD_STREAM", store.MsgBadStream},
			{"MSG_BAD_OFFSET", store.MsgBadOffset},
			{"MSG_ID_TAKEN", MsgIDTaken},
			{"FMT_AGENT_NOT_FOUND", store.FmtAgentNotFound},
			{"FMT_TASK_NOT_FOUND", store.FmtTaskNotFound},
			{"FMT_ENROLL_NOT_FOUND", store.FmtEnrollNotFound},
			{"FMT_AGENT_IS_REVOKED", store.FmtAgentIsRevoked},
			{"FMT_AGENT_QUEUE_FULL", store.FmtAgentQueueFull},
			{"FMT_TASK_ENDED", store.FmtTaskEnded},
			{"FMT_STALE_ENDED", store.FmtStaleEnded},
			{"FMT_STALE", store.FmtStale},
			{"FMT_OUTPUT_GAP", store.FmtOutputGap},
			{"FMT_ENROLL_REVOKED", store.FmtEnrollRevoked},
			{"FMT_ENROLL_EXPIRED", store.FmtEnrollExpired},
			{"FMT_ENROLL_USED_UP", store.FmtEnrollUsedUp},
			{"FMT_ENROLL_EXISTS", store.FmtEnrollExists},
		}},
	}
}

// rules are the Lua twins of package store's rule functions. They use only the
// constants above; each names its Go twin, which the agreement test runs beside it.
const rules = `
-- STATE_NAMES[st] is store.TaskState.String for the states above.
local STATE_NAMES = {{{STATE_NAMES}}}

-- STREAM_NAMES[s] is store.Stream.String for the streams above.
local STREAM_NAMES = {{{STREAM_NAMES}}}

-- fail is a script's error answer: a code (E_*) and a message for the caller.
local function fail(code, msg) return {'E', code, msg} end

-- q is store.Quote for the ids scripts see: Go checks every id (store.ValidID,
-- store.ValidTaskID) before it reaches a script, and such ids need no escapes.
local function q(id) return '"' .. id .. '"' end

-- agentCred is store.CheckAgentCred: exists, revoked and matched (booleans) say
-- whether the agent's record exists, is revoked, and whether the secret matched
-- one of its tokens. It answers nil or an error answer.
local function agentCred(exists, revoked, matched)
  if not exists then return fail(E_UNAUTHENTICATED, MSG_UNKNOWN_AGENT) end
  if revoked then return fail(E_UNAUTHENTICATED, MSG_AGENT_REVOKED) end
  if not matched then return fail(E_UNAUTHENTICATED, MSG_UNKNOWN_AGENT) end
  return nil
end

-- checkReport is store.CheckReport: st, cur (the task's attempt), ro (the outcome
-- that ended it, 0 if no report did) and ec are the task's; att, outcome and exit
-- the report's. It answers true for the identical report again, nil when the
-- report ends the running attempt, or an error answer.
local function checkReport(tid, st, cur, ro, ec, att, outcome, exit)
  if outcome ~= OUTCOME_SUCCEEDED and outcome ~= OUTCOME_FAILED then return fail(E_INVALID, MSG_BAD_OUTCOME) end
  if st > RUNNING then
    if ro ~= 0 and cur == att and ro == outcome and ec == exit then return true end
    if cur ~= att then
      return fail(E_PRECONDITION, string.format(FMT_STALE_ENDED, att, q(tid), STATE_NAMES[st], cur))
    end
    return fail(E_PRECONDITION, string.format(FMT_TASK_ENDED, q(tid), STATE_NAMES[st]))
  end
  if st ~= RUNNING or cur ~= att then
    return fail(E_PRECONDITION, string.format(FMT_STALE, att, q(tid), cur, STATE_NAMES[st]))
  end
  return nil
end

-- reportEnd is store.ReportEnd: the state and reason a running attempt ends with
-- when reported at now (ms); tmo, cr (booleans), crr (string or nil), dl (its
-- deadline, ms; 0: none) and tor (its timeout's reason) are the task's, atmo
-- (boolean) says the agent stopped it at its timeout.
local function reportEnd(outcome, tmo, cr, crr, dl, tor, atmo, now)
  local st, why = SUCCEEDED, REASON_SUCCEEDED
  if outcome == OUTCOME_FAILED then st, why = FAILED, REASON_FAILED end
  if tmo then return TIMED_OUT, string.format(FMT_CAUSE, crr or '', why) end
  if atmo or (dl > 0 and now >= dl) then return TIMED_OUT, string.format(FMT_CAUSE, tor, why) end
  if cr then return CANCELED, string.format(FMT_CAUSE, crr or '', why) end
  return st, why
end

-- handlesType is store.HandlesType: whether an agent whose task types are types
-- (a JSON list as the agent record keeps it; '', 'null' or [] for none named)
-- takes tasks of type typ.
local function handlesType(types, typ)
  if types == '' or types == 'null' then return true end
  local ok, list = pcall(cjson.decode, types)
  if not ok or type(list) ~= 'table' or #list == 0 then return true end
  for _, t in ipairs(list) do
    if t == typ then return true end
  end
  return false
end

-- leaseExpiryEnd is store.LeaseExpiryEnd: what becomes of a running attempt whose
-- lease ran out (PENDING: requeue it), and the reason.
local function leaseExpiryEnd(tmo, cr, crr, att, max)
  if tmo then return TIMED_OUT, string.format(FMT_CAUSE, crr or '', REASON_LEASE_EXPIRED) end
  if cr then return CANCELED, string.format(FMT_CAUSE, crr or '', REASON_LEASE_EXPIRED) end
  if att >= max then return LOST, string.format(FMT_LOST, att) end
  return PENDING, string.format(FMT_REQUEUED, att)
end

-- deliveryExpiryEnd is store.DeliveryExpiryEnd: what a pending task past its
-- deliver_by ends in (EXPIRED when no attempt was leased, else LOST), and the
-- reason. ttx is the delivery TTL as Go writes it (the record's ttx); a record
-- written before ttx was kept ends EXPIRED with its own reason, exr.
local function deliveryExpiryEnd(att, ttx, exr)
  if not ttx then return EXPIRED, exr or '' end
  if att > 0 then return LOST, string.format(FMT_LOST_UNPICKED, ttx) end
  return EXPIRED, string.format(FMT_EXPIRED, ttx)
end

-- agentExpired is store.AgentExpired: whether an agent last seen at seen (ms) is
-- to be removed at now under retention ret (ms; 0 or less: never).
local function agentExpired(seen, now, ret)
  return ret > 0 and now - seen >= ret
end

-- createdAt is store.CreatedAt: when a task or job id was made, in microseconds
-- since the epoch, or nil when the id has no creation time.
local function createdAt(id)
  local c = string.sub(id, 1, 1)
  if #id < 12 or (c ~= 't' and c ~= 'j') then return nil end
  local us = 0
  for i = 2, 12 do
    local v = string.find(ID_ALPHABET, string.sub(id, i, i), 1, true)
    if not v then return nil end
    us = us * 32 + v - 1
  end
  return us
end

-- dropMark is store.DropMark: an agent's drop mark kd (µs since the epoch; 0:
-- none) after the count kept per agent dropped task tid.
local function dropMark(kd, tid)
  local made = createdAt(tid)
  if made and made > kd then return made end
  return kd
end

-- returnEnd is store.ReturnEnd: what becomes of a running attempt its agent
-- hands back unstarted (PENDING: back to the queue as attempt att - 1), and the reason.
local function returnEnd(tmo, cr, crr, att)
  local why = string.format(FMT_RETURNED, att)
  if tmo then return TIMED_OUT, string.format(FMT_CAUSE, crr or '', why) end
  if cr then return CANCELED, string.format(FMT_CAUSE, crr or '', why) end
  return PENDING, why
end

-- cancelAction is store.CancelMode.Action: what cancel mode mode does to a task
-- in state st.
local function cancelAction(mode, st)
  if st == PENDING then return CANCEL_END end
  if st == RUNNING and mode ~= CANCEL_MODE_STOP then return CANCEL_REQUEST end
  if st > RUNNING and mode == CANCEL_MODE_TASK then return CANCEL_REFUSE end
  return CANCEL_SKIP
end

-- checkAppend is store.CheckAppend: st and cur (attempt) are the task's; held is
-- what the store holds of stream s for attempt att (0 when the kept output is an
-- older attempt's); off and n are the chunk's offset and length. It answers how
-- many of the chunk's first bytes are held already, or an error answer.
local function checkAppend(tid, st, cur, att, s, held, off, n)
  if s ~= STREAM_STDOUT and s ~= STREAM_STDERR then return fail(E_INVALID, MSG_BAD_STREAM) end
  if off < 0 then return fail(E_INVALID, MSG_BAD_OFFSET) end
  if st > RUNNING then
    if cur == att and off + n <= held then return n end
    if cur ~= att then
      return fail(E_PRECONDITION, string.format(FMT_STALE_ENDED, att, q(tid), STATE_NAMES[st], cur))
    end
    return fail(E_PRECONDITION, string.format(FMT_TASK_ENDED, q(tid), STATE_NAMES[st]))
  end
  if st ~= RUNNING or cur ~= att then
    return fail(E_PRECONDITION, string.format(FMT_STALE, att, q(tid), cur, STATE_NAMES[st]))
  end
  if off > held then
    return fail(E_PRECONDITION, string.format(FMT_OUTPUT_GAP, STREAM_NAMES[s], off, att, q(tid), held))
  end
  return math.min(held - off, n)
end

-- outputLimits is store.OutputLimits: the most bytes head and tail keep under
-- cap, and the most pieces each holds.
local function outputLimits(cap)
  local head = math.floor(cap / 2)
  return head, cap - head, math.max(math.floor(cap / OUTPUT_PIECE_COST), 16)
end

-- outputMergeRoom is store.OutputMergeRoom: how many bytes of stream s may extend
-- a region's last piece, of stream last (0: none) and length n.
local function outputMergeRoom(last, n, s)
  if last ~= s or n >= OUTPUT_PIECE_MAX then return 0 end
  return OUTPUT_PIECE_MAX - n
end

-- outputHeadTake is store.OutputHeadTake: how many of n new bytes go to the head.
local function outputHeadTake(total, hb, hn, merge, n, cap)
  local headMax, _, maxPieces = outputLimits(cap)
  if total > hb then return 0 end
  local room = math.min(headMax - hb, merge + (maxPieces - hn) * OUTPUT_PIECE_MAX)
  return math.max(math.min(n, room), 0)
end

-- outputTailOver is store.OutputTailOver: whether the tail holds more than cap allows.
local function outputTailOver(tb, tn, cap)
  local _, tailMax, maxPieces = outputLimits(cap)
  return tb > tailMax or tn > maxPieces
end

-- outputTrim is store.OutputTrim: how many bytes to drop from the front of an
-- over-full tail's first piece, first bytes long.
local function outputTrim(tb, tn, first, cap)
  local _, tailMax, maxPieces = outputLimits(cap)
  if tn > maxPieces or tb - first >= tailMax then return first end
  if tb > tailMax then return tb - tailMax end
  return 0
end

-- enrollCheck is store.CheckEnrollment, after the secret matched: rev and exp are
-- the token's revocation and expiry times (ms, 0: none), now the time (ms), max
-- and uses its use limit (0: none) and count. It answers nil or an error answer.
local function enrollCheck(id, rev, exp, now, max, uses)
  if rev ~= 0 then return fail(E_UNAUTHENTICATED, string.format(FMT_ENROLL_REVOKED, id)) end
  if exp > 0 and now >= exp then return fail(E_UNAUTHENTICATED, string.format(FMT_ENROLL_EXPIRED, id)) end
  if max > 0 and uses >= max then return fail(E_UNAUTHENTICATED, string.format(FMT_ENROLL_USED_UP, id, max)) end
  return nil
end

-- replayOf is the agent id a registration request key's record (see
-- replayClaimScript; false: none) names while its window lasts at now (ms), or nil.
local function replayOf(v, now)
  if not v then return nil end
  local id, till = string.match(v, '^(%S+) (%d+)$')
  if id and tonumber(till) > now then return id end
  return nil
end

-- enrollReplayCheck is store.CheckEnrollmentReplay: enrollCheck, not counting the
-- use the replayed registration made.
local function enrollReplayCheck(id, rev, exp, now, max, uses)
  return enrollCheck(id, rev, exp, now, max, math.max(uses - 1, 0))
end
`

// Constant is one constant of the prelude: its Lua name and its value, an int or
// a string, taken from package store.
type Constant struct {
	Name  string
	Value any
}

// Constants returns every constant of the prelude, in order.
func Constants() []Constant {
	var out []Constant
	for _, g := range groups() {
		for _, c := range g.consts {
			out = append(out, Constant{c.name, c.value})
		}
	}
	return out
}

// Source returns the prelude.
func Source() []byte {
	var b bytes.Buffer
	b.WriteString("-- Code generated by store/redisstore/internal/genprelude from package store; DO NOT EDIT.\n")
	b.WriteString("-- The constants and rules every redisstore script starts with (see package luaprelude).\n")
	for _, g := range groups() {
		fmt.Fprintf(&b, "\n-- %s\n", g.doc)
		for _, c := range g.consts {
			fmt.Fprintf(&b, "local %s = %s\n", c.name, literal(c.value))
		}
	}
	var names []string
	for st := store.StatePending; st <= store.StateLost; st++ {
		names = append(names, literal(st.String()))
	}
	var streams []string
	for s := store.StreamStdout; s <= store.StreamStderr; s++ {
		streams = append(streams, literal(s.String()))
	}
	r := strings.Replace(rules, "{{STATE_NAMES}}", strings.Join(names, ", "), 1)
	b.WriteString(strings.Replace(r, "{{STREAM_NAMES}}", strings.Join(streams, ", "), 1))
	return b.Bytes()
}

// literal writes a number or a string as a Lua literal. A string is quoted with
// ' (or " if it holds a ' and no "), and every byte outside printable ASCII, the
// quote and the backslash are escaped as \ddd, which Lua reads back as the same
// bytes.
func literal(v any) string {
	switch v := v.(type) {
	case int:
		return strconv.Itoa(v)
	case string:
		quote := byte('\'')
		if strings.IndexByte(v, '\'') >= 0 && strings.IndexByte(v, '"') < 0 {
			quote = '"'
		}
		var b strings.Builder
		b.WriteByte(quote)
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c < 0x20 || c > 0x7e || c == quote || c == '\\' {
				fmt.Fprintf(&b, "\\%03d", c)
			} else {
				b.WriteByte(c)
			}
		}
		b.WriteByte(quote)
		return b.String()
	}
	panic(fmt.Sprintf("luaprelude: a constant of type %T", v))
}
