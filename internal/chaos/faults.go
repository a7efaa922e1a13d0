//go:build linux

package chaos

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
)

// Fault kinds. Every run injects each kind it is given at least once: faults come
// in rounds, each round a seeded shuffle of every kind.
const (
	FaultAgentKill  = "agent-kill"  // SIGKILL an agent process, start it again
	FaultAgentStop  = "agent-stop"  // SIGSTOP an agent process past its lease, then SIGCONT
	FaultServerKill = "server-kill" // SIGKILL a server replica, start it again
	FaultServerTerm = "server-term" // SIGTERM a server replica, start it again
	FaultMasterKill = "master-kill" // SIGKILL a Redis master; its replica takes over
	FaultSlotMove   = "slot-move"   // move a slot holding forge keys to another master
	FaultConnsCut   = "conns-cut"   // CLIENT KILL every Redis connection of one replica
	// FaultStoreWipe empties the store, as a Redis restarted without persistence
	// would: FLUSHALL on every master (their replicas follow) and SCRIPT FLUSH on
	// every node. Agents find their identity unknown and enroll again; tasks and
	// jobs accepted before it are lost with the store.
	FaultStoreWipe = "store-wipe"
)

// FaultMasterStop freezes a Redis master (SIGSTOP) until its replica takes over,
// then thaws it: a master that stalls rather than dies, its connections open and
// silent. Not in AllFaults; ask for it by name.
const FaultMasterStop = "master-stop"

// AllFaults lists the fault kinds a run injects by default, in a fixed order.
var AllFaults = []string{FaultAgentKill, FaultAgentStop, FaultServerKill, FaultServerTerm, FaultMasterKill, FaultSlotMove, FaultConnsCut, FaultStoreWipe}

// ExtraFaults lists the kinds a run injects only when asked.
var ExtraFaults = []string{FaultMasterStop}

// Fault is one fault the injector caused.
type Fault struct {
	Kind   string
	Target string // process name, Redis node address, or slot
	Start  time.Time
	// Back is when the target was back: restarted, resumed, failed over, moved.
	Back time.Time
	Note string
	Err  string
}

// injector causes one fault every few seconds, chosen by its seeded generator,
// and waits for each to be over before the next.
type injector struct {
	rng     *rand.Rand
	kinds   []string
	gap     [2]time.Duration
	lease   time.Duration
	cluster *redistest.Cluster
	servers []*Proc
	agents  []*Proc // agent processes (forge agent and chaosagent agents)
	shards  []string
	logf    func(string, ...any)
	// wiped is told when a store wipe is over (the driver re-reads agent ids).
	wiped func()

	mu     sync.Mutex
	faults []Fault
}

// run injects faults until ctx ends and every kind has happened at least once:
// a run shorter than a round of faults still completes its first round (a kind
// that could not be injected is tried again, up to three times).
func (in *injector) run(ctx context.Context) {
	var round []string
	rounds := 0
	tries := map[string]int{}
	for {
		if len(round) == 0 {
			if ctx.Err() != nil && rounds > 0 {
				return
			}
			round = slices.Clone(in.kinds)
			in.rng.Shuffle(len(round), func(i, j int) { round[i], round[j] = round[j], round[i] })
			rounds++
		} else if ctx.Err() != nil && rounds > 1 {
			return
		}
		gap := in.gap[0] + time.Duration(in.rng.Int64N(int64(in.gap[1]-in.gap[0])+1))
		if ctx.Err() != nil {
			gap = in.gap[0] // finishing the first round
		}
		time.Sleep(gap)
		kind := round[0]
		round = round[1:]
		// A fault under way runs its course (a stopped agent is resumed, a killed
		// process restarted) even when the run's time is up.
		f := in.inject(context.WithoutCancel(ctx), kind)
		in.mu.Lock()
		in.faults = append(in.faults, f)
		in.mu.Unlock()
		if f.Err != "" {
			in.logf("fault %s on %s failed: %s", f.Kind, f.Target, f.Err)
			if tries[kind]++; rounds == 1 && tries[kind] < 3 {
				round = append(round, kind)
			}
		} else {
			in.logf("fault %s on %s (%s) back after %s", f.Kind, f.Target, f.Note, f.Back.Sub(f.Start).Round(time.Millisecond))
		}
	}
}

