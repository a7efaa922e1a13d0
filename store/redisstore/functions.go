package redisstore

import (
	"cmp"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/rueidis"
)

// Redis runs the whole text of a script on every EVALSHA: before its first
// line of its own, each call makes again every constant, table and local
// function of the prelude and shardLib — about 60µs of Redis CPU a call here,
// where an empty script costs 5µs (BenchmarkScriptCallCost), and most of
// what a task cost Redis. So the store's scripts are also loaded once as the
// functions of one library (Redis 7 Functions: FUNCTION LOAD), which holds the
// prelude and shardLib once, and are called with FCALL; a function starts at
// its own first line.
//
// The library is named after a digest of its text, as are its functions
// (forge_<name>_<digest>), so replicas of two forge versions sharing a Redis
// (a rolling upgrade) each call their own; a library left by an older version
// stays until someone deletes it (FUNCTION DELETE), and costs a few hundred KB.
//
// As with scripts, DESIGN.md's rule holds: the library is loaded on every node
// at start, and a node that lost it (a restart without persistence, FUNCTION
// FLUSH; FLUSHALL and a failover keep functions, which replicate) has it loaded
// again when a call meets "Function not found", and the call is sent again.
// Where Functions cannot be used — Redis before 7.0, or a user whose ACL does
// not allow FUNCTION LOAD or FCALL — the store says so once in its log and runs
// the scripts with EVALSHA, as before.

// library is the store's function library: its text, to FUNCTION LOAD, its
// name, and the name of each script's function.
type library struct {
	name, text string
	fn         map[*script]string
}

// theLibrary builds the library from the named scripts once (full.go's init
// has flagged the ones that run while Redis is full by then).
var theLibrary = sync.OnceValue(func() *library { return buildLibrary(allScripts) })

// buildLibrary makes the library of scripts: the prelude and shardLib once, then
// each script's body as a function. A function sets KEYS and ARGV — locals of
// the library here, globals of a script — from its arguments, and a shard
// script's then calls shardBegin, as its EVAL text does.
func buildLibrary(scripts []*script) *library {
	var body strings.Builder
	body.WriteString(prelude)
	body.WriteString("\nlocal KEYS, ARGV\n")
	body.WriteString(shardLib)
	for _, sc := range scripts {
		fmt.Fprintf(&body, "\nredis.register_function{function_name = '%s_%s', flags = {%s}, callback = function(keys, args)\nKEYS, ARGV = keys, args\n", libPrefix, sc.name, flagsOf(sc))
		if sc.shard {
			body.WriteString("shardBegin()\n")
		}
		body.WriteString(sc.body)
		body.WriteString("\nend}\n")
	}
	sum := sha1.Sum([]byte(body.String()))
	digest := hex.EncodeToString(sum[:6])
	prefix := "forge_" + digest
	// The functions' names carry the digest of the text they are in.
	text := strings.ReplaceAll(body.String(), "function_name = '"+libPrefix+"_", "function_name = '"+prefix+"_")
	fn := make(map[*script]string, len(scripts))
	for _, sc := range scripts {
		fn[sc] = prefix + "_" + sc.name
	}
	return &library{name: prefix, text: "#!lua name=" + prefix + "\n" + text, fn: fn}
}

// libPrefix stands for the library's name in its text until its digest is known.
const libPrefix = "forge_LIB"

// flagsOf returns a script's function flags: what lets it run while Redis is
// full (full.go), as the script runs then.
func flagsOf(sc *script) string {
	switch {
	case sc.oom:
		return "'allow-oom'"
	case sc.ro:
		return "'no-writes'"
	}
	return ""
}

// loadLibrary loads the library on every node that takes writes; a replica
// refuses (READONLY) and gets it from its master. A library of the same name
// is this one already. It returns whether the store can call functions: false,
// with the reason logged, when Redis has no FUNCTION command or the user may
// not load it. A node that fails otherwise is passed over, and the first such
// failure returned.
func (s *Store) loadLibrary(ctx context.Context) (bool, error) {
	lib := theLibrary()
	loaded := false
	var first error
	for addr, node := range s.client.Nodes() {
		err := node.Do(ctx, node.B().FunctionLoad().FunctionCode(lib.text).Build()).Error()
		if rerr, ok := rueidis.IsRedisErr(err); ok {
			msg := rerr.Error()
			switch {
			case strings.Contains(msg, "already exists"):
				err = nil
			case strings.HasPrefix(msg, "READONLY"):
				continue
			case strings.HasPrefix(msg, "NOPERM"), strings.Contains(msg, "unknown command"), strings.Contains(msg, "unknown subcommand"):
				s.log.Warn("redis functions cannot be used; running forge's scripts with EVALSHA, which costs Redis more CPU per call (see docs/operations.md)",
					"node", addr, "reason", msg)
				return false, nil
			}
		}
		if err != nil {
			// The others are loaded all the same: the node that lost the
			// library may be up while another is down.
			first = cmp.Or(first, err)
			continue
		}
		loaded = true
	}
	return loaded, first
}

// functionMissing tells whether err is FCALL's answer on a node without the
// library.
func functionMissing(err error) bool {
	rerr, ok := rueidis.IsRedisErr(err)
	return ok && strings.Contains(rerr.Error(), "Function not found")
}

// call returns the command that runs sc with keys (the shard guard added) and
// args: FCALL of its function where the library is loaded, else EVALSHA.
func (s *Store) call(sc *script, keys, args []string) rueidis.Completed {
	keys = sc.keys(keys, args)
	if fn := theLibrary().fn[sc]; fn != "" && s.functions.Load() {
		return s.client.B().Fcall().Function(fn).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
	}
	return s.client.B().Evalsha().Sha1(sc.sha).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
}

// exec runs sc once (call), recovering a node that lost the script or the
// library.
func (s *Store) exec(ctx context.Context, sc *script, keys, args []string) rueidis.RedisResult {
	return s.recover(ctx, sc, keys, args, s.client.Do(ctx, s.call(sc, keys, args)))
}

// recover answers a call of sc whose result was r: as it is, unless the node
// lacked what it called — a script (EVAL sends its text, and the node keeps
// it), or the library (loaded again on every node, and the call sent again).
func (s *Store) recover(ctx context.Context, sc *script, keys, args []string, r rueidis.RedisResult) rueidis.RedisResult {
	err := r.Error()
	if err == nil {
		return r
	}
	if rerr, ok := rueidis.IsRedisErr(err); ok && rerr.IsNoScript() {
		return sc.lua.Exec(ctx, s.client, sc.keys(keys, args), args)
	}
	if functionMissing(err) {
		ok, lerr := s.loadLibrary(ctx)
		if !ok && lerr == nil {
			// The library can no longer be loaded (the user's rights changed):
			// the scripts it holds run as scripts.
			s.functions.Store(false)
		}
		r = s.client.Do(ctx, s.call(sc, keys, args))
		if rerr, ok := rueidis.IsRedisErr(r.Error()); ok && rerr.IsNoScript() {
			return sc.lua.Exec(ctx, s.client, sc.keys(keys, args), args)
		}
		if lerr != nil && functionMissing(r.Error()) {
			return rueidis.NewErrorResult(errors.Join(r.Error(), lerr))
		}
	}
	return r
}
