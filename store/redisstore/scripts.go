package redisstore

import (
	"crypto/sha1"
	_ "embed"
	"encoding/hex"

	"github.com/redis/rueidis"
)

//go:generate go run ./internal/genprelude -o prelude.lua

// prelude starts every script: package store's lifecycle constants, texts and
// rules in Lua, generated from Go (see package luaprelude). Scripts write no text
// and no rule of their own: TestScriptsHoldNoText and TestLuaAgreesWithGo check.
//
//go:embed prelude.lua
var prelude string

// script is one of the store's Lua scripts. Named ones are functions of the
// store's library (functions.go), called with FCALL; each is also a script of
// its own, run with EVALSHA (falling back to EVAL when a node does not have it,
// after SCRIPT FLUSH, a restart or a failover) where Functions cannot be used.
type script struct {
	name  string // its name in the library; "" for a script outside it
	lua   *rueidis.Lua
	body  string // the script without the prelude
	text  string
	sha   string
	shard bool // a shard script: its calls also declare the shard's guard key
	oom   bool // allowed to run, and write, while Redis is full (full.go)
	ro    bool // writes nothing: as a function, flagged no-writes (so it runs while Redis is full)
}

// guardSuffix names a key of each shard that never exists. Every shard script
// declares it in KEYS beside its own keys, so Redis Cluster refuses the call with
// TRYAGAIN while the shard's slot is being moved between nodes: a node counts the
// keys it lacks only while it exports or imports a slot, and with one declared key
// always lacking, the source (which still has others, or sends the call to the
// target) and the target (which lacks it among several) both refuse. Without
// it, a script would meet the slot half moved: keys it finds on its own (a task
// popped from a queue) could be gone to the other node, and Redis aborts the
// script there ("non local key"), keeping what it had written — a task taken off
// its queue and never leased — or, run on the target, read them as missing. The
// caller hears unavailable and retries; a move takes milliseconds to seconds.
const guardSuffix = ":guard"

// keys returns the KEYS of a call: the given ones, and for a shard script the
// guard key of the shard named by its first ARGV (the shard's hash tag).
func (sc *script) keys(keys, args []string) []string {
	if !sc.shard || len(args) == 0 {
		return keys
	}
	return append(keys[:len(keys):len(keys)], args[0]+guardSuffix)
}

func newScript(name, body string) *script {
	sc := &script{name: name, body: body}
	sc.setText(prelude + body)
	return sc
}

// setText sets the text the script runs as with EVALSHA, and its digest.
func (sc *script) setText(text string) {
	sum := sha1.Sum([]byte(text))
	sc.text, sc.sha, sc.lua = text, hex.EncodeToString(sum[:]), rueidis.NewLuaScript(text)
}

