package server_test

import (
	"bytes"
	"fmt"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/internal/outputcap"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
)

// 100 MiB appended through the server in 1 MiB chunks: what is kept is the
// first and the last 512 KiB, and neither the server's heap nor Redis grows
// with what went through. The heap bound is on the live heap between chunks
// (what a collection finds reachable): what the server keeps, the kept output
// and its buffers, a few caps whatever went through. The heap in use also
// counts garbage not yet collected, which depends on the GC's pacing and the
// race detector, not on the code: it is only logged. Each store's run has a process of its own
// (RunAlone): the heap is the process's, and the package's other tests (or
// the other store's run) would otherwise be counted in it. The lease is an
// hour, so a slow run (-race, a busy machine) cannot lose the task midway.
func TestOutputCap100MiBThroughServer(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		if !forgetest.RunAlone(t) {
			return
		}
		e := forgetest.Start(t, forgetest.Options{Backend: b, OwnRedis: b == forgetest.Redis,
			Server: server.Config{Lease: time.Hour}})
		ctx := t.Context()
		ag, _, task := leased(t, e)
		nodes, prefix := e.Redis()
		used := func() int64 {
			var sum int64
			for _, n := range nodes {
				v, _ := strconv.ParseInt(n.Info("memory", "used_memory"), 10, 64)
				sum += v
			}
			return sum
		}
		usedBefore := used()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heapBefore := ms.HeapInuse
		liveBefore := liveHeap()
		var heapPeak, livePeak uint64
		var redisPeak int64
		chunk := func(i int) string { return fmt.Sprintf("%07d", i) + strings.Repeat(string(rune('a'+i%26)), 1<<20-7) }
		for i := range 100 {
			if _, err := appendOut(ctx, ag, task, stdout, int64(i)<<20, chunk(i)); err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
			runtime.ReadMemStats(&ms)
			heapPeak = max(heapPeak, ms.HeapInuse)
			if i%10 == 9 { // a collection costs; ten samples show growth enough
				livePeak = max(livePeak, liveHeap())
			}
			redisPeak = max(redisPeak, used()-usedBefore)
		}
		info := e.Task(task.Id)
		want := chunk(0)[:512<<10] + store.NoteCut(99<<20) + chunk(99)[1<<20-512<<10:]
		if !info.OutputTruncated || info.OutputSize != 100<<20 || !bytes.Equal(info.Output, []byte(want)) {
			t.Fatalf("output: truncated %v, size %d, %d bytes", info.OutputTruncated, info.OutputSize, len(info.Output))
		}
		grew := int64(heapPeak) - int64(heapBefore)
		liveGrew := int64(livePeak) - int64(liveBefore)
		t.Logf("%s: the live heap grew by at most %.1f MiB (%.1f caps), the heap in use by %.1f MiB",
			b, float64(liveGrew)/(1<<20), float64(liveGrew)/outputcap.Default, float64(grew)/(1<<20))
		// Measured: 3 to 6 caps under -race on a loaded machine. Keeping a
		// sixth of what went through would pass 16.
		if liveGrew > 16*outputcap.Default {
			t.Fatalf("the live heap grew by %.1f MiB, more than 16 times the %d byte cap", float64(liveGrew)/(1<<20), outputcap.Default)
		}
		if nodes == nil {
			return
		}
		var keys int64
		for _, k := range []string{":oh:", ":ot:"} {
			key := nodes[0].MustDo("KEYS", "{"+prefix+":*}"+k+task.Id)
			n, _ := strconv.ParseInt(nodes[0].MustDo("MEMORY", "USAGE", key, "SAMPLES", "0"), 10, 64)
			keys += n
		}
		t.Logf("%s: Redis used_memory grew by at most %.1f MiB; the task's output keys hold %.2f MiB", b,
			float64(redisPeak)/(1<<20), float64(keys)/(1<<20))
		if keys > 1<<20+128<<10 || redisPeak > 16<<20 {
			t.Fatalf("Redis holds %d bytes of output keys, grew by %d", keys, redisPeak)
		}
	})
}

// liveHeap collects garbage and returns the heap it found reachable: what the
// process keeps, without the garbage a collection would free (how much of that
// waits depends on the GC's pacing and the race detector, not on the code).
func liveHeap() uint64 {
	runtime.GC()
	s := [1]metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s[:])
	return s[0].Value.Uint64()
}
