package forgetest

import (
	"bytes"
	"context"
	"reflect"
	"sort"
	"sync"

	"github.com/redis/rueidis"
)

// Stored returns every string the store holds. On Memory that is every string
// and byte slice reachable from the store's value, unexported fields included; on
// Redis, every key under the store's prefix with every field, member and value
// in it. Call it when nothing uses the store any more (after Close), so the
// answer is whole and the reading races with nothing.
func (s *Server) Stored() []string {
	s.t.Helper()
	if s.redis == nil {
		return stringsIn(reflect.ValueOf(s.Store), map[uintptr]bool{})
	}
	out, err := s.redis.contents(s.t.Context())
	if err != nil {
		s.t.Fatalf("forgetest: reading the store's Redis keys: %v", err)
	}
	if len(out) == 0 {
		s.t.Fatalf("forgetest: no Redis key under the prefix %q", s.redis.prefix)
	}
	return out
}

// contents reads every key under the prefix, on every node, with its values.
func (r *redisStore) contents(ctx context.Context) ([]string, error) {
	addrs := make([]string, len(r.nodes))
	for i, n := range r.nodes {
		addrs[i] = n.Addr()
	}
	// A client of its own: the store may be closed by now.
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: addrs, DisableCache: true, ForceSingleClient: len(addrs) == 1})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var out []string
	for _, node := range c.Nodes() {
		var keys []string
		for cursor := uint64(0); ; {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match("{"+r.prefix+"[:}]*").Count(1000).Build()).AsScanEntry()
			if err != nil {
				return nil, err
			}
			keys = append(keys, e.Elements...)
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
		sort.Strings(keys)
		types := make(rueidis.Commands, len(keys))
		for i, k := range keys {
			types[i] = node.B().Type().Key(k).Build()
		}
		reads := make(rueidis.Commands, 0, len(keys))
		for i, res := range node.DoMulti(ctx, types...) {
			typ, err := res.ToString()
			if err != nil {
				return nil, err
			}
			k := keys[i]
			out = append(out, k)
			switch typ {
			case "string":
				reads = append(reads, node.B().Get().Key(k).Build())
			case "hash":
				reads = append(reads, node.B().Hgetall().Key(k).Build())
			case "zset":
				reads = append(reads, node.B().Zrange().Key(k).Min("0").Max("-1").Build())
			case "set":
				reads = append(reads, node.B().Smembers().Key(k).Build())
			case "list":
				reads = append(reads, node.B().Lrange().Key(k).Start(0).Stop(-1).Build())
			default:
				out = append(out, "(a "+typ+" forgetest cannot read)")
			}
		}
		for _, res := range node.DoMulti(ctx, reads...) {
			v, err := res.ToAny()
			if err != nil {
				return nil, err
			}
			out = appendStrings(out, v)
		}
	}
	return out, nil
}

// appendStrings appends every string in a decoded Redis reply.
func appendStrings(out []string, v any) []string {
	switch v := v.(type) {
	case string:
		return append(out, v)
	case []any:
		for _, e := range v {
			out = appendStrings(out, e)
		}
	case map[string]any:
		for k, e := range v {
			out = appendStrings(append(out, k), e)
		}
	}
	return out
}

// stringsIn returns every string and byte slice reachable from v, unexported
// fields included.
func stringsIn(v reflect.Value, seen map[uintptr]bool) []string {
	switch v.Kind() {
	case reflect.String:
		return []string{v.String()}
	case reflect.Pointer, reflect.Map, reflect.Slice:
		if v.IsNil() {
			return nil
		}
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint8 {
			return []string{string(v.Bytes())}
		}
		if v.Kind() != reflect.Slice {
			if seen[v.Pointer()] {
				return nil
			}
			seen[v.Pointer()] = true
		}
	}
	var out []string
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			out = stringsIn(v.Elem(), seen)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			out = append(out, stringsIn(v.Field(i), seen)...)
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			out = append(out, stringsIn(v.Index(i), seen)...)
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			out = append(out, stringsIn(it.Key(), seen)...)
			out = append(out, stringsIn(it.Value(), seen)...)
		}
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