// Every atomic operation is one Lua script, and every script starts with the
// prelude. Scripts that act in an agent's shard go on with shardLib, which fixes
// the first three ARGV of every such script:
//
//	ARGV[1] the shard's hash tag, such as "{forge:s07}" (keys are built from it,
//	        exactly as keys.go builds them, so a task popped from a queue is found
//	        in the same slot)
//	ARGV[2] now, in ms, from the store's clock (scripts never read Redis' clock,
//	        so tests can move time and replicas agree on it)
//	ARGV[3] retention in ms
//
// Script-specific ARGV start at 4. Scripts answer a table whose first element is
// 'OK', or fail(code, message) = {'E', code, message} for an error the caller
// should see, its code one of the prelude's E_* (see scriptError). Changes are
// published from inside the script (SPUBLISH on the shard's wake channel, one
// message of space-separated watch keys), so a waiter on any replica wakes as
// early as possible.
//
// Task record fields: job type pl st att max to ttl lim held cr crr cd tmo dl le
// db otr osz ec err rep ro ca ua hist tor exr ttx, and of its kept output oa ob on o1
// o2 ohb ohn otb otn (see decodeTask and decodeOutput in decode.go); a finished
// task's record is compacted (compact): h1.. for hist, oi for a small output.
const shardLib = `
-- What a call is about, set by shardBegin before the script's own lines: a
-- library of functions (functions.go) is loaded once and its functions called
-- many times, so nothing of one call may stay for the next.
local TAG, NOW, RET, KEEP
local kDue, kAll, kWake, kOnline, kRevoked, kCounters, kFin, kExported
local wake, wakeN, advance, advanceN
-- ended is the record of the last task compact wrote this call (field, value
-- pairs), when it keeps no output list: a report answers it.
local ended
local function shardBegin()
  TAG = ARGV[1]
  NOW = tonumber(ARGV[2])
  -- ARGV[3] is the retention in ms, and after a colon the most tasks an agent
  -- keeps (Config.KeepPerAgent; none: no bound).
  RET, KEEP = string.match(ARGV[3], '^(%d+):?(%d*)$')
  RET, KEEP = tonumber(RET), tonumber(KEEP) or 0
  kDue, kAll, kWake = TAG .. ':due', TAG .. ':tasks', TAG .. ':wake'
  kOnline, kRevoked, kCounters = TAG .. ':on', TAG .. ':rv', TAG .. ':n'
  kFin, kExported = TAG .. ':fin', TAG .. ':xp'
  wake, wakeN, advance, advanceN = {}, 0, {}, 0
  ended = nil
end
local function ms(x) return string.format('%d', x) end
-- streamBefore tells whether stream id a (ms-seq) comes before b (ms-seq, or
-- ms: its last id).
local function streamBefore(a, b)
  local am, as = string.match(a, '^(%d+)-?(%d*)$')
  local bm, bs = string.match(b, '^(%d+)-?(%d*)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  if bs == '' then return true end
  return (tonumber(as) or 0) < tonumber(bs)
end
local function kAgent(a) return TAG .. ':a:' .. a end
local function kQueue(a) return TAG .. ':q:' .. a end
local function kRun(a) return TAG .. ':r:' .. a end
local function kCancels(a) return TAG .. ':c:' .. a end
local function kAgentTasks(a) return TAG .. ':at:' .. a end
local function kTask(t) return TAG .. ':t:' .. t end
local function kOutHead(t) return TAG .. ':oh:' .. t end
local function kOutTail(t) return TAG .. ':ot:' .. t end
local function kState(n) return TAG .. ':st:' .. n end
local function kJobCounts(j) return TAG .. ':jc:' .. j end

-- seen records an agent's call for Stats: its score in the shard's online index
-- is the time of its last call; a stopped or revoked agent is not in it.
local function seen(aid) redis.call('ZADD', kOnline, NOW, aid) end

local function notify(k)
  if not wake[k] then wake[k] = true; wakeN = wakeN + 1 end
end
local function publish()
  if wakeN == 0 then return end
  local t = {}
  for k in pairs(wake) do t[#t + 1] = k end
  redis.call('SPUBLISH', kWake, table.concat(t, ' '))
end

local function needsAdvance(job)
  if job and job ~= '' and not advance[job] then advance[job] = true; advanceN = advanceN + 1 end
end
local function advanceList()
  local t = {}
  for j in pairs(advance) do t[#t + 1] = j end
  return t
end

local function agentOf(tid) return string.match(tid, '%-(a[0-9a-z]+)$') end

-- auth checks an agent credential (SHA-256 hash of the token's secret) against the
-- current and the next token hash, promoting the next one on its first use. It
-- returns the record's fields, the extra ones asked for from index 5 on, or nil
-- and the error answer (agentCred: unknown agent, or agent revoked).
-- Lua compares strings in variable time; what it compares are SHA-256 hashes of
-- 160-bit secrets, so timing could reveal at most a prefix of a hash, from which
-- no secret can be recovered (the reason only hashes are stored).
local function auth(ak, secret, ...)
  local f = redis.call('HMGET', ak, 'reg', 'rev', 'cur', 'next', ...)
  local matched = false
  if f[1] and not f[2] and secret ~= '' then
    if f[3] == secret then
      matched = true
    elseif f[4] and f[4] == secret then
      redis.call('HSET', ak, 'cur', secret)
      redis.call('HDEL', ak, 'next')
      matched = true
    end
  end
  local err = agentCred(f[1] ~= false, f[2] ~= false, matched)
  if err then return nil, err end
  return f
end

-- moved moves a task from state old (nil: a new task) to new in the shard's
-- state indexes and, for a task whose job keeps counts (counted: a fan-out's,
-- whose record has cj), its job's counts in this shard, and wakes its waiters.
-- A single-agent job keeps none: its counts are its one task in its state, and
-- GetJob reads them from the task (countReads). Records written before keep
-- them (jc) while the task is live, as may a replica of that version that
-- moves a task of this one; so when such a task ends, its job's counts are
-- deleted (as that version did), leaving none behind (dropEnded then has none
-- to take it off).
local function moved(tid, job, old, new, counted)
  if old ~= new then
    if old then redis.call('ZREM', kState(old), tid) end
    redis.call('ZADD', kState(new), 0, tid)
    if job and job ~= '' then
      local jc = kJobCounts(job)
      if counted then
        if old then redis.call('HINCRBY', jc, old, -1) else redis.call('HINCRBY', jc, 'n', 1) end
        redis.call('HINCRBY', jc, new, 1)
      elseif new > RUNNING then
        redis.call('DEL', jc)
      end
    end
  end
  notify(WATCH_TASK .. tid)
  if job and job ~= '' then notify(WATCH_JOB .. job) end
end

-- histAdd returns history h (JSON, as the record's hist; nil or '' for none)
-- with the move to state new added.
local function histAdd(h, new, reason, att)
  local e = '{"s":' .. new .. ',"at":' .. ms(NOW) .. ',"a":' .. ms(att) .. ',"r":' .. cjson.encode(reason) .. '}'
  if not h or h == '' or h == '[]' then return '[' .. e .. ']' end
  return string.sub(h, 1, -2) .. ',' .. e .. ']'
end

-- setState records a task's move to state new (counted: its job keeps counts,
-- see moved). hist, when given, is the task's history as the caller read it
-- (saving a read); extra field, value pairs are written in the same HSET.
local function setState(tk, tid, job, counted, old, new, reason, att, hist, extra)
  moved(tid, job, old, new, counted)
  local h = hist
  if h == nil then h = redis.call('HGET', tk, 'hist') end
  h = histAdd(h, new, reason, att)
  if extra then
    local n = #extra
    extra[n + 1], extra[n + 2], extra[n + 3], extra[n + 4], extra[n + 5], extra[n + 6] = 'st', new, 'ua', ms(NOW), 'hist', h
    redis.call('HSET', tk, unpack(extra))
  else
    redis.call('HSET', tk, 'st', new, 'ua', ms(NOW), 'hist', h)
  end
end

-- reindex puts a live task in the shard's due index at the next time Reap must
-- look at it: a released pending task at its delivery TTL, a running one at its
-- lease expiry or (until flagged) its deadline.
local function reindex(tk, tid)
  local f = redis.call('HMGET', tk, 'st', 'held', 'db', 'dl', 'le', 'tmo')
  local st, due = tonumber(f[1]), nil
  if st == PENDING then
    if f[2] ~= '1' then due = tonumber(f[3]) end
  elseif st == RUNNING then
    due = tonumber(f[5])
    local dl = tonumber(f[4])
    if f[6] ~= '1' and dl and dl < due then due = dl end
  end
  if due then redis.call('ZADD', kDue, due, tid) else redis.call('ZREM', kDue, tid) end
end

-- ENDED_KEEP are the fields a finished task's record keeps: what GetTask shows,
-- and what a late report or chunk of its last attempt is checked against. Its
-- update time is its last state change's (decodeTask).
-- (A table written out: a library's top level may call no function.)
local ENDED_KEEP = {job = true, type = true, pl = true, cj = true, st = true, att = true, max = true, to = true,
  db = true, ca = true, err = true, ec = true, ro = true, rep = true, otr = true, osz = true, cr = true, crr = true,
  oa = true, ob = true, on = true, o1 = true, o2 = true, ohb = true, ohn = true, otb = true, otn = true}

-- INLINE_MAX is the longest value a small hash keeps in its compact encoding
-- (Redis' hash-max-listpack-value default): a finished task's record whose
-- values all fit costs a few bytes a field instead of about a hundred.
local INLINE_MAX = 64

-- record reads a task's record into a table, field -> value (empty: none).
local function record(tk)
  local all = redis.call('HGETALL', tk)
  local r = {}
  for i = 1, #all - 1, 2 do r[all[i]] = all[i + 1] end
  return r
end

-- compact writes a finished task's record, rec (record's table, its last
-- changes made), in its small form (see decodeTask): only ENDED_KEEP fields,
-- empty and zero values left out, the history one field per change (h1, h2,
-- ...: state, ms after creation, attempt, reason, spaced), and output that is
-- one short piece kept in the record (oi, which the caller may have set
-- already) rather than in a list of its own. Nothing changes for its readers
-- but the history's form. It returns whether the task still has a head list
-- and a tail list of output. fe, the task's entry in the shard's stream of
-- finished tasks, is kept with it (relative to its creation, see finEntry), so
-- retention can tell whether an export has written it (unexported).
local function compact(tk, tid, rec, fe)
  local out = {}
  for k, v in pairs(rec) do
    if ENDED_KEEP[k] and v ~= '' and v ~= '0' then out[#out + 1], out[#out + 2] = k, v end
  end
  local ca = tonumber(rec.ca) or 0
  if rec.hist and rec.hist ~= '' then
    for i, e in ipairs(cjson.decode(rec.hist)) do
      out[#out + 1], out[#out + 2] = 'h' .. i, e.s .. ' ' .. ms(e.at - ca) .. ' ' .. e.a .. ' ' .. e.r
    end
  end
  local fm, fs = string.match(fe, '^(%d+)-(%d+)$')
  fm = ms(tonumber(fm) - ca)
  if fs ~= '0' then fm = fm .. '-' .. fs end
  out[#out + 1], out[#out + 2] = 'fe', fm
  local head, tail = (tonumber(rec.ohn) or 0) > 0, (tonumber(rec.otn) or 0) > 0
  if rec.oi then
    out[#out + 1], out[#out + 2] = 'oi', rec.oi
    head = false
  elseif rec.ohn == '1' and not tail then
    local hk = kOutHead(tid)
    local p = redis.call('LINDEX', hk, 0)
    if p and #p <= INLINE_MAX then
      out[#out + 1], out[#out + 2] = 'oi', p
      redis.call('DEL', hk)
      head = false
    end
  end
  redis.call('DEL', tk)
  redis.call('HSET', tk, unpack(out))
  ended = nil
  if not head and not tail then ended = out end
  return head, tail
end

-- FIN_DUE is the shard's stream of finished tasks in its due index: due when
-- its oldest entry passes the retention. (Task ids start with t, agent ids with a.)
local FIN_DUE = 'fin'

-- finished adds a task that ended now to the shard's stream of finished tasks
-- (kFin), in the order they finished: what Reap drops after the retention and
-- what an export reads. Its entry's id is NOW; should another replica's clock
-- have put a later one first, Redis' own time (never below the last) instead.
-- It returns the entry's id.
-- While the stream exists it is in the due index (Reap's retain puts it back
-- at its oldest entry, or deletes both), so only the entry that makes the
-- stream puts it there (NOMKSTREAM tells: it adds nothing to a stream that
-- does not exist).
local function finished(tid)
  local id = redis.pcall('XADD', kFin, 'NOMKSTREAM', ms(NOW) .. '-*', 't', tid)
  if type(id) == 'table' and id.err then return redis.call('XADD', kFin, '*', 't', tid) end
  if id then return id end
  id = redis.call('XADD', kFin, ms(NOW) .. '-*', 't', tid)
  redis.call('ZADD', kDue, 'NX', NOW + RET, FIN_DUE)
  return id
end

-- finEntry returns a finished task's entry in the shard's stream from its
-- record's fe and ca: fe holds the entry's ms after the task's creation, and
-- after a dash its sequence number unless 0 (so it is mostly a small integer);
-- the ms may be negative, when the replica that ended it ran a clock behind
-- the one that made it.
local function finEntry(fe, ca)
  local m, s = string.match(fe, '^(-?%d+)-?(%d*)$')
  if s == '' then s = '0' end
  return ms(tonumber(m) + (tonumber(ca) or 0)) .. '-' .. s
end

-- unexported tells whether an export running (its position in this shard, xp,
-- exists) has yet to write the finished task whose record holds fe and ca; a
-- record without fe (kept before entries were) counts as not written.
local function unexported(xp, fe, ca)
  if not xp then return false end
  if not fe then return true end
  local e = finEntry(fe, ca)
  return e ~= xp and not streamBefore(e, xp)
end

-- dropEnded deletes a finished task (record st) with its output and index
-- entries, and takes it off its job's counts in this shard when the job keeps
-- them (counted: a fan-out's task, whose record has cj; see moved).
local function dropEnded(tid, st, job, counted)
  local tk = kTask(tid)
  if counted and job and job ~= '' then
    local jc = kJobCounts(job)
    redis.call('HINCRBY', jc, st, -1)
    if redis.call('HINCRBY', jc, 'n', -1) <= 0 then redis.call('DEL', jc) end
  end
  redis.call('DEL', tk, kOutHead(tid), kOutTail(tid))
  redis.call('ZREM', kDue, tid)
  redis.call('ZREM', kAll, tid)
  redis.call('ZREM', kState(st), tid)
  redis.call('ZREM', kAgentTasks(agentOf(tid)), tid)
end

-- keepAgent drops up to four of an agent's oldest finished tasks while it
-- holds more than KEEP tasks (Config.KeepPerAgent): of those, the ones an
-- export running has written. The agent's record keeps its drop mark (kd,
-- moved by dropMark), so GetTask of a task dropped says why it is gone.
local function keepAgent(aid)
  local k = kAgentTasks(aid)
  local over = redis.call('ZCARD', k) - KEEP
  if over <= 0 then return end
  local xp = redis.call('GET', kExported)
  local dropped = {}
  for _, tid in ipairs(redis.call('ZRANGE', k, 0, math.min(over, 4) - 1)) do
    local t = redis.call('HMGET', kTask(tid), 'st', 'job', 'fe', 'ca', 'cj')
    local st = tonumber(t[1])
    if st and st > RUNNING and not unexported(xp, t[3], t[4]) then
      dropEnded(tid, st, t[2], t[5] == '1')
      dropped[#dropped + 1] = tid
    end
  end
  if #dropped == 0 then return end
  -- Only on a record that is there ('reg'): never make one up for an agent
  -- being removed.
  local a = redis.call('HMGET', kAgent(aid), 'kd', 'reg')
  if not a[2] then return end
  local was = tonumber(a[1]) or 0
  local kd = was
  for _, tid in ipairs(dropped) do kd = dropMark(kd, tid) end
  if kd ~= was then redis.call('HSET', kAgent(aid), 'kd', ms(kd)) end
end

-- endTask moves a live task to a terminal state; it returns false if the task is
-- unknown or already ended. The task is then due for deletion after retention.
-- rec, when given, is the task's record as the caller read it (record) and
-- changed: it is what is written, compacted, in one go.
local function endTask(tid, new, reason, rec)
  local tk = kTask(tid)
  rec = rec or record(tk)
  local st = tonumber(rec.st)
  if not st or st > RUNNING then return false end
  local aid = agentOf(tid)
  if st == PENDING and rec.held ~= '1' then redis.call('ZREM', kQueue(aid), tid) end
  if st == RUNNING then
    redis.call('ZREM', kRun(aid), tid)
    if rec.cr == '1' then redis.call('ZREM', kCancels(aid), tid) end
  end
  if (not rec.err or rec.err == '') and new ~= SUCCEEDED and new ~= FAILED then rec.err = reason end
  moved(tid, rec.job, st, new, rec.cj == '1')
  rec.st, rec.ua, rec.hist = ms(new), ms(NOW), histAdd(rec.hist, new, reason, tonumber(rec.att) or 0)
  local head, tail = compact(tk, tid, rec, finished(tid)) -- held and le go with it
  redis.call('ZREM', kDue, tid)
  -- A backstop should reaping stop: the record goes by itself an hour after Reap
  -- would have dropped it, an export holding it back included (relative, so it
  -- does not depend on the clocks agreeing).
  local backstop = RET + EXPORT_HOLD_MS + 3600000
  redis.call('PEXPIRE', tk, backstop)
  if head then redis.call('PEXPIRE', kOutHead(tid), backstop) end
  if tail then redis.call('PEXPIRE', kOutTail(tid), backstop) end
  if KEEP > 0 then keepAgent(aid) end
  if rec.lim == '1' then needsAdvance(rec.job) end
  return true
end

-- lastPiece returns the stream and length of the last piece of an output list
-- (0, 0 when it is empty).
local function lastPiece(k)
  local p = redis.call('LINDEX', k, -1)
  if not p then return 0, 0 end
  return string.byte(p, 1) - 48, #p - 1
end

-- pushOutput appends data of stream s to an output list: its first merge bytes
-- extend the last piece, the rest go in new pieces of at most OUTPUT_PIECE_MAX
-- bytes. It returns how many pieces it added.
local function pushOutput(k, s, data, merge)
  local i = 1
  if merge > 0 then
    redis.call('LSET', k, -1, redis.call('LINDEX', k, -1) .. string.sub(data, 1, merge))
    i = merge + 1
  end
  local add = {}
  while i <= #data do
    add[#add + 1] = s .. string.sub(data, i, i + OUTPUT_PIECE_MAX - 1)
    i = i + OUTPUT_PIECE_MAX
  end
  if #add > 0 then redis.call('RPUSH', k, unpack(add)) end
  return #add
end

-- OUTPUT_FIELDS are the record's fields of kept output, as appendOutput reads them.
local OUTPUT_FIELDS = {'oa', 'ob', 'on', 'o1', 'o2', 'ohb', 'ohn', 'otb', 'otn'}

-- appendOutput adds data of stream s to attempt att's kept output of a task
-- (record tk, lists kh and kt) under cap, by store/output.go's rules; an older
-- attempt's output is dropped first, and the new one's cursors start where it
-- ended. With no data it only does that. f, when given, is OUTPUT_FIELDS as the
-- caller read them (saving a read).
local function appendOutput(tk, kh, kt, att, s, data, cap, f)
  f = f or redis.call('HMGET', tk, unpack(OUTPUT_FIELDS))
  local ob, n = tonumber(f[2]) or 0, tonumber(f[3]) or 0
  local held = {tonumber(f[4]) or 0, tonumber(f[5]) or 0}
  local hb, hn, tb, tn = tonumber(f[6]) or 0, tonumber(f[7]) or 0, tonumber(f[8]) or 0, tonumber(f[9]) or 0
  if tonumber(f[1]) ~= att then
    redis.call('DEL', kh, kt)
    ob, n, held, hb, hn, tb, tn = ob + n, 0, {0, 0}, 0, 0, 0, 0
  end
  local len = #data
  if n == hb and len > 0 then
    local ls, ll = lastPiece(kh)
    local merge = outputMergeRoom(ls, ll, s)
    local take = outputHeadTake(n, hb, hn, merge, len, cap)
    if take > 0 then
      hn = hn + pushOutput(kh, s, string.sub(data, 1, take), math.min(merge, take))
      hb = hb + take
      data = string.sub(data, take + 1)
    end
  end
  if #data > 0 then
    local ls, ll = lastPiece(kt)
    tn = tn + pushOutput(kt, s, data, math.min(outputMergeRoom(ls, ll, s), #data))
    tb = tb + #data
    while outputTailOver(tb, tn, cap) do
      local first = redis.call('LINDEX', kt, 0)
      local d = outputTrim(tb, tn, #first - 1, cap)
      if d == #first - 1 then
        redis.call('LPOP', kt)
        tn = tn - 1
      else
        redis.call('LSET', kt, 0, string.sub(first, 1, 1) .. string.sub(first, d + 2))
      end
      tb = tb - d
    end
  end
  held[s] = held[s] + len
  local w = {oa = ms(att), ob = ms(ob), on = ms(n + len), o1 = ms(held[1]), o2 = ms(held[2]),
    ohb = ms(hb), ohn = ms(hn), otb = ms(tb), otn = ms(tn)}
  redis.call('HSET', tk, 'oa', w.oa, 'ob', w.ob, 'on', w.on, 'o1', w.o1, 'o2', w.o2,
    'ohb', w.ohb, 'ohn', w.ohn, 'otb', w.otb, 'otn', w.otn)
  return w
end

-- reportOutput adds the output a report carries (data, stdout) to attempt att's
-- kept output under cap, in rec (the task's record, as record read it), as
-- appendOutput and compact would leave it: when the attempt holds no output yet
-- and no list is kept, an empty one changes only the fields, and a short one
-- (one piece compact keeps in the record) goes straight to oi, with no list
-- written and read back. Otherwise appendOutput writes it.
local function reportOutput(tk, kh, kt, att, data, cap, rec)
  local len = #data
  local lists = (tonumber(rec.ohn) or 0) > 0 or (tonumber(rec.otn) or 0) > 0
  local same = tonumber(rec.oa) == att
  if len == 0 and same then return end
  local ob, n = tonumber(rec.ob) or 0, tonumber(rec.on) or 0
  if not same then ob, n = ob + n, 0 end
  if not lists and n == 0 and len + 1 <= INLINE_MAX and outputHeadTake(0, 0, 0, 0, len, cap) == len then
    rec.oa, rec.ob, rec.on, rec.o1, rec.o2 = ms(att), ms(ob), ms(len), ms(len), '0'
    rec.ohb, rec.ohn, rec.otb, rec.otn = ms(len), (len > 0 and '1' or '0'), '0', '0'
    if len > 0 then rec.oi = STREAM_STDOUT .. data end
    return
  end
  local f = {}
  for i, k in ipairs(OUTPUT_FIELDS) do f[i] = rec[k] or false end
  for k, v in pairs(appendOutput(tk, kh, kt, att, STREAM_STDOUT, data, cap, f)) do rec[k] = v end
end

-- requestCancel records a cancel request on a running task and wakes its agent.
local function requestCancel(tk, tid, job, reason)
  if redis.call('HGET', tk, 'cr') == '1' then return end
  redis.call('HSET', tk, 'cr', '1', 'crr', reason, 'ua', ms(NOW))
  redis.call('HDEL', tk, 'cd')
  local aid = agentOf(tid)
  redis.call('ZADD', kCancels(aid), 0, tid)
  notify(WATCH_AGENT .. aid); notify(WATCH_TASK .. tid)
  if job and job ~= '' then notify(WATCH_JOB .. job) end
end

-- release puts a pending task in its agent's queue, due at its delivery TTL.
-- ttl is the task's delivery TTL (ms, its record's ttl). A task released is
-- due at its deliver-by time (reindex's answer, known here).
local function release(tk, tid, ttl)
  local aid = agentOf(tid)
  local db = NOW + ttl
  redis.call('HSET', tk, 'held', '0', 'db', ms(db))
  redis.call('ZADD', kQueue(aid), 0, tid)
  redis.call('ZADD', kDue, db, tid)
  notify(WATCH_AGENT .. aid)
end
`

