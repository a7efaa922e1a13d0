package redisstore

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore/internal/luaprelude"
)

// TestPreludeIsGenerated fails when prelude.lua is not what package store's
// constants make of it today.
func TestPreludeIsGenerated(t *testing.T) {
	t.Parallel()
	if prelude != string(luaprelude.Source()) {
		t.Fatal("prelude.lua is out of date: run 'go generate ./store/redisstore' and commit the result")
	}
}

// luaStrings returns the string literals of a Lua text, comments left out.
func luaStrings(src string) []string {
	var out []string
	for i := 0; i < len(src); i++ {
		switch c := src[i]; {
		case c == '-' && strings.HasPrefix(src[i:], "--"):
			if j := strings.IndexByte(src[i:], '\n'); j >= 0 {
				i += j
			} else {
				i = len(src)
			}
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(src) && src[j] != c {
				if src[j] == '\\' {
					j++
				}
				j++
			}
			out = append(out, src[i+1:min(j, len(src))])
			i = j
		}
	}
	return out
}

// TestScriptsHoldNoText fails when a script writes a text of its own (a string
// literal with words in it) instead of taking it from the prelude, where it comes
// from package store.
func TestScriptsHoldNoText(t *testing.T) {
	t.Parallel()
	bodies := []string{shardLib}
	for _, sc := range allScripts {
		bodies = append(bodies, sc.body)
	}
	if got := luaStrings(`local x = 'a b' -- it's "c d"` + "\n" + `y("e f")`); !slices.Equal(got, []string{"a b", "e f"}) {
		t.Fatalf("luaStrings finds %q", got)
	}
	for _, b := range bodies {
		for _, lit := range luaStrings(b) {
			if strings.Contains(lit, " ") && strings.ContainsFunc(lit, func(r rune) bool { return r >= 'a' && r <= 'z' }) {
				t.Errorf("a script holds the text %q: define it in package store and take it from the prelude", lit)
			}
		}
	}
}

// agreement is one rule run in Lua and in Go over a table of inputs.
type agreement struct {
	name string
	// lua maps one row of inputs, the table a (strings), to a table of results.
	lua string
	// rows are the inputs, each row as many strings as every other.
	rows [][]string
	// goRule maps a row to the results the Go rule gives.
	goRule func(row []string) []string
}

// TestLuaAgreesWithGo runs every constant and rule of the prelude in a real Redis
// (EVAL) and compares what it gives with what package store's Go gives, over
// tables of inputs. It fails when Go and Lua disagree.
func TestLuaAgreesWithGo(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	eval := func(t *testing.T, body string, args ...string) [][]string {
		t.Helper()
		src := prelude + body
		arr, err := client.Do(t.Context(), client.B().Eval().Script(src).Numkeys(0).Arg(args...).Build()).ToArray()
		if err != nil {
			t.Fatalf("EVAL: %v", err)
		}
		out := make([][]string, len(arr))
		for i, m := range arr {
			if out[i], err = m.AsStrSlice(); err != nil {
				t.Fatalf("EVAL answer %d: %v", i, err)
			}
		}
		return out
	}

	t.Run("Constants", func(t *testing.T) {
		cs := luaprelude.Constants()
		var lua []string
		for _, c := range cs {
			lua = append(lua, "{tostring("+c.Name+")}")
		}
		got := eval(t, "return {"+strings.Join(lua, ", ")+"}")
		for _, c := range cs {
			// Go and Lua read %d and %s alike; other verbs (%q, %v, widths) differ.
			if v, ok := c.Value.(string); ok {
				for i := strings.IndexByte(v, '%'); i >= 0; i = strings.IndexByte(v, '%') {
					if i+1 == len(v) || (v[i+1] != 'd' && v[i+1] != 's') {
						t.Errorf("%s = %q uses a verb Go and Lua may read differently", c.Name, c.Value)
						break
					}
					v = v[i+2:]
				}
			}
		}
		for i, c := range cs {
			if want := fmt.Sprint(c.Value); got[i][0] != want {
				t.Errorf("Lua %s = %q, Go says %q", c.Name, got[i][0], want)
			}
		}
	})

	for _, a := range agreements() {
		t.Run(a.name, func(t *testing.T) {
			var args []string
			for _, r := range a.rows {
				args = append(args, r...)
			}
			got := eval(t, `
local out, n = {}, `+strconv.Itoa(len(a.rows[0]))+`
for i = 1, #ARGV, n do
  local a = {}
  for k = 1, n do a[k] = ARGV[i + k - 1] end
  local r = (function(a) `+a.lua+` end)(a)
  for k = 1, #r do r[k] = tostring(r[k]) end
  out[#out + 1] = r
end
return out`, args...)
			if len(got) != len(a.rows) {
				t.Fatalf("Lua answered %d rows of %d", len(got), len(a.rows))
			}
			for i, row := range a.rows {
				if want := a.goRule(row); !slices.Equal(got[i], want) {
					t.Errorf("%s%q: Lua gives %q, Go gives %q", a.name, row, got[i], want)
				}
			}
		})
	}
}

