package tasksig_test

import (
	"crypto/ed25519"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/tasksig"
)

func TestSignVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	_, other, _ := ed25519.GenerateKey(nil)
	keys := map[string]ed25519.PublicKey{tasksig.KeyID(pub): pub}
	now := time.Now()
	base := &forgev1.Task{Id: "t1-a1", JobId: "j1", Attempt: 1, Type: "exec", Payload: []byte(`{"argv":["uptime"]}`),
		Timeout: durationpb.New(time.Minute), LeaseExpiresAt: timestamppb.New(now.Add(30 * time.Second))}
	signed := proto.Clone(base).(*forgev1.Task)
	tasksig.Sign(priv, "a1", signed)
	if err := tasksig.Verify(keys, "a1", signed, now); err != nil {
		t.Fatalf("a good task: %v", err)
	}
	bad := map[string]func(*forgev1.Task){
		"payload":  func(x *forgev1.Task) { x.Payload = []byte(`{"argv":["rm","-rf","/"]}`) },
		"type":     func(x *forgev1.Task) { x.Type = "other" },
		"attempt":  func(x *forgev1.Task) { x.Attempt = 2 },
		"id":       func(x *forgev1.Task) { x.Id = "t2-a1" },
		"timeout":  func(x *forgev1.Task) { x.Timeout = durationpb.New(time.Hour) },
		"lease":    func(x *forgev1.Task) { x.LeaseExpiresAt = timestamppb.New(now.Add(time.Hour)) },
		"unsigned": func(x *forgev1.Task) { x.Signature = nil },
		"key":      func(x *forgev1.Task) { tasksig.Sign(other, "a1", x) },
	}
	for name, mut := range bad {
		x := proto.Clone(signed).(*forgev1.Task)
		mut(x)
		if err := tasksig.Verify(keys, "a1", x, now); err == nil {
			t.Errorf("tampered %s verified", name)
		}
	}
	if err := tasksig.Verify(keys, "a2", signed, now); err == nil {
		t.Errorf("a task for agent a1 verified for a2")
	}
	if err := tasksig.Verify(keys, "a1", signed, now.Add(time.Hour)); err == nil {
		t.Errorf("a task whose lease ended an hour ago verified (replay)")
	}
}