func shardScript(name, body string) *script {
	sc := newScript(name, shardLib+"shardBegin()\n"+body)
	sc.body, sc.shard = body, true
	return sc
}

// registerScript creates an agent record and puts the agent in its shard's due
// index at the time Reap must see whether it is still seen (AgentExpired).
//
// KEYS[1] agent record
// ARGV[4] agent id, [5] due time (ms; 0: never), [6..] field, value pairs
// returns {'OK'}, or fail(E_ID_TAKEN) if the id is taken
var registerScript = shardScript("register", `
if redis.call('EXISTS', KEYS[1]) == 1 then return fail(E_ID_TAKEN, MSG_ID_TAKEN) end
local f = {}
for i = 6, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(f))
if tonumber(ARGV[5]) > 0 then redis.call('ZADD', kDue, ARGV[5], ARGV[4]) end
seen(ARGV[4])
return {'OK'}
`)

// replayScript repeats a registration (store.Store.RegisterAgent, a replay): the
// agent it made is given the new token in place of the old one, which stops
// working, and recorded seen; one since forgotten is made again under its id,
// as registerScript would; one revoked is refused.
//
// KEYS[1] agent record
// ARGV[4] agent id, [5] due time (ms; 0: never), [6] secret hash, [7..] field,
// value pairs of a new record
// returns {'OK', 1 if it made the record else 0} or fail(E_UNAUTHENTICATED) if revoked
var replayScript = shardScript("replay", `
local f = redis.call('HMGET', KEYS[1], 'reg', 'rev')
if f[2] then return fail(E_UNAUTHENTICATED, MSG_AGENT_REVOKED) end
if f[1] then
  redis.call('HSET', KEYS[1], 'cur', ARGV[6], 'seen', ms(NOW), 'so', '0')
  redis.call('HDEL', KEYS[1], 'next')
  seen(ARGV[4])
  return {'OK', 0}
end
local n = {}
for i = 7, #ARGV do n[#n + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(n))
if tonumber(ARGV[5]) > 0 then redis.call('ZADD', kDue, ARGV[5], ARGV[4]) end
seen(ARGV[4])
return {'OK', 1}
`)

