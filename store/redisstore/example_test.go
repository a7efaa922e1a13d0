package redisstore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

// Open a Redis store shared by every server replica. The same URL form names a
// single node or any node of a Redis Cluster (add more with ?addr=host:port).
func ExampleOpen() {
	ctx := context.Background()
	s, err := redisstore.Open(ctx, "redis://127.0.0.1:6379/0", store.Config{}, redisstore.Options{
		Logger: slog.Default(),
		Prefix: "forge",
	})
	if err != nil {
		fmt.Println("redis:", err) // KindUnavailable when Redis cannot be reached
		return
	}
	defer s.Close()
	w := s.Watch(store.AgentKey("a0123456789abcde")) // fires on changes made by any replica
	defer w.Stop()
}

// Open a Redis that serves TLS with a private CA and asks for a client
// certificate, as an ACL user whose password is kept out of the URL.
func ExampleOptions_tls() {
	ctx := context.Background()
	pem, err := os.ReadFile("/etc/forge/redis-ca.pem")
	if err != nil {
		fmt.Println(err)
		return
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair("/etc/forge/redis-client.pem", "/etc/forge/redis-client-key.pem")
	if err != nil {
		fmt.Println(err)
		return
	}
	password, err := os.ReadFile("/etc/forge/redis-password")
	if err != nil {
		fmt.Println(err)
		return
	}
	s, err := redisstore.Open(ctx, "rediss://forge@redis.internal:6380/0", store.Config{}, redisstore.Options{
		TLS:      &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		Password: strings.TrimSpace(string(password)),
	})
	if err != nil {
		// The message names the cause (TLS, auth, permission …); CauseOf tells which.
		fmt.Println(redisstore.CauseOf(err), err)
		return
	}
	defer s.Close()
}

// Open a master through its sentinels; WaitReplicas makes each write wait until
// a replica has it, so a failover loses nothing the store answered.
func ExampleOpen_sentinel() {
	ctx := context.Background()
	s, err := redisstore.Open(ctx, "redis://sentinel-1:26379/0?addr=sentinel-2:26379&addr=sentinel-3:26379&master_set=forge",
		store.Config{}, redisstore.Options{WaitReplicas: 1})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
}
