package hot

import (
	"context"
	"crypto/rand"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/tcpproxy"
)

// testRedis connects to the Redis on 127.0.0.1:6379 (TWINLINE_TEST_REDIS
// overrides the address) and returns a client and a key prefix of the
// test's own, whose keys are deleted when the test ends. Without Redis the
// test fails under CI=true and is skipped otherwise.
func testRedis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	addr := redisAddr()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, DialTimeout: time.Second, MaxRetries: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis at %s: %v", addr, err)
		}
		t.Skipf("redis at %s unavailable (%v); set CI=true to fail instead", addr, err)
	}
	prefix := "twinline-test:" + rand.Text()[:12] + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		deleteKeys(ctx, t, rdb, prefix)
		rdb.Close()
	})
	return rdb, prefix
}

func deleteKeys(ctx context.Context, t testing.TB, rdb *redis.Client, prefix string) {
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Errorf("scanning test keys: %v", err)
	}
	if len(keys) > 0 {
		if err := rdb.Del(ctx, keys...).Err(); err != nil {
			t.Errorf("deleting test keys: %v", err)
		}
	}
}

func redisAddr() string {
	if addr := os.Getenv("TWINLINE_TEST_REDIS"); addr != "" {
		return addr
	}
	return "127.0.0.1:6379"
}

// clock is an injected clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.UnixMilli(1_764_482_400_000)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// proxy is a TCP proxy whose connections the test can cut.
type proxy = tcpproxy.Proxy

func newProxy(t testing.TB, target string) *proxy { return tcpproxy.New(t, target) }