// authScript checks an agent credential, promoting a next token on first use.
//
// KEYS[1] agent record
// ARGV[4] secret hash
// returns {'OK'} or fail(E_UNAUTHENTICATED)
var authScript = shardScript("auth", `
local _, aerr = auth(KEYS[1], ARGV[4])
if aerr then return aerr end
return {'OK'}
`)

// updateAgentScript replaces an agent's descriptive fields (name, host, ver,
// labels, types) and records it seen (online: in its shard's online index too).
//
// KEYS[1] agent record
// ARGV[4] agent id, [5] secret hash, [6..] field, value pairs
// returns {'OK', {field, value pairs as they were}} or fail(E_UNAUTHENTICATED)
var updateAgentScript = shardScript("updateAgent", `
local f, aerr = auth(KEYS[1], ARGV[5], 'name', 'host', 'ver', 'labels', 'types')
if aerr then return aerr end
local was = {}
for i, k in ipairs({'name', 'host', 'ver', 'labels', 'types'}) do
  if f[4 + i] then was[#was + 1] = k; was[#was + 1] = f[4 + i] end
end
local set = {}
for i = 6, #ARGV do set[#set + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'seen', ms(NOW), 'so', '0', unpack(set))
seen(ARGV[4])
return {'OK', was}
`)

// rotateScript stores the next token hash of an agent.
//
// KEYS[1] agent record
// ARGV[4] secret hash, ARGV[5] next secret hash
// returns {'OK'} or fail(E_UNAUTHENTICATED)
var rotateScript = shardScript("rotate", `
local _, aerr = auth(KEYS[1], ARGV[4])
if aerr then return aerr end
redis.call('HSET', KEYS[1], 'next', ARGV[5])
return {'OK'}
`)

// leaseScript is the whole of one Poll step: credential check, last-seen, poll
// generation, leasing ready tasks oldest first, and undelivered cancels. An idle
// agent costs one HMGET, one ZADD (its last call in the shard's online index,
// which Stats counts), one EXISTS (of its queue and its cancels at once: Redis
// drops an emptied sorted set) and one HSET.
//
// KEYS[1] agent record, KEYS[2] queue, KEYS[3] running, KEYS[4] undelivered cancels
// ARGV[4] agent id, [5] secret hash, [6] max tasks, [7] lease ms, [8] hold ms, [9] gen,
// [10] agent retention ms (0: never)
// returns {'S', gen} when superseded, else {'OK', gen, {tid, attempt, ...} cancels,
// {job ids to advance}, task1 id, task1 fields, task2 id, ...}
var leaseScript = shardScript("lease", `
local aid, max, lease, hold, gen = ARGV[4], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local aret = tonumber(ARGV[10])
local f, aerr = auth(KEYS[1], ARGV[5], 'gen', 'pu', 'so', 'si')
if aerr then return aerr end
local cur, pu = tonumber(f[5]) or 0, tonumber(f[6]) or 0
-- A superseded Poll's re-check is not a call of the agent: it neither counts as
-- seen nor ends a stop.
if gen ~= 0 and gen ~= cur then return {'S', cur} end
-- The agent record is written once, at the end. A call ends a stop (so).
local upd = {'seen', ms(NOW)}
if f[7] == '1' then upd[#upd + 1] = 'so'; upd[#upd + 1] = '0' end
seen(aid)
-- Once an hour at most, the agent's place in the due index moves on with it (si:
-- when it last did), so Reap looks at it only once it may be unseen for aret.
if aret > 0 and NOW - (tonumber(f[8]) or 0) > 3600000 then
  redis.call('ZADD', kDue, NOW + aret, aid)
  upd[#upd + 1] = 'si'; upd[#upd + 1] = ms(NOW)
end
if gen == 0 then
  cur = cur + 1
  -- An older Poll may still be held: wake it so it finds itself superseded.
  if pu > NOW then notify(WATCH_AGENT .. aid) end
  upd[#upd + 1] = 'gen'; upd[#upd + 1] = cur
  upd[#upd + 1] = 'pu'; upd[#upd + 1] = ms(NOW + hold)
end
-- How many of the queue and the undelivered cancels exist (Redis drops an
-- emptied sorted set).
local have = redis.call('EXISTS', KEYS[2], KEYS[4])
if have == 0 then
  redis.call('HSET', KEYS[1], unpack(upd))
  publish()
  return {'OK', cur, {}, {}}
end
-- leased holds each leased task's id and its record as it is now (answered
-- as it is, not read again).
local leased, queued = {}, false
while #leased < max do
  local want = max - #leased
  local ids = redis.call('ZRANGE', KEYS[2], 0, want - 1)
  if #ids == 0 then break end
  queued = true
  redis.call('ZREM', KEYS[2], unpack(ids))
  for _, tid in ipairs(ids) do
    local tk = kTask(tid)
    local t = record(tk)
    if tonumber(t.st) == PENDING then
      if NOW >= (tonumber(t.db) or 0) then
        local ns, why = deliveryExpiryEnd(tonumber(t.att) or 0, t.ttx or nil, t.exr or nil)
        endTask(tid, ns, why, t)
      else
        local att = (tonumber(t.att) or 0) + 1
        local le, dl = NOW + lease, NOW + tonumber(t.to)
        redis.call('ZADD', KEYS[3], 0, tid)
        moved(tid, t.job, PENDING, RUNNING, t.cj == '1')
        t.st, t.ua, t.att, t.le, t.dl = ms(RUNNING), ms(NOW), ms(att), ms(le), ms(dl)
        t.hist = histAdd(t.hist, RUNNING, string.format(FMT_LEASED, att), att)
        redis.call('HSET', tk, 'st', t.st, 'ua', t.ua, 'att', t.att, 'le', t.le, 'dl', t.dl, 'hist', t.hist)
        -- reindex, from what is known: due at the lease expiry or the deadline.
        local due = le
        if t.tmo ~= '1' and dl < due then due = dl end
        redis.call('ZADD', kDue, due, tid)
        leased[#leased + 1] = tid
        leased[#leased + 1] = t
      end
    end
  end
  -- Fewer than asked for: the queue is empty now (nothing here adds to it).
  if #ids < want then break end
end
local cancels = {}
-- With one of the two keys, and tasks in the queue, there are no cancels.
local cids = {}
if have == 2 or not queued then cids = redis.call('ZRANGE', KEYS[4], 0, -1) end
if #cids > 0 then
  for _, tid in ipairs(cids) do
    local tk = kTask(tid)
    local t = redis.call('HMGET', tk, 'st', 'att', 'cr')
    if tonumber(t[1]) == RUNNING and t[3] == '1' then
      redis.call('HSET', tk, 'cd', '1')
      cancels[#cancels + 1] = tid
      cancels[#cancels + 1] = t[2]
    end
  end
  redis.call('DEL', KEYS[4])
end
if #leased > 0 or #cancels > 0 then upd[#upd + 1] = 'pu'; upd[#upd + 1] = '0' end
redis.call('HSET', KEYS[1], unpack(upd))
publish()
local out = {'OK', cur, cancels, advanceList()}
for i = 1, #leased - 1, 2 do
  local f = {}
  for k, v in pairs(leased[i + 1]) do f[#f + 1] = k; f[#f + 1] = v end
  out[#out + 1] = leased[i]
  out[#out + 1] = f
end
return out
`)