func (in *injector) inject(ctx context.Context, kind string) Fault {
	f := Fault{Kind: kind}
	var err error
	switch kind {
	case FaultAgentKill:
		p := in.agents[in.rng.IntN(len(in.agents))]
		down := time.Duration(200+in.rng.IntN(1800)) * time.Millisecond
		f.Target, f.Note = p.Name, "down "+down.String()
		f.Start = time.Now()
		p.Kill()
		sleepCtx(ctx, down)
		err = p.Start()
	case FaultAgentStop:
		p := in.agents[in.rng.IntN(len(in.agents))]
		stop := in.lease + time.Duration(1500+in.rng.IntN(2000))*time.Millisecond
		f.Target, f.Note = p.Name, "stopped "+stop.String()
		f.Start = time.Now()
		if err = p.Pause(); err == nil {
			time.Sleep(stop) // not cut short: a stopped agent must be resumed
			err = p.Resume()
		}
	case FaultServerKill, FaultServerTerm:
		p := in.servers[in.rng.IntN(len(in.servers))]
		down := time.Duration(200+in.rng.IntN(1800)) * time.Millisecond
		f.Target, f.Note = p.Name, "down "+down.String()
		f.Start = time.Now()
		if kind == FaultServerKill {
			p.Kill()
		} else {
			p.Term(20 * time.Second)
		}
		sleepCtx(ctx, down)
		err = p.Start()
	case FaultMasterKill:
		// Only a cluster where every master has a synced replica can lose one.
		if err = in.cluster.WaitHealthy(60 * time.Second); err != nil {
			break
		}
		var masters []*redistest.Server
		if masters, err = in.cluster.Masters(); err != nil {
			break
		}
		m := masters[in.rng.IntN(len(masters))]
		f.Target = m.Addr()
		f.Start = time.Now()
		var nm *redistest.Server
		if nm, err = in.cluster.KillMaster(m, 30*time.Second); err != nil {
			break
		}
		f.Note = "replica " + nm.Addr() + " took over"
		// Back as a replica of the new master; the next master-kill waits for its sync.
		err = m.TryRestart()
	case FaultMasterStop:
		if err = in.cluster.WaitHealthy(60 * time.Second); err != nil {
			break
		}
		var masters []*redistest.Server
		if masters, err = in.cluster.Masters(); err != nil {
			break
		}
		m := masters[in.rng.IntN(len(masters))]
		var slots []int
		if slots, err = in.cluster.SlotsOf(m); err != nil {
			break
		}
		f.Target = m.Addr()
		f.Start = time.Now()
		if err = m.Pause(); err != nil {
			break
		}
		nm, ferr := in.cluster.WaitFailover(m, slots, 30*time.Second)
		// Stalled a while longer: clients still hold its connections, open and silent.
		after := time.Duration(2000+in.rng.IntN(4000)) * time.Millisecond
		time.Sleep(after)
		err = errors.Join(ferr, m.Resume()) // back, it finds itself replaced and follows
		if nm != nil {
			f.Note = "replica " + nm.Addr() + " took over; resumed " + after.String() + " later"
		}
	case FaultSlotMove:
		tag := in.shards[in.rng.IntN(len(in.shards))]
		slot := redistest.Slot(tag)
		var masters []*redistest.Server
		if masters, err = in.cluster.Masters(); err != nil {
			break
		}
		from, _ := in.cluster.MasterOf(slot)
		var to *redistest.Server
		for _, i := range in.rng.Perm(len(masters)) {
			if masters[i] != from {
				to = masters[i]
				break
			}
		}
		f.Target = fmt.Sprintf("%s (slot %d)", tag, slot)
		f.Start = time.Now()
		if to == nil {
			err = fmt.Errorf("no other master")
			break
		}
		f.Note = "to " + to.Addr()
		err = in.cluster.MigrateSlot(slot, to, redistest.MigrateOptions{Batch: 2, Pause: 5 * time.Millisecond})
	case FaultStoreWipe:
		if err = in.cluster.WaitHealthy(60 * time.Second); err != nil {
			break
		}
		var masters []*redistest.Server
		if masters, err = in.cluster.Masters(); err != nil {
			break
		}
		f.Target = fmt.Sprintf("%d masters", len(masters))
		f.Start = time.Now()
		err = wipe(in.cluster, masters)
		if in.wiped != nil {
			in.wiped()
		}
	case FaultConnsCut:
		p := in.servers[in.rng.IntN(len(in.servers))]
		f.Target = p.Name
		f.Start = time.Now()
		n := 0
		n, err = cutConnections(in.cluster, "forge-"+p.Name)
		f.Note = fmt.Sprintf("%d connections", n)
	}
	f.Back = time.Now()
	if err != nil {
		f.Err = err.Error()
	}
	return f
}

// wipe empties every master at once (the moments between them are when a
// dispatch may be half kept), then drops every node's script cache, as a
// restarted redis-server has none.
func wipe(cl *redistest.Cluster, masters []*redistest.Server) error {
	errs := make([]error, len(masters))
	var wg sync.WaitGroup
	for i, m := range masters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.Do("FLUSHALL")
		}()
	}
	wg.Wait()
	for _, s := range cl.Nodes {
		if _, err := s.Do("SCRIPT", "FLUSH"); err != nil && s.Running() {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cutConnections kills, on every node, the connections whose client name is name.
func cutConnections(cl *redistest.Cluster, name string) (int, error) {
	n := 0
	for _, s := range cl.Nodes {
		list, err := s.Do("CLIENT", "LIST")
		if err != nil {
			continue // a node down right now holds no connection
		}
		for _, line := range strings.Split(list, "\n") {
			var id, cname string
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "id="); ok {
					id = v
				}
				if v, ok := strings.CutPrefix(f, "name="); ok {
					cname = v
				}
			}
			if cname == name && id != "" {
				if _, err := s.Do("CLIENT", "KILL", "ID", id); err == nil {
					n++
				}
			}
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("no connection named %s found", name)
	}
	return n, nil
}

// heal undoes whatever a fault left: resumes paused processes, starts stopped
// ones, and waits for the cluster to be whole.
func (in *injector) heal() error {
	for _, p := range append(slices.Clone(in.servers), in.agents...) {
		p.mu.Lock()
		paused, running := p.paused, p.cmd != nil
		p.mu.Unlock()
		if paused {
			p.Resume()
		}
		if !running {
			if err := p.Start(); err != nil {
				return err
			}
		}
	}
	for _, s := range in.cluster.Nodes {
		if !s.Running() {
			if err := s.TryRestart(); err != nil {
				return err
			}
		}
	}
	return in.cluster.WaitHealthy(60 * time.Second)
}

func (in *injector) log() []Fault {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.faults)
}

// shardTag returns the hash tag of an agent's shard, as redisstore computes it
// (FNV-1a of the id, modulo 64 shards).
func shardTag(agentID string) string {
	h := fnv.New32a()
	h.Write([]byte(agentID))
	return fmt.Sprintf("{forge:s%02d}", h.Sum32()%64)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
