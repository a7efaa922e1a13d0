package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"
)

// Redis replicates asynchronously: a master that dies a moment after it
// answered a write may take that write with it, and the replica the sentinels
// promote never had it. Options.WaitReplicas closes that window the way Redis
// offers: every write is followed, on the same connection, by WAIT, and forge
// answers only once that many replicas have the write. A write they do not
// confirm in time fails as unavailable (it may still have happened on the
// master, so a retried Dispatch should carry an idempotency key). The error
// keeps the write's own answer (unconfirmedError), for the one caller that
// must undo what it did: a Lease, whose tasks would otherwise each spend an
// attempt without reaching their agent (see handBack in tasks.go).
//
// It is for one master with replicas (Sentinel); on a cluster WAIT would have to
// follow each write to its own node, which this does not do, so Open refuses it.

// waitClient is a rueidis.Client that sends WAIT after every write.
type waitClient struct {
	rueidis.Client
	replicas int64
	timeout  time.Duration
}

// needsWait tells whether cmd changes data (PING and TIME are not marked
// read-only by rueidis, but write nothing).
func needsWait(cmd *rueidis.Completed) bool {
	if cmd.IsReadOnly() {
		return false
	}
	switch c := cmd.Commands(); {
	case len(c) == 0, c[0] == "PING", c[0] == "TIME":
		return false
	}
	return true
}

func (c *waitClient) wait() rueidis.Completed {
	return c.Client.B().Wait().Numreplicas(c.replicas).Timeout(c.timeout.Milliseconds()).Build()
}

// confirmed checks WAIT's answer.
func (c *waitClient) confirmed(r rueidis.RedisResult) error {
	n, err := r.AsInt64()
	if err != nil {
		return err
	}
	if n < c.replicas {
		return &notReplicatedError{got: n, want: c.replicas, within: c.timeout}
	}
	return nil
}

// notReplicatedError is a write that fewer replicas than asked confirmed.
type notReplicatedError struct {
	got, want int64
	within    time.Duration
}

func (e *notReplicatedError) Error() string {
	return fmt.Sprintf("the write was confirmed by %d of the %d replicas required within %s", e.got, e.want, e.within)
}

// unconfirmedError is a write Redis carried out and answered whose replication
// WAIT did not confirm: too few replicas in time (notReplicatedError), or WAIT
// itself failed. The write stands on the master; reply is what it answered.
type unconfirmedError struct {
	err   error
	reply rueidis.RedisMessage
}

func (e *unconfirmedError) Error() string { return e.err.Error() }
func (e *unconfirmedError) Unwrap() error { return e.err }

// unconfirmed returns the answer of the write r, failed with err because WAIT
// did not confirm it.
func unconfirmed(r rueidis.RedisResult, err error) rueidis.RedisResult {
	reply, _ := r.ToMessage()
	return rueidis.NewErrorResult(&unconfirmedError{err: err, reply: reply})
}

func (c *waitClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	if !needsWait(&cmd) {
		return c.Client.Do(ctx, cmd)
	}
	res := c.Client.DoMulti(ctx, cmd, c.wait())
	if res[0].Error() != nil {
		return res[0]
	}
	if err := c.confirmed(res[1]); err != nil {
		return unconfirmed(res[0], err)
	}
	return res[0]
}

// DoMulti sends WAIT after the commands when any of them writes. (Which ones
// write is noted before sending: rueidis recycles commands it has sent.)
func (c *waitClient) DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	writes := make([]bool, len(multi))
	any := false
	for i := range multi {
		writes[i] = needsWait(&multi[i])
		any = any || writes[i]
	}
	if !any {
		return c.Client.DoMulti(ctx, multi...)
	}
	cmds := make([]rueidis.Completed, 0, len(multi)+1)
	cmds = append(append(cmds, multi...), c.wait())
	res := c.Client.DoMulti(ctx, cmds...)
	out, w := res[:len(multi)], res[len(multi)]
	if err := c.confirmed(w); err != nil {
		for i := range out {
			if writes[i] && out[i].Error() == nil {
				out[i] = unconfirmed(out[i], err)
			}
		}
	}
	return out
}