// heartbeatScript extends the leases of the attempts an agent names and holds.
// A stopping agent's last one (stopped) makes it offline at once: its Poll hold
// ends (a new poll generation: the held Poll, woken, finds itself superseded and
// changes nothing) and it is marked stopped (so) until its next call.
//
// KEYS[1] agent record, KEYS[2] running, KEYS[3] undelivered cancels
// ARGV[4] agent id, [5] secret hash, [6] lease ms, [7] draining (0/1),
// [8] stopped (0/1), [9..] task id, attempt pairs
// returns {'OK', {tid, attempt, ...} to cancel, {tid, attempt, ...} to abandon}
var heartbeatScript = shardScript("heartbeat", `
local lease = tonumber(ARGV[6])
local f, aerr = auth(KEYS[1], ARGV[5], 'pu')
if aerr then return aerr end
if ARGV[8] == '1' then
  redis.call('HINCRBY', KEYS[1], 'gen', 1)
  if (tonumber(f[5]) or 0) > NOW then
    notify(WATCH_AGENT .. ARGV[4])
    publish()
  end
  redis.call('HSET', KEYS[1], 'seen', ms(NOW), 'dr', ARGV[7], 'so', '1', 'pu', '0')
  redis.call('ZREM', kOnline, ARGV[4])
else
  redis.call('HSET', KEYS[1], 'seen', ms(NOW), 'dr', ARGV[7], 'so', '0')
  seen(ARGV[4])
end
local cancel, abandon = {}, {}
for i = 9, #ARGV - 1, 2 do
  local tid, att = ARGV[i], ARGV[i + 1]
  local held = false
  if redis.call('ZSCORE', KEYS[2], tid) then
    local tk = kTask(tid)
    local t = redis.call('HMGET', tk, 'att', 'le', 'cr', 'st', 'dl', 'tmo')
    if t[1] == att and tonumber(t[4]) == RUNNING then
      held = true
      local exp = NOW + lease
      if exp > (tonumber(t[2]) or 0) then
        redis.call('HSET', tk, 'le', ms(exp))
        -- reindex, from what is known: due at the lease expiry or the deadline.
        local due, dl = exp, tonumber(t[5])
        if t[6] ~= '1' and dl and dl < due then due = dl end
        redis.call('ZADD', kDue, due, tid)
      end
      if t[3] == '1' then
        redis.call('HSET', tk, 'cd', '1')
        redis.call('ZREM', KEYS[3], tid)
        cancel[#cancel + 1] = tid
        cancel[#cancel + 1] = att
      end
    end
  end
  if not held then
    abandon[#abandon + 1] = tid
    abandon[#abandon + 1] = att
  end
end
return {'OK', cancel, abandon}
`)

// returnScript hands back attempts an agent holds but will not run (see
// store.ReturnEnd): each goes back to the agent's queue as attempt - 1, or ends
// when it was asked to stop. Attempts the agent does not hold are left alone.
//
// KEYS[1] agent record, KEYS[2] running, KEYS[3] queue, KEYS[4] undelivered cancels
// ARGV[4] agent id, [5] secret hash, [6..] task id, attempt pairs
// returns {'OK', {tid, attempt, ...} handed back, {job ids to advance}}
var returnScript = shardScript("return", `
local aid = ARGV[4]
local af, aerr = auth(KEYS[1], ARGV[5], 'so')
if aerr then return aerr end
redis.call('HSET', KEYS[1], 'seen', ms(NOW))
if af[5] ~= '1' then seen(aid) end
local out = {}
for i = 6, #ARGV - 1, 2 do
  local tid, att = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[2], tid) then
    local tk = kTask(tid)
    local t = redis.call('HMGET', tk, 'att', 'st', 'tmo', 'cr', 'crr', 'ttl', 'job', 'cj')
    if t[1] == att and tonumber(t[2]) == RUNNING then
      local n = tonumber(att)
      local new, reason = returnEnd(t[3] == '1', t[4] == '1', t[5], n)
      if new ~= PENDING then
        endTask(tid, new, reason)
      else
        redis.call('ZREM', KEYS[2], tid)
        redis.call('ZREM', KEYS[4], tid)
        redis.call('HDEL', tk, 'le', 'dl', 'cd')
        setState(tk, tid, t[7], t[8] == '1', RUNNING, PENDING, reason, n, nil, {'att', n - 1, 'db', ms(NOW + tonumber(t[6]))})
        redis.call('ZADD', KEYS[3], 0, tid)
        notify(WATCH_AGENT .. aid)
        reindex(tk, tid)
      end
      out[#out + 1] = tid
      out[#out + 1] = att
    end
  end
end
publish()
return {'OK', out, advanceList()}
`)

// reportScript ends an attempt with the agent's report; the output the handler
// returned is added to the attempt's stdout.
//
// KEYS[1] agent record, KEYS[2] task record, KEYS[3] output head, KEYS[4] output tail
// ARGV[4] agent id, [5] secret hash, [6] task id, [7] attempt, [8] outcome (1/2),
// [9] output, [10] exit code, [11] error, [12] output truncated (0/1), [13] output
// size, [14] output cap, [15] the agent stopped it at its timeout (0/1)
// returns {'OK', state, {job ids to advance}, the finished record as written
// (field, value pairs; empty when it keeps output in lists, or nothing ended)}
// or an error
var reportScript = shardScript("report", `
local tid, att, outcome, exit = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[10])
local _, aerr = auth(KEYS[1], ARGV[5])
if aerr then return aerr end
redis.call('HSET', KEYS[1], 'seen', ms(NOW), 'so', '0')
seen(ARGV[4])
local tk = KEYS[2]
-- The record is read once and written once, compacted (endTask).
local t = record(tk)
local st = tonumber(t.st)
if not st then return fail(E_NOT_FOUND, string.format(FMT_TASK_NOT_FOUND, q(tid))) end
local ro = 0
if t.rep == '1' then ro = tonumber(t.ro) or 0 end
local check = checkReport(tid, st, tonumber(t.att) or 0, ro, tonumber(t.ec) or 0, att, outcome, exit)
if check == true then return {'OK', st, {}} end
if check then return check end
reportOutput(tk, KEYS[3], KEYS[4], att, ARGV[9], tonumber(ARGV[14]), t)
if #ARGV[9] > 0 then notify(WATCH_OUTPUT .. tid) end
t.otr, t.osz, t.ec, t.err, t.rep, t.ro = ARGV[12], ARGV[13], ARGV[10], ARGV[11], '1', ms(outcome)
local new, reason = reportEnd(outcome, t.tmo == '1', t.cr == '1', t.crr or nil, tonumber(t.dl) or 0, t.tor or '', ARGV[15] == '1', NOW)
endTask(tid, new, reason, t)
publish()
return {'OK', new, advanceList(), ended or {}}
`)

// appendOutputScript adds a chunk of a running attempt's output (store.CheckAppend
// says which chunks are refused; one sent again is acknowledged, not stored).
//
// KEYS[1] agent record, KEYS[2] task record, KEYS[3] output head, KEYS[4] output tail
// ARGV[4] agent id, [5] secret hash, [6] task id, [7] attempt, [8] stream (1/2),
// [9] offset, [10] data, [11] output cap
// returns {'OK', bytes of the stream held for the attempt} or an error
var appendOutputScript = shardScript("appendOutput", `
local tid, att, s, off, data = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local _, aerr = auth(KEYS[1], ARGV[5])
if aerr then return aerr end
local t = redis.call('HMGET', KEYS[2], 'st', 'att', unpack(OUTPUT_FIELDS))
local st = tonumber(t[1])
if not st then return fail(E_NOT_FOUND, string.format(FMT_TASK_NOT_FOUND, q(tid))) end
local f = {}
for i = 3, #t do f[i - 2] = t[i] end
local held = 0
if tonumber(f[1]) == att and (s == STREAM_STDOUT or s == STREAM_STDERR) then held = tonumber(f[3 + s]) or 0 end
local skip = checkAppend(tid, st, tonumber(t[2]) or 0, att, s, held, off, #data)
if type(skip) == 'table' then return skip end
if skip < #data then
  appendOutput(KEYS[2], KEYS[3], KEYS[4], att, s, string.sub(data, skip + 1), tonumber(ARGV[11]), f)
  held = off + #data
  notify(WATCH_OUTPUT .. tid)
  publish()
end
return {'OK', ms(held)}
`)

