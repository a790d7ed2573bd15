package hot

import (
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/redistest"
	"github.com/twinline/twinline/internal/tcpproxy"
)

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

func testRedis(t testing.TB) (*redis.Client, string) { return redistest.Client(t) }

func redisAddr() string { return redistest.Addr() }
