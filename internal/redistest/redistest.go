// Package redistest gives tests a Redis of their own: a client of the
// development and CI machines' Redis and a key prefix no other test uses,
// whose keys are deleted when the test ends. Without Redis the test fails
// under CI=true and is skipped otherwise.
package redistest

import (
	"context"
	"crypto/rand"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Addr is the Redis tests use: 127.0.0.1:6379, or TWINLINE_TEST_REDIS.
func Addr() string {
	if addr := os.Getenv("TWINLINE_TEST_REDIS"); addr != "" {
		return addr
	}
	return "127.0.0.1:6379"
}

// Client returns a client of Addr and a key prefix of the test's own.
func Client(t testing.TB) (*redis.Client, string) {
	t.Helper()
	addr := Addr()
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
		defer rdb.Close()
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
	})
	return rdb, prefix
}