// createTasksScript creates the tasks of one job in one shard; a task that exists
// already (a retried dispatch) is left as it is. A fan-out's tasks keep no
// payload or job signature of their own (cj: they are in the job record).
//
// KEYS[1] the shard's due index (for routing)
// ARGV[4] max pending per agent, [5] job id, [6] type, [7] payload, [8] max attempts,
// [9] timeout ms, [10] delivery TTL ms, [11] has rollout limits (0/1), [12] hold (0/1),
// [13] single target (0/1), [14] timeout reason, [15] delivery TTL as Go writes it (ttx),
// [16] payload in the job record (0/1), [17] the job's signature (jobSig, when the
// payload is not in the job record), [18] refuse a single target that does not
// handle the type (0/1), [19..] task id, agent id pairs
// returns {'OK', the shard's counts of the job (field, value pairs: a
// fan-out's as it keeps them, jc; a single-agent job's, which keeps none, its
// task in its state, see moved)}, or for a single target an error when the agent is unknown, revoked, its queue is full
// or (with [18]) it does not handle the type — fail(E_TYPE_UNHANDLED, its types
// as JSON) — and then nothing is created
var createTasksScript = shardScript("createTasks", `
local maxPending, job, single, hold = tonumber(ARGV[4]), ARGV[5], ARGV[13] == '1', ARGV[12] == '1'
local ttl, counted = tonumber(ARGV[10]), ARGV[16] == '1'
-- The tasks of a job that keeps no counts, in their states (n: all of them).
local states = {n = 0}
local function count(st)
  states.n = states.n + 1
  states[st] = (states[st] or 0) + 1
end
local hist = histAdd(nil, PENDING, REASON_DISPATCHED, 0)
local exr = string.format(FMT_EXPIRED, ARGV[15])
for i = 19, #ARGV - 1, 2 do
  local tid, aid = ARGV[i], ARGV[i + 1]
  -- A retried dispatch names the same tasks: one made before stays as it is
  -- (and, in a job that keeps no counts, is counted in its state).
  local made
  if counted then
    made = redis.call('EXISTS', kTask(tid)) == 1
  else
    local st = redis.call('HGET', kTask(tid), 'st')
    made = st ~= false
    if made then count(tonumber(st)) end
  end
  if not made then
    local a = redis.call('HMGET', kAgent(aid), 'reg', 'rev', 'types')
    local qlen = redis.call('ZCARD', kQueue(aid))
    if single then
      if not a[1] then return fail(E_NOT_FOUND, string.format(FMT_AGENT_NOT_FOUND, q(aid))) end
      if a[2] then return fail(E_PRECONDITION, string.format(FMT_AGENT_IS_REVOKED, q(aid))) end
      if qlen >= maxPending then
        return fail(E_EXHAUSTED, string.format(FMT_AGENT_QUEUE_FULL, q(aid), qlen))
      end
      if ARGV[18] == '1' then
        local types = a[3] or ''
        if not handlesType(types, ARGV[6]) then return fail(E_TYPE_UNHANDLED, types) end
      end
    end
    local refused
    if not a[1] then
      refused = REASON_AGENT_NOT_FOUND
    elseif a[2] then
      refused = REASON_AGENT_REVOKED
    elseif qlen >= maxPending then
      refused = string.format(FMT_QUEUE_FULL, qlen)
    end
    -- The record is written whole at once: made PENDING (its history's first
    -- change), and held or released.
    local tk = kTask(tid)
    local f = {'job', job, 'type', ARGV[6], 'att', 0, 'max', ARGV[8], 'to', ARGV[9], 'ttl', ARGV[10],
      'lim', ARGV[11], 'ca', ms(NOW), 'tor', ARGV[14], 'ttx', ARGV[15], 'exr', exr,
      'st', PENDING, 'ua', ms(NOW), 'hist', hist}
    if counted then
      f[#f + 1], f[#f + 2] = 'cj', '1'
    else
      f[#f + 1], f[#f + 2], f[#f + 3], f[#f + 4] = 'pl', ARGV[7], 'js', ARGV[17]
    end
    if refused then
    elseif hold then
      f[#f + 1], f[#f + 2] = 'held', '1'
    else
      f[#f + 1], f[#f + 2] = 'db', ms(NOW + ttl)
    end
    redis.call('HSET', tk, unpack(f))
    redis.call('ZADD', kAll, 0, tid)
    redis.call('ZADD', kAgentTasks(aid), 0, tid)
    moved(tid, job, nil, PENDING, counted)
    if refused then
      endTask(tid, CANCELED, refused)
    elseif not hold then
      -- As release does, the record written above.
      redis.call('ZADD', kQueue(aid), 0, tid)
      redis.call('ZADD', kDue, NOW + ttl, tid)
      notify(WATCH_AGENT .. aid)
    end
    if not counted then count(refused and CANCELED or PENDING) end
  end
end
publish()
if counted then return {'OK', redis.call('HGETALL', kJobCounts(job))} end
local out = {}
for k, v in pairs(states) do out[#out + 1], out[#out + 2] = tostring(k), tostring(v) end
return {'OK', out}
`)

// releaseScript releases held tasks of a rollout job to their agents' queues.
// A task no longer held (released or ended meanwhile) is left alone.
//
// KEYS[1] the shard's due index (for routing)
// ARGV[4..] task ids
// returns {'OK', released count}
var releaseScript = shardScript("release", `
local n = 0
for i = 4, #ARGV do
  local tid = ARGV[i]
  local tk = kTask(tid)
  local t = redis.call('HMGET', tk, 'st', 'held', 'ttl')
  if tonumber(t[1]) == PENDING and t[2] == '1' then
    release(tk, tid, tonumber(t[3]))
    n = n + 1
  end
end
publish()
return {'OK', n}
`)

// cancelScript does what a cancel mode (store.CancelMode) does to tasks of one
// shard: CANCEL_MODE_TASK (CancelTask, one task) fails on an unknown or finished
// task and answers the task.
//
// KEYS[1] the shard's due index (for routing)
// ARGV[4] reason, [5] mode, [6..] task ids
// returns {'OK', {job ids to advance}, task fields (CANCEL_MODE_TASK)}
var cancelScript = shardScript("cancel", `
local reason, mode = ARGV[4], tonumber(ARGV[5])
for i = 6, #ARGV do
  local tid = ARGV[i]
  local tk = kTask(tid)
  local t = redis.call('HMGET', tk, 'st', 'job')
  local st = tonumber(t[1])
  if not st then
    if mode == CANCEL_MODE_TASK then return fail(E_NOT_FOUND, string.format(FMT_TASK_NOT_FOUND, q(tid))) end
  else
    local act = cancelAction(mode, st)
    if act == CANCEL_END then
      endTask(tid, CANCELED, reason)
    elseif act == CANCEL_REQUEST then
      requestCancel(tk, tid, t[2], reason)
    elseif act == CANCEL_REFUSE then
      return fail(E_PRECONDITION, string.format(FMT_TASK_ENDED, q(tid), STATE_NAMES[st]))
    end
  end
end
publish()
local out = {'OK', advanceList()}
if mode == CANCEL_MODE_TASK then out[3] = redis.call('HGETALL', kTask(ARGV[6])) end
return out
`)

// revokeScript revokes an agent: its tokens stop working and its pending (held
// included) and running tasks end CANCELED. Revoking twice changes nothing.
//
// KEYS[1] agent record, KEYS[2] the agent's task list
// ARGV[4] agent id, [5] reason
// returns {'OK', {job ids to advance}} or fail(E_NOT_FOUND)
var revokeScript = shardScript("revoke", `
local aid, reason = ARGV[4], ARGV[5]
local a = redis.call('HMGET', KEYS[1], 'reg', 'rev')
if not a[1] then return fail(E_NOT_FOUND, string.format(FMT_AGENT_NOT_FOUND, q(aid))) end
if a[2] then return {'OK', {}} end
redis.call('HSET', KEYS[1], 'rev', ms(NOW), 'rr', reason)
redis.call('HDEL', KEYS[1], 'cur', 'next')
redis.call('ZREM', kOnline, aid)
redis.call('SADD', kRevoked, aid)
for _, tid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  endTask(tid, CANCELED, reason)
end
notify(WATCH_AGENT .. aid)
publish()
return {'OK', advanceList()}
`)

// agentViewScript reads an agent with its queue length and running attempts.
//
// KEYS[1] agent record, KEYS[2] queue, KEYS[3] running
// ARGV[4] agent id
// returns {'OK', agent fields, pending count, {tid, attempt, ...}} or fail(E_NOT_FOUND)
var agentViewScript = shardScript("agentView", `
local a = redis.call('HGETALL', KEYS[1])
if #a == 0 then return fail(E_NOT_FOUND, string.format(FMT_AGENT_NOT_FOUND, q(ARGV[4]))) end
local run = {}
for _, tid in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  run[#run + 1] = tid
  run[#run + 1] = redis.call('HGET', kTask(tid), 'att') or '0'
end
return {'OK', a, redis.call('ZCARD', KEYS[2]), run}
`)

