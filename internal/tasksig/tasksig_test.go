package tasksig_test

import (
	"crypto/ed25519"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/tasksig"
	"github.com/orange-forge/forge/store"
)

// signed returns a task of job j for agent a1, both signatures made with priv.
func signed(priv ed25519.PrivateKey, j tasksig.Job, now time.Time) *forgev1.Task {
	t := &forgev1.Task{Id: "t1-a1", JobId: j.ID, Attempt: 1, Type: j.Type, Payload: j.Payload,
		Timeout: durationpb.New(j.Timeout), LeaseExpiresAt: timestamppb.New(now.Add(30 * time.Second)),
		JobSignature: tasksig.SignJob(priv, j)}
	tasksig.SignLease(priv, "a1", t)
	return t
}

func TestSignVerify(t *testing.T) {
	t.Parallel()
	pub, priv, _ := ed25519.GenerateKey(nil)
	_, other, _ := ed25519.GenerateKey(nil)
	keys := map[string]ed25519.PublicKey{tasksig.KeyID(pub): pub}
	now := time.Now()
	self := tasksig.Self{ID: "a1", Name: "web-1", Labels: map[string]string{"env": "prod"}}
	job := tasksig.Job{ID: "j1", Type: "exec", Payload: []byte(`{"argv":["uptime"]}`), Timeout: time.Minute,
		MaxAttempts: 3, Target: "selector:env=prod", CreatedAt: now, NotAfter: now.Add(time.Hour)}
	good := signed(priv, job, now)
	if err := tasksig.Verify(keys, self, good, now); err != nil {
		t.Fatalf("a good task: %v", err)
	}
	resign := func(x *forgev1.Task) { tasksig.SignLease(priv, "a1", x) } // a lease signed anew for a changed task
	bad := map[string]struct {
		mut  func(*forgev1.Task)
		want string
	}{
		"payload changed in the store": {func(x *forgev1.Task) { x.Payload = []byte(`{"argv":["rm","-rf","/"]}`); resign(x) }, "job signature"},
		"type changed in the store":    {func(x *forgev1.Task) { x.Type = "other"; resign(x) }, "job signature"},
		"timeout changed in the store": {func(x *forgev1.Task) { x.Timeout = durationpb.New(time.Hour); resign(x) }, "job signature"},
		"another job's signature":      {func(x *forgev1.Task) { x.JobId = "j2"; resign(x) }, "job signature"},
		"max_attempts raised":          {func(x *forgev1.Task) { x.JobSignature.MaxAttempts = 9; resign(x) }, "job signature"},
		"target widened":               {func(x *forgev1.Task) { x.JobSignature.Target = "all"; resign(x) }, "job signature"},
		"job life stretched":           {func(x *forgev1.Task) { x.JobSignature.NotAfter = timestamppb.New(now.Add(time.Hour * 99)); resign(x) }, "job signature"},
		"payload altered on the way":   {func(x *forgev1.Task) { x.Payload = []byte("x") }, "job signature"},
		"attempt altered on the way":   {func(x *forgev1.Task) { x.Attempt = 2 }, "task signature"},
		"task id altered on the way":   {func(x *forgev1.Task) { x.Id = "t2-a1" }, "task signature"},
		"lease stretched on the way":   {func(x *forgev1.Task) { x.LeaseExpiresAt = timestamppb.New(now.Add(time.Hour)) }, "task signature"},
		"lease unsigned":               {func(x *forgev1.Task) { x.Signature = nil }, "not signed"},
		"job unsigned":                 {func(x *forgev1.Task) { x.JobSignature = nil }, "not signed"},
		"lease by another key":         {func(x *forgev1.Task) { tasksig.SignLease(other, "a1", x) }, "unknown key"},
		"attempt past max_attempts":    {func(x *forgev1.Task) { x.Attempt = 4; resign(x) }, "outside the job's"},
	}
	for name, c := range bad {
		x := proto.Clone(good).(*forgev1.Task)
		c.mut(x)
		if err := tasksig.Verify(keys, self, x, now); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Verify = %v, want an error naming %q", name, err, c.want)
		}
	}
	if err := tasksig.Verify(keys, tasksig.Self{ID: "a2", Name: "web-1", Labels: self.Labels}, good, now); err == nil {
		t.Errorf("a lease for agent a1 verified for a2")
	}
	if err := tasksig.Verify(keys, self, good, now.Add(time.Hour)); err == nil || !strings.Contains(err.Error(), "lease has expired") {
		t.Errorf("a lease that ended an hour ago: %v", err)
	}
	late := signed(priv, job, now.Add(2*time.Hour))
	if err := tasksig.Verify(keys, self, late, now.Add(2*time.Hour)); err == nil || !strings.Contains(err.Error(), "job has expired") {
		t.Errorf("a fresh lease of a job past NotAfter: %v", err)
	}
}

func TestTargets(t *testing.T) {
	t.Parallel()
	pub, priv, _ := ed25519.GenerateKey(nil)
	keys := map[string]ed25519.PublicKey{tasksig.KeyID(pub): pub}
	now := time.Now()
	self := tasksig.Self{ID: "a1", Name: "web-1", Labels: map[string]string{"env": "prod", "role": "web"}}
	for _, c := range []struct {
		target store.Target
		ok     bool
	}{
		{store.Target{AgentID: "a1"}, true},
		{store.Target{AgentID: "a9"}, false},
		{store.Target{All: true}, true},
		{store.Target{Selector: "env=prod,role in (web,api)"}, true},
		{store.Target{Selector: "env=dev"}, false},
		{store.Target{AgentName: "web-*"}, true},
		{store.Target{AgentName: "db-*"}, false},
	} {
		text := tasksig.TargetText(c.target)
		if back, err := tasksig.ParseTargetText(text); err != nil || back != c.target {
			t.Errorf("ParseTargetText(%q) = %+v, %v; want %+v", text, back, err, c.target)
		}
		job := tasksig.Job{ID: "j1", Type: "echo", MaxAttempts: 1, Target: text, CreatedAt: now, NotAfter: now.Add(time.Hour)}
		err := tasksig.Verify(keys, self, signed(priv, job, now), now)
		if (err == nil) != c.ok {
			t.Errorf("target %s for agent a1 web-1 env=prod,role=web: %v, want ok %v", text, err, c.ok)
		}
	}
}

func TestNotAfter(t *testing.T) {
	t.Parallel()
	now := time.Now()
	got := tasksig.NotAfter(now, time.Hour, 10*time.Minute, 30*time.Second, 3, false)
	if want := now.Add(time.Hour + 3*(10*time.Minute+30*time.Second+time.Hour) + time.Hour); !got.Equal(want) {
		t.Errorf("NotAfter = %v, want %v", got.Sub(now), want.Sub(now))
	}
	if r := tasksig.NotAfter(now, time.Hour, 10*time.Minute, 30*time.Second, 3, true); r.Sub(got) != 90*24*time.Hour {
		t.Errorf("a rollout lasts %v longer, want 90 days", r.Sub(got))
	}
}