// cross returns every combination of one value from each list.
func cross(lists ...[]string) [][]string {
	out := [][]string{nil}
	for _, l := range lists {
		var next [][]string
		for _, prefix := range out {
			for _, v := range l {
				next = append(next, append(slices.Clone(prefix), v))
			}
		}
		out = next
	}
	return out
}

func num(s string) int32 {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		panic(err)
	}
	return int32(n)
}

func flagOf(s string) bool { return s == "1" }

func num64(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		panic(err)
	}
	return n
}

// errRow is how an error answer reads in a row: its kind and message.
func errRow(err error) []string {
	return []string{"error", strconv.Itoa(int(store.KindOf(err))), err.Error()}
}

const taskID = "t0123456789abcdef-a0123456789abcde"

func agreements() []agreement {
	states := []string{"1", "2", "3", "4", "5", "6", "7", "8"}
	flags := []string{"0", "1"}
	reasons := []string{"", "stop it", store.ReasonTimedOut(time.Minute)}
	now := time.UnixMilli(1_767_000_000_000)
	ms := func(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }
	// Ids made now-ish: Lua's numbers are exact to 2^53 µs (the year 2255).
	made := time.UnixMicro(1_767_000_000_123_456)
	us := func(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }
	idAt := func(t time.Time) string {
		var b [11]byte
		for i, n := 10, t.UnixMicro(); i >= 0; i, n = i-1, n>>5 {
			b[i] = store.IDAlphabet[n&31]
		}
		return "t" + string(b[:]) + "abcd-a0123456789abcde"
	}
	fromMS := func(s string) time.Time {
		if s == "0" {
			return time.Time{}
		}
		n, _ := strconv.ParseInt(s, 10, 64)
		return time.UnixMilli(n)
	}
	return []agreement{
		{
			name: "agentCred",
			lua: `local r = agentCred(a[1] == '1', a[2] == '1', a[3] == '1')
			if r == nil then return {'ok'} end
			return {'error', r[2], r[3]}`,
			// exists, revoked, matched
			rows: cross(flags, flags, flags),
			goRule: func(r []string) []string {
				if err := store.CheckAgentCred(flagOf(r[0]), flagOf(r[1]), flagOf(r[2])); err != nil {
					return errRow(err)
				}
				return []string{"ok"}
			},
		},
		{
			name: "checkReport",
			lua: `local r = checkReport(a[1], tonumber(a[2]), tonumber(a[3]), tonumber(a[4]), tonumber(a[5]),
				tonumber(a[6]), tonumber(a[7]), tonumber(a[8]))
			if r == true then return {'repeat'} elseif r == nil then return {'ends'} end
			return {'error', r[2], r[3]}`,
			// task id, state, attempt, reported outcome, exit code; the report's attempt, outcome, exit code
			rows: cross([]string{taskID}, states, []string{"0", "1", "2"}, []string{"0", "1", "2"}, []string{"0", "3"},
				[]string{"1", "2"}, []string{"0", "1", "2"}, []string{"0", "3"}),
			goRule: func(r []string) []string {
				t := store.Task{ID: r[0], State: store.TaskState(num(r[1])), Attempt: num(r[2]), ExitCode: num(r[4])}
				p := store.ReportParams{TaskID: r[0], Attempt: num(r[5]), Outcome: store.Outcome(num(r[6])), ExitCode: num(r[7])}
				repeat, err := store.CheckReport(t, store.Outcome(num(r[3])), p)
				switch {
				case err != nil:
					return errRow(err)
				case repeat:
					return []string{"repeat"}
				}
				return []string{"ends"}
			},
		},
		{
			name: "reportEnd",
			lua: `local crr = a[4]
			if crr == '' then crr = nil end
			local st, why = reportEnd(tonumber(a[1]), a[2] == '1', a[3] == '1', crr, tonumber(a[5]), a[6], a[7] == '1', tonumber(a[8]))
			return {st, why}`,
			// outcome, timed out (flagged), cancel requested, its reason; deadline (ms, 0: none),
			// the timeout's reason, the agent's timeout; now (ms)
			rows: cross([]string{"1", "2"}, flags, flags, reasons,
				[]string{"0", ms(now.Add(-time.Millisecond)), ms(now), ms(now.Add(time.Millisecond))},
				[]string{store.ReasonTimedOut(90 * time.Second)}, flags, []string{ms(now)}),
			goRule: func(r []string) []string {
				t := store.Task{TimedOut: flagOf(r[1]), CancelRequested: flagOf(r[2]), CancelReason: r[3], Timeout: 90 * time.Second}
				if r[4] != "0" {
					t.Deadline = fromMS(r[4])
				}
				st, why := store.ReportEnd(t, store.ReportParams{Outcome: store.Outcome(num(r[0])), TimedOut: flagOf(r[6])}, fromMS(r[7]))
				return []string{strconv.Itoa(int(st)), why}
			},
		},
		{
			name: "handlesType",
			lua:  `return {tostring(handlesType(a[1], a[2]))}`,
			// the agent record's types (JSON, as RegisterAgent and UpdateAgent write them), the task's type
			rows: cross([]string{"", "null", "[]", `["echo"]`, `["echo","exec"]`, `["exec"]`, `["échø"]`},
				[]string{"echo", "exec", "échø", ""}),
			goRule: func(r []string) []string {
				var types []string
				if r[0] != "" && r[0] != "null" {
					if err := json.Unmarshal([]byte(r[0]), &types); err != nil {
						return []string{"bad row: " + err.Error()}
					}
				}
				return []string{strconv.FormatBool(store.HandlesType(types, r[1]))}
			},
		},
		{
			name: "leaseExpiryEnd",
			lua: `local crr = a[3]
			if crr == '' then crr = nil end
			local st, why = leaseExpiryEnd(a[1] == '1', a[2] == '1', crr, tonumber(a[4]), tonumber(a[5]))
			return {st, why}`,
			rows: cross(flags, flags, reasons, []string{"1", "2", "3"}, []string{"1", "3"}),
			goRule: func(r []string) []string {
				st, why := store.LeaseExpiryEnd(store.Task{TimedOut: flagOf(r[0]), CancelRequested: flagOf(r[1]), CancelReason: r[2],
					Attempt: num(r[3]), MaxAttempts: num(r[4])})
				return []string{strconv.Itoa(int(st)), why}
			},
		},
		{
			name: "deliveryExpiryEnd",
			lua: `local st, why = deliveryExpiryEnd(tonumber(a[1]), a[2])
			return {st, why}`,
			// attempt, delivery TTL as Go writes it (the record's ttx)
			rows: cross([]string{"0", "1", "2", "3"}, []string{"1s", "1m0s", "1h30m0s", "1.5ms"}),
			goRule: func(r []string) []string {
				ttl, err := time.ParseDuration(r[1])
				if err != nil {
					return []string{"bad row: " + err.Error()}
				}
				st, why := store.DeliveryExpiryEnd(store.Task{Attempt: num(r[0]), DeliveryTTL: ttl})
				return []string{strconv.Itoa(int(st)), why}
			},
		},
		{
			name: "agentExpired",
			lua:  `return {tostring(agentExpired(tonumber(a[1]), tonumber(a[2]), tonumber(a[3])))}`,
			// last seen, now, retention (ms)
			rows: cross([]string{"0", ms(now.Add(-time.Hour)), ms(now.Add(-time.Hour - time.Millisecond)), ms(now)},
				[]string{ms(now)}, []string{"0", "-1", "3600000"}),
			goRule: func(r []string) []string {
				return []string{strconv.FormatBool(store.AgentExpired(fromMS(r[0]), fromMS(r[1]), time.Duration(num64(r[2]))*time.Millisecond))}
			},
		},
		{
			name: "dropMark",
			lua:  `return {string.format('%d', dropMark(tonumber(a[1]), a[2]))}`,
			// the mark (µs; 0: none), the dropped task's id: made before, at and
			// after the mark, and ids with no creation time
			rows: cross([]string{"0", us(made), us(made.Add(time.Microsecond))},
				[]string{store.NewTaskID("a0123456789abcde"), idAt(made.Add(-time.Second)), idAt(made),
					idAt(made.Add(time.Microsecond)), idAt(made.Add(time.Hour)), taskID, "j" + idAt(made)[1:12] + "abcdef",
					"t", "t0123456789", "tilo00000000-a0", "x" + idAt(made)[1:], ""}),
			goRule: func(r []string) []string {
				var mark time.Time
				if r[0] != "0" {
					mark = time.UnixMicro(num64(r[0]))
				}
				if m := store.DropMark(mark, r[1]); !m.IsZero() {
					return []string{us(m)}
				}
				return []string{"0"}
			},
		},
		{
			name: "returnEnd",
			lua: `local crr = a[3]
			if crr == '' then crr = nil end
			local st, why = returnEnd(a[1] == '1', a[2] == '1', crr, tonumber(a[4]))
			return {st, why}`,
			rows: cross(flags, flags, reasons, []string{"1", "2", "3"}),
			goRule: func(r []string) []string {
				st, why := store.ReturnEnd(store.Task{TimedOut: flagOf(r[0]), CancelRequested: flagOf(r[1]), CancelReason: r[2],
					Attempt: num(r[3])})
				return []string{strconv.Itoa(int(st)), why}
			},
		},
		{
			name: "cancelAction",
			lua:  `return {cancelAction(tonumber(a[1]), tonumber(a[2]))}`,
			rows: cross([]string{"1", "2", "3"}, states),
			goRule: func(r []string) []string {
				return []string{strconv.Itoa(int(store.CancelMode(num(r[0])).Action(store.TaskState(num(r[1])))))}
			},
		},
		{
			name: "enrollCheck",
			lua: `local r = enrollCheck(a[1], tonumber(a[2]), tonumber(a[3]), tonumber(a[4]), tonumber(a[5]), tonumber(a[6]))
			if r == nil then return {'ok'} end
			return {'error', r[2], r[3]}`,
			// id, revoked at, expires at, now, max uses, uses
			rows: cross([]string{"e1", "eabcdefghjkm"}, []string{"0", ms(now.Add(-time.Hour))},
				[]string{"0", ms(now.Add(-time.Second)), ms(now), ms(now.Add(time.Millisecond))}, []string{ms(now)},
				[]string{"0", "2"}, []string{"0", "1", "2"}),
			goRule: func(r []string) []string {
				t := store.EnrollmentToken{ID: r[0], RevokedAt: fromMS(r[1]), ExpiresAt: fromMS(r[2]), MaxUses: int(num(r[4])), Uses: int(num(r[5]))}
				if err := store.CheckEnrollment(t, fromMS(r[3])); err != nil {
					return errRow(err)
				}
				return []string{"ok"}
			},
		},
		{
			name: "enrollReplayCheck",
			lua: `local r = enrollReplayCheck(a[1], tonumber(a[2]), tonumber(a[3]), tonumber(a[4]), tonumber(a[5]), tonumber(a[6]))
			if r == nil then return {'ok'} end
			return {'error', r[2], r[3]}`,
			// id, revoked at, expires at, now, max uses, uses
			rows: cross([]string{"e1"}, []string{"0", ms(now.Add(-time.Hour))},
				[]string{"0", ms(now.Add(-time.Second)), ms(now), ms(now.Add(time.Millisecond))}, []string{ms(now)},
				[]string{"0", "1", "2"}, []string{"0", "1", "2", "3"}),
			goRule: func(r []string) []string {
				t := store.EnrollmentToken{ID: r[0], RevokedAt: fromMS(r[1]), ExpiresAt: fromMS(r[2]), MaxUses: int(num(r[4])), Uses: int(num(r[5]))}
				if err := store.CheckEnrollmentReplay(t, fromMS(r[3])); err != nil {
					return errRow(err)
				}
				return []string{"ok"}
			},
		},
		{
			name: "checkAppend",
			lua: `local r = checkAppend(a[1], tonumber(a[2]), tonumber(a[3]), tonumber(a[4]), tonumber(a[5]),
				tonumber(a[6]), tonumber(a[7]), tonumber(a[8]))
			if type(r) == 'table' then return {'error', r[2], r[3]} end
			return {'skip', r}`,
			// task id, state, attempt; the chunk's attempt, stream; held; the chunk's offset, length
			rows: cross([]string{taskID}, states, []string{"1", "2"}, []string{"1", "2"}, []string{"0", "1", "2", "3"},
				[]string{"0", "5"}, []string{"-1", "0", "3", "5", "6"}, []string{"0", "2", "5"}),
			goRule: func(r []string) []string {
				t := store.Task{ID: r[0], State: store.TaskState(num(r[1])), Attempt: num(r[2])}
				p := store.AppendParams{TaskID: r[0], Attempt: num(r[3]), Stream: store.Stream(num(r[4])),
					Offset: int64(num(r[6])), Data: make([]byte, num(r[7]))}
				skip, err := store.CheckAppend(t, int64(num(r[5])), p)
				if err != nil {
					return errRow(err)
				}
				return []string{"skip", strconv.FormatInt(skip, 10)}
			},
		},
		{
			name: "outputLimits",
			lua:  `return {outputLimits(tonumber(a[1]))}`,
			rows: [][]string{{"1"}, {"2"}, {"63"}, {"64"}, {"100"}, {"4096"}, {"4097"}, {"1048576"}, {"3145735"}},
			goRule: func(r []string) []string {
				h, t, p := store.OutputLimits(atoi(r[0]))
				return []string{itoa(h), itoa(t), itoa(p)}
			},
		},
		{
			name: "outputMergeRoom",
			lua:  `return {outputMergeRoom(tonumber(a[1]), tonumber(a[2]), tonumber(a[3]))}`,
			rows: cross([]string{"0", "1", "2"}, []string{"0", "1", "8191", "8192", "9000"}, []string{"1", "2"}),
			goRule: func(r []string) []string {
				return []string{itoa(store.OutputMergeRoom(store.Stream(num(r[0])), atoi(r[1]), store.Stream(num(r[2]))))}
			},
		},
		{
			name: "outputHeadTake",
			lua: `return {outputHeadTake(tonumber(a[1]), tonumber(a[2]), tonumber(a[3]), tonumber(a[4]), tonumber(a[5]),
				tonumber(a[6]))}`,
			// total, head bytes, head pieces, merge room, new bytes, cap
			rows: cross([]string{"0", "30", "32", "40"}, []string{"0", "30", "32"}, []string{"0", "15", "16"},
				[]string{"0", "1", "8192"}, []string{"0", "1", "2", "100", "20000"}, []string{"64", "1048576"}),
			goRule: func(r []string) []string {
				return []string{itoa(store.OutputHeadTake(atoi(r[0]), atoi(r[1]), atoi(r[2]), atoi(r[3]), atoi(r[4]), atoi(r[5])))}
			},
		},
		{
			name: "outputTrim",
			lua: `local over = outputTailOver(tonumber(a[1]), tonumber(a[2]), tonumber(a[4]))
			return {tostring(over), outputTrim(tonumber(a[1]), tonumber(a[2]), tonumber(a[3]), tonumber(a[4]))}`,
			// tail bytes, tail pieces, first piece's length, cap
			rows: cross([]string{"0", "31", "32", "33", "40", "70"}, []string{"1", "16", "17"}, []string{"1", "5", "8", "32", "38"},
				[]string{"64", "100"}),
			goRule: func(r []string) []string {
				over := store.OutputTailOver(atoi(r[0]), atoi(r[1]), atoi(r[3]))
				return []string{strconv.FormatBool(over), itoa(store.OutputTrim(atoi(r[0]), atoi(r[1]), atoi(r[2]), atoi(r[3])))}
			},
		},
		{
			name: "messages",
			lua: `local id, n, st = a[1], tonumber(a[2]), tonumber(a[3])
			return {
				string.format(FMT_AGENT_NOT_FOUND, q(id)), string.format(FMT_TASK_NOT_FOUND, q(id)),
				string.format(FMT_ENROLL_NOT_FOUND, q(id)), string.format(FMT_AGENT_IS_REVOKED, q(id)),
				string.format(FMT_AGENT_QUEUE_FULL, q(id), n), string.format(FMT_TASK_ENDED, q(id), STATE_NAMES[st]),
				string.format(FMT_ENROLL_EXISTS, id), MSG_UNKNOWN_AGENT, MSG_AGENT_REVOKED, MSG_ENROLL_TOKEN, MSG_ID_TAKEN,
				string.format(FMT_OUTPUT_GAP, STREAM_NAMES[2], n, st, q(id), n + 1), MSG_BAD_STREAM, MSG_BAD_OFFSET}`,
			rows: cross([]string{"a0123456789abcde", taskID, "j0123456789abcdef", "e1"}, []string{"0", "50"}, states[2:]),
			goRule: func(r []string) []string {
				id, n, st := r[0], int(num(r[1])), store.TaskState(num(r[2]))
				return []string{
					store.ErrAgentNotFound(id).Error(), store.ErrTaskNotFound(id).Error(),
					store.ErrEnrollmentNotFound(id).Error(), store.ErrAgentRevoked(id).Error(),
					store.ErrAgentQueueFull(id, n).Error(), store.ErrTaskEnded(id, st).Error(),
					store.ErrEnrollmentExists(id).Error(), store.ErrUnknownAgent().Error(), store.ErrRevokedAgent().Error(),
					store.ErrEnrollmentToken().Error(),
					luaprelude.MsgIDTaken,
					store.Errorf(store.KindPrecondition, store.FmtOutputGap, store.StreamStderr, n, int32(st), store.Quote(id), n+1).Error(),
					store.MsgBadStream, store.MsgBadOffset,
				}
			},
		},
		{
			name: "reasons",
			lua: `local n = tonumber(a[1])
			return {REASON_DISPATCHED, string.format(FMT_LEASED, n), string.format(FMT_QUEUE_FULL, n),
				REASON_AGENT_REVOKED, REASON_AGENT_NOT_FOUND}`,
			rows: [][]string{{"0"}, {"1"}, {"3"}, {"10000"}},
			goRule: func(r []string) []string {
				n := num(r[0])
				return []string{store.ReasonDispatched, store.ReasonLeased(n), store.ReasonQueueFull(int(n)),
					store.ReasonRevoked(""), store.ReasonAgentNotFound}
			},
		},
	}
}