// reapScript does the due time-driven work of one shard: delivery TTLs, execution
// deadlines, lease expiries and retention. Each entry of the due index is re-checked
// against the task record, so any number of replicas may run it at once and each
// change happens once.
//
// The due index also holds agents (their ids: task ids start with t, agent ids
// with a), each at the time it may have been unseen for the agent retention: one
// still unseen is removed with its tokens and queues, its live tasks ending
// CANCELED; its finished tasks stay until their own retention.
//
// KEYS[1] the shard's due index
// ARGV[4] at most this many entries per call, [5] agent retention ms (0: never),
// [6] the reason the tasks of a removed agent end with
// returns {'OK', more (0/1), {job ids to advance}, {agent ids removed}}
var reapScript = shardScript("reap", `
local limit, aret, agone = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local ids = redis.call('ZRANGE', kDue, '-inf', ms(NOW), 'BYSCORE', 'LIMIT', 0, limit)
local removed = {}
local finMore = false

-- retain drops the tasks that finished before NOW - RET, oldest first, but
-- none an export has not yet read (the shard's export position, kExported,
-- while it exists: it expires when no export has moved it for a day), and puts
-- the stream back in the due index at its next oldest entry's time.
local function retain()
  local upto = ms(NOW - RET)
  local xp = redis.call('GET', kExported)
  local held = xp and streamBefore(xp, upto)
  if held then upto = xp end
  local fin = redis.call('XRANGE', kFin, '-', upto, 'COUNT', limit)
  if #fin > 0 then
    local done = {}
    for i, e in ipairs(fin) do
      local tid = e[2][2]
      local t = redis.call('HMGET', kTask(tid), 'st', 'job', 'cj')
      local st = tonumber(t[1])
      if st and st > RUNNING then dropEnded(tid, st, t[2], t[3] == '1') end
      done[i] = e[1]
    end
    redis.call('XDEL', kFin, unpack(done))
  end
  finMore = #fin == limit
  local first = redis.call('XRANGE', kFin, '-', '+', 'COUNT', 1)[1]
  if not first then
    redis.call('DEL', kFin)
    redis.call('ZREM', kDue, FIN_DUE)
  elseif held and not finMore then
    redis.call('ZADD', kDue, NOW + 10000, FIN_DUE) -- the export's turn first
  else
    redis.call('ZADD', kDue, tonumber(string.match(first[1], '^(%d+)')) + RET, FIN_DUE)
  end
end

for _, tid in ipairs(ids) do
  if tid == FIN_DUE then
    retain()
  elseif string.sub(tid, 1, 1) == 'a' then
    -- An agent's entry (see registerScript): remove it if still unseen.
    local aid = tid
    local a = redis.call('HMGET', kAgent(aid), 'reg', 'seen')
    if not a[1] then
      redis.call('ZREM', kDue, aid)
    elseif agentExpired(tonumber(a[2]) or 0, NOW, aret) then
      for _, t in ipairs(redis.call('ZRANGE', kAgentTasks(aid), 0, -1)) do
        endTask(t, CANCELED, agone)
      end
      redis.call('DEL', kAgent(aid), kQueue(aid), kRun(aid), kCancels(aid))
      redis.call('ZREM', kDue, aid)
      redis.call('ZREM', kOnline, aid)
      redis.call('SREM', kRevoked, aid)
      notify(WATCH_AGENT .. aid)
      removed[#removed + 1] = aid
    elseif aret > 0 then
      redis.call('ZADD', kDue, (tonumber(a[2]) or 0) + aret, aid)
    else
      redis.call('ZREM', kDue, aid)
    end
  else
    local tk = kTask(tid)
    local aid = agentOf(tid)
    local t = redis.call('HMGET', tk, 'st', 'held', 'db', 'dl', 'le', 'tmo', 'cr', 'crr', 'att', 'max', 'tor', 'exr', 'job', 'ttx', 'cj')
    local st = tonumber(t[1])
    if not st then
      -- The record expired by itself (reaping had stopped): drop what indexes it.
      redis.call('DEL', kOutHead(tid), kOutTail(tid))
      redis.call('ZREM', kDue, tid)
      redis.call('ZREM', kAll, tid)
      if aid then redis.call('ZREM', kAgentTasks(aid), tid) end
      for n = 1, 8 do redis.call('ZREM', kState(n), tid) end
    elseif st > RUNNING then
      -- Retention as it was kept before the finished stream.
      dropEnded(tid, st, t[13], t[15] == '1')
    elseif st == PENDING then
      if t[2] ~= '1' and NOW >= (tonumber(t[3]) or 0) then
        endTask(tid, deliveryExpiryEnd(tonumber(t[9]) or 0, t[14] or nil, t[12] or nil))
      else
        reindex(tk, tid)
      end
    else
      local tmo, cr, crr = t[6] == '1', t[7] == '1', t[8]
      if not tmo and NOW >= (tonumber(t[4]) or 0) then
        tmo, cr, crr = true, true, t[11] or '' -- tor, written with the record
        redis.call('HSET', tk, 'tmo', '1', 'cr', '1', 'crr', crr, 'ua', ms(NOW))
        redis.call('HDEL', tk, 'cd')
        redis.call('ZADD', kCancels(aid), 0, tid)
        notify(WATCH_AGENT .. aid); notify(WATCH_TASK .. tid)
      end
      if NOW >= (tonumber(t[5]) or 0) then
        redis.call('HINCRBY', kCounters, 'lx', 1)
        local att = tonumber(t[9]) or 0
        local new, reason = leaseExpiryEnd(tmo, cr, crr, att, tonumber(t[10]) or 1)
        if new ~= PENDING then
          endTask(tid, new, reason)
        else
          local ttl = tonumber(redis.call('HGET', tk, 'ttl'))
          redis.call('ZREM', kRun(aid), tid)
          redis.call('ZREM', kCancels(aid), tid)
          redis.call('HDEL', tk, 'le', 'dl', 'cd')
          redis.call('HSET', tk, 'db', ms(NOW + ttl))
          redis.call('ZADD', kQueue(aid), 0, tid)
          setState(tk, tid, t[13], t[15] == '1', RUNNING, PENDING, reason, att)
          notify(WATCH_AGENT .. aid)
          reindex(tk, tid)
        end
      else
        reindex(tk, tid)
      end
    end
  end
end
publish()
local more = 0
if #ids == limit or finMore then more = 1 end
return {'OK', more, advanceList(), removed}
`)

// readOutputScript reads what a read of a task's output from a cursor needs
// (store.ReadFrom assembles it): the task's state and output fields, every head
// piece when the cursor is before the head's end, and the tail's pieces from the
// one that holds the cursor (or the tail's start) to the last, found from the
// end, so a reader that keeps up reads only the newest pieces. A finished
// task's output kept in its record (oi, see compact) is its head.
//
// KEYS[1] task record, KEYS[2] output head, KEYS[3] output tail
// ARGV[1] cursor
// returns {'OK', {st, oa, ob, on, o1, o2, ohb, ohn, otb, otn}, head pieces, tail
// pieces, the cursor of the first tail piece's first byte}, or {'OK'} when the
// task does not exist
var readOutputScript = newScript("readOutput", `
local t = redis.call('HMGET', KEYS[1], 'st', 'oa', 'ob', 'on', 'o1', 'o2', 'ohb', 'ohn', 'otb', 'otn')
if not t[1] then return {'OK'} end
local c = tonumber(ARGV[1])
local ob, n, hb, tb = tonumber(t[3]) or 0, tonumber(t[4]) or 0, tonumber(t[7]) or 0, tonumber(t[9]) or 0
local e = ob + n
local head, tail, from = {}, {}, e
if c < ob + hb then
  head = redis.call('LRANGE', KEYS[2], 0, -1)
  if #head == 0 then
    local oi = redis.call('HGET', KEYS[1], 'oi')
    if oi then head = {oi} end
  end
end
if c < e and tb > 0 then
  local want = math.max(c, e - tb)
  local k = 8
  while true do
    local got = redis.call('LRANGE', KEYS[3], -k, -1)
    local size = 0
    for _, p in ipairs(got) do size = size + #p - 1 end
    if e - size <= want or #got < k then
      from = e - size
      local i = 1
      while i <= #got and from + #got[i] - 1 <= want do
        from = from + #got[i] - 1
        i = i + 1
      end
      for j = i, #got do tail[#tail + 1] = got[j] end
      break
    end
    k = k * 2
  end
end
return {'OK', t, head, tail, string.format('%d', from)}
`)

// taskScript reads a task record with its kept output, at one moment; output
// a finished task keeps in its record (oi, see compact) is answered as the head.
//
// KEYS[1] task record, KEYS[2] output head, KEYS[3] output tail
// returns {'OK', record fields, head pieces, tail pieces}
var taskScript = newScript("task", `
local f = redis.call('HGETALL', KEYS[1])
-- The lists are read only when the record says they hold pieces (ohn, otn).
local ohn, otn, oi
for i = 1, #f - 1, 2 do
  local k = f[i]
  if k == 'ohn' then ohn = f[i + 1] elseif k == 'otn' then otn = f[i + 1] elseif k == 'oi' then oi = f[i + 1] end
end
local head, tail = {}, {}
if oi then
  head = {oi}
elseif (tonumber(ohn) or 0) > 0 then
  head = redis.call('LRANGE', KEYS[2], 0, -1)
end
if (tonumber(otn) or 0) > 0 then tail = redis.call('LRANGE', KEYS[3], 0, -1) end
return {'OK', f, head, tail}
`)

// jobCreateScript writes a job record unless it exists, so two attempts of one
// dispatch (a retry while the first still runs) agree on one task list.
//
// KEYS[1] job record
// ARGV field, value pairs, 'tasks' among them
// returns {'OK', the record's task list: the one given, or the one stored before}
var jobCreateScript = newScript("jobCreate", `
if redis.call('EXISTS', KEYS[1]) == 1 then return {'OK', redis.call('HGET', KEYS[1], 'tasks') or ''} end
local tasks = ''
for i = 1, #ARGV - 1, 2 do
  if ARGV[i] == 'tasks' then tasks = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return {'OK', tasks}
`)

// jobDraftScript writes a fan-out's job record, not yet committed (made 0),
// unless it exists, so two attempts of one dispatch agree on one task list; a
// new record expires after ARGV[1] ms unless committed or abandoned (both make
// it permanent), so one whose dispatch died before its tasks existed goes away.
//
// KEYS[1] job record
// ARGV[1] ms to live until committed, [2..] field, value pairs, 'tasks' among them
// returns {'OK', the record's task list: the one given, or the one stored before}
var jobDraftScript = newScript("jobDraft", `
if redis.call('EXISTS', KEYS[1]) == 1 then return {'OK', redis.call('HGET', KEYS[1], 'tasks') or ''} end
local tasks, f = '', {}
for i = 2, #ARGV - 1, 2 do
  if ARGV[i] == 'tasks' then tasks = ARGV[i + 1] end
  f[#f + 1] = ARGV[i]
  f[#f + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[1], unpack(f))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {'OK', tasks}
`)

// jobCommitScript commits a fan-out: from now on its tasks are the job's and
// are released; a job abandoned meanwhile (see jobAbandonScript) stays so.
//
// KEYS[1] job record
// returns 'made' (committed now or before), 'abandoned', or 'gone'
var jobCommitScript = newScript("jobCommit", `
local f = redis.call('HMGET', KEYS[1], 'abandoned', 'ca', 'made')
if not f[2] then return 'gone' end
if f[1] == '1' then return 'abandoned' end
if f[3] ~= '1' then
  redis.call('HSET', KEYS[1], 'made', '1')
  redis.call('PERSIST', KEYS[1])
end
return 'made'
`)

// jobAbandonScript abandons a fan-out that was not committed: none of its
// tasks will run (the caller ends them); a committed one is left as it is.
//
// KEYS[1] job record
// ARGV[1] the reason its tasks end with
// returns 'abandoned' (now or before), 'made', or 'gone'
var jobAbandonScript = newScript("jobAbandon", `
local f = redis.call('HMGET', KEYS[1], 'made', 'ca', 'abandoned')
if not f[2] then return 'gone' end
if f[1] == '1' then return 'made' end
if f[3] ~= '1' then
  redis.call('HSET', KEYS[1], 'abandoned', '1', 'canceled', '1', 'crs', ARGV[1])
  redis.call('PERSIST', KEYS[1])
end
return 'abandoned'
`)

