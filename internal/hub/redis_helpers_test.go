package hub

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/redistest"
	"github.com/twinline/twinline/internal/tcpproxy"
)

// replica is one in-process twinline replica's hub, served over HTTP.
type replica struct {
	hub *Hub
	srv *httptest.Server
	rdb *redis.Client
	reg *prometheus.Registry
}

// newReplica starts a hub fanning out through the Redis at addr under
// prefix, and waits until it is subscribed.
func newReplica(t *testing.T, addr, prefix string, opts Options) *replica {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{
		Addr: addr, ContextTimeoutEnabled: true,
		DialTimeout: 300 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second,
		MaxRetries: -1,
	})
	opts.Redis, opts.RedisPrefix = rdb, prefix
	if opts.RedisTimeout == 0 {
		opts.RedisTimeout = 300 * time.Millisecond
	}
	reg := prometheus.NewRegistry()
	h := New(opts, nil, reg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	srv := newTestServer(t, h)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		h.Shutdown(sctx)
		cancel()
		<-done
		rdb.Close()
	})
	r := &replica{hub: h, srv: srv, rdb: rdb, reg: reg}
	r.waitReady(t)
	return r
}

func (r *replica) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.hub.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("hub not subscribed to redis within 10s: %v", r.hub.Ready())
		}
		r.hub.waitSeq(context.Background(), r.hub.latest()+1, 10*time.Millisecond)
	}
}

// proxy is a TCP proxy whose connections the test can cut.
type proxy = tcpproxy.Proxy

func newProxy(t testing.TB, target string) *proxy { return tcpproxy.New(t, target) }

// newBenchReplica starts a hub fanning out through the Redis on 127.0.0.1
// under prefix, for benchmarks, and waits until it is subscribed.
func newBenchReplica(b *testing.B, prefix string) *Hub {
	b.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr(), ContextTimeoutEnabled: true})
	h := New(Options{Redis: rdb, RedisPrefix: prefix, QueueSize: 1 << 12}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		rdb.Close()
	})
	deadline := time.Now().Add(10 * time.Second)
	for h.Ready() != nil {
		if time.Now().After(deadline) {
			b.Fatal("hub not subscribed to redis within 10s")
		}
		h.waitSeq(ctx, h.latest()+1, 10*time.Millisecond)
	}
	return h
}

// testRedisPrefix returns a key prefix of the test's own on the test Redis.
func testRedisPrefix(t testing.TB) string {
	_, prefix := redistest.Client(t)
	return prefix
}

func redisAddr() string { return redistest.Addr() }