// jobStepScript moves a rollout job's bookkeeping forward if no other replica did
// so since it was read (compare-and-set on the released and done prefixes).
//
// KEYS[1] job record
// ARGV[1] expected rel, [2] expected dp, [3] new rel, [4] new dp, [5] new dpf,
// [6] stop the job (0/1), [7] the stop reason
// returns 1 if applied, 0 if the job moved on (the caller re-reads), -1 if gone
var jobStepScript = newScript("jobStep", `
local f = redis.call('HMGET', KEYS[1], 'rel', 'dp')
if not f[1] then return -1 end
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'rel', ARGV[3], 'dp', ARGV[4], 'dpf', ARGV[5])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'canceled', '1', 'crs', ARGV[7]) end
return 1
`)

// jobCancelScript marks a job canceled with its reason, unless it is already
// (a script so that it runs while Redis is full: see full.go).
//
// KEYS[1] job record
// ARGV[1] the reason
// returns 1 if marked now, 0 if it was, -1 if the job is gone
var jobCancelScript = newScript("jobCancel", `
local f = redis.call('HMGET', KEYS[1], 'ca', 'canceled')
if not f[1] then return -1 end
if f[2] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'canceled', '1', 'crs', ARGV[1])
return 1
`)

// exportClaimScript takes or renews the export claim (store.Exporter): the
// record names its owner (o) and when its claim ends (u, ms).
//
// KEYS[1] the claim record
// ARGV[1] owner, [2] now ms, [3] lease ms (0: renew for as long as it had)
// returns 1 if owner holds the claim now, else 0
var exportClaimScript = newScript("exportClaim", `
local f = redis.call('HMGET', KEYS[1], 'o', 'u', 'l')
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
if f[1] and f[1] ~= ARGV[1] and (tonumber(f[2]) or 0) > now then return 0 end
if lease == 0 then
  if f[1] ~= ARGV[1] then return 0 end
  lease = tonumber(f[3]) or 0
end
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'u', string.format('%d', now + lease), 'l', string.format('%d', lease))
return 1
`)

// dropJobScript deletes a job record and, if it still names this job, its
// idempotency key is returned for the caller to clear.
//
// KEYS[1] job record
// returns the job's idempotency key (empty if none), or false if the job is gone
var dropJobScript = newScript("dropJob", `
local idem = redis.call('HGET', KEYS[1], 'idem')
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('DEL', KEYS[1])
return idem or ''
`)

// dropJobTasksScript drops, for the count of jobs kept (keepjobs.go), a
// finished job's tasks in one shard: each finished one an export running has
// written (unexported), with its entry in the shard's stream of finished
// tasks. A live one — never, for a finished job — or one not yet written stays.
//
// KEYS[1] the shard's due index
// ARGV[4..] task ids
// returns {'OK', how many stay}
var dropJobTasksScript = shardScript("dropJobTasks", `
local xp = redis.call('GET', kExported)
local stay = 0
for i = 4, #ARGV do
  local tid = ARGV[i]
  local t = redis.call('HMGET', kTask(tid), 'st', 'job', 'fe', 'ca', 'cj')
  local st = tonumber(t[1])
  if st and (st <= RUNNING or unexported(xp, t[3], t[4])) then
    stay = stay + 1
  elseif st then
    dropEnded(tid, st, t[2], t[5] == '1')
    if t[3] then redis.call('XDEL', kFin, finEntry(t[3], t[4])) end
  end
end
return {'OK', stay}
`)

// jobsFinishedScript lists finished jobs for the count of jobs kept, each at
// the time it finished unless listed before.
//
// KEYS[1] finished jobs (jobsFinished)
// ARGV time, job id pairs
// returns how many finished jobs are listed
var jobsFinishedScript = newScript("jobsFinished", `
for i = 1, #ARGV - 1, 2 do redis.call('ZADD', KEYS[1], 'NX', ARGV[i], ARGV[i + 1]) end
return redis.call('ZCARD', KEYS[1])
`)

// oldestJobsScript returns the oldest finished jobs past the count kept,
// counted and read at once, so a replica never drops by a count another
// replica's drops have made stale.
//
// KEYS[1] finished jobs (jobsFinished)
// ARGV[1] the count kept, [2] at most this many ids
// returns the ids, oldest first
var oldestJobsScript = newScript("oldestJobs", `
local over = math.min(redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1]), tonumber(ARGV[2]))
if over <= 0 then return {} end
return redis.call('ZRANGE', KEYS[1], 0, over - 1)
`)

// jobGoneScript takes a job the count of jobs kept dropped off the global
// indexes and moves the creation time of the newest dropped job on.
//
// KEYS[1] jobs, [2] jobsAdvance, [3] jobsRetain, [4] jobsFinished, [5] jobsCut
// ARGV[1] job id, [2] the newest creation time (µs, as ids hold it) of the job and its tasks
var jobGoneScript = newScript("jobGone", `
for i = 1, 4 do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('ZADD', KEYS[5], 'GT', ARGV[2], 'c')
return 1
`)

// setScript sets a key (for writes that must go on while Redis is full).
//
// KEYS[1] key, ARGV[1] value
var setScript = newScript("set", `
redis.call('SET', KEYS[1], ARGV[1])
return 1
`)

// replayClaimScript claims a registration request key for an agent id for the
// replay window (store.Store.RegisterAgent), unless a claim still in its window
// holds it. The window is kept in the record, by the store's clock, not in the
// key's expiry (Redis's clock), which only drops the record some time after.
//
// KEYS[1] the key's record, "<agent id> <end of window, ms>"
// ARGV[1] now ms, [2] agent id, [3] end of window (ms), [4] the record's lifetime (ms)
// returns {'OK', ”} when claimed, or {'OK', agent id} of the claim that holds it
var replayClaimScript = newScript("replayClaim", `
local id = replayOf(redis.call('GET', KEYS[1]), tonumber(ARGV[1]))
if id then return {'OK', id} end
redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ARGV[3], 'PX', ARGV[4])
return {'OK', ''}
`)

// delIfScript deletes a key if it holds the given value.
//
// KEYS[1] key, ARGV[1] value
// returns 1 if deleted
var delIfScript = newScript("delIf", `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// enrollCheckScript checks a stored enrollment token and, when asked, consumes a use.
// ARGV[3] is the mode: '1' consume a use, '0' only check, 'r' check for a replayed
// registration (enrollReplayCheck).
//
// KEYS[1] enrollment token record
// ARGV[1] now ms, [2] secret hash, [3] consume (0/1), [4] token id
// returns {'OK'} or fail(E_UNAUTHENTICATED)
var enrollCheckScript = newScript("enrollCheck", `
local f = redis.call('HMGET', KEYS[1], 'hash', 'rev', 'exp', 'max', 'uses')
if not f[1] or f[1] ~= ARGV[2] then return fail(E_UNAUTHENTICATED, MSG_ENROLL_TOKEN) end
local check = enrollCheck
if ARGV[3] == 'r' then check = enrollReplayCheck end
local err = check(ARGV[4], tonumber(f[2]) or 0, tonumber(f[3]) or 0, tonumber(ARGV[1]),
  tonumber(f[4]) or 0, tonumber(f[5]) or 0)
if err then return err end
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'uses', 1) end
return {'OK'}
`)

// enrollCreateScript stores an enrollment token.
//
// KEYS[1] enrollment token record, KEYS[2] list of enrollment token ids
// ARGV[1] token id, [2..] field, value pairs
// returns {'OK'} or fail(E_PRECONDITION) if the id exists
var enrollCreateScript = newScript("enrollCreate", `
if redis.call('EXISTS', KEYS[1]) == 1 then return fail(E_PRECONDITION, string.format(FMT_ENROLL_EXISTS, ARGV[1])) end
local f = {}
for i = 2, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(f))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return {'OK'}
`)

// enrollRevokeScript marks an enrollment token revoked.
//
// KEYS[1] enrollment token record
// ARGV[1] now ms, [2] token id
// returns {'OK', fields} or fail(E_NOT_FOUND)
var enrollRevokeScript = newScript("enrollRevoke", `
if redis.call('EXISTS', KEYS[1]) == 0 then return fail(E_NOT_FOUND, string.format(FMT_ENROLL_NOT_FOUND, q(ARGV[2]))) end
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev or rev == '0' then redis.call('HSET', KEYS[1], 'rev', ARGV[1]) end
return {'OK', redis.call('HGETALL', KEYS[1])}
`)

var allScripts = []*script{
	registerScript, replayScript, replayClaimScript, authScript, updateAgentScript, rotateScript, leaseScript, heartbeatScript, returnScript, reportScript, appendOutputScript,
	readOutputScript, taskScript,
	createTasksScript, releaseScript, cancelScript, revokeScript, agentViewScript, reapScript,
	jobCreateScript, jobDraftScript, jobCommitScript, jobAbandonScript, jobStepScript, jobCancelScript, exportClaimScript, dropJobScript, delIfScript, enrollCheckScript, enrollCreateScript, enrollRevokeScript,
	dropJobTasksScript, jobsFinishedScript, oldestJobsScript, jobGoneScript, setScript,
}
