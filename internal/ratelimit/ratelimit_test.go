package ratelimit

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/redistest"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

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

func TestMemoryGCRA(t *testing.T) {
	c := &clock{now: time.Unix(1_764_482_400, 0)}
	l, err := New(Options{Name: "ingest", Limit: Limit{Rate: 2, Burst: 3}, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	type step struct {
		advance time.Duration
		key     string
		ok      bool
		retry   time.Duration
	}
	steps := []step{
		{0, "a", true, 0},
		{0, "a", true, 0},
		{0, "a", true, 0},
		{0, "a", false, 500 * time.Millisecond},
		{0, "b", true, 0}, // another client has its own budget
		{250 * time.Millisecond, "a", false, 250 * time.Millisecond},
		{250 * time.Millisecond, "a", true, 0},
		{0, "a", false, 500 * time.Millisecond},
		{10 * time.Second, "a", true, 0}, // refilled to the burst
		{0, "a", true, 0},
		{0, "a", true, 0},
		{0, "a", false, 500 * time.Millisecond},
	}
	for i, s := range steps {
		c.Add(s.advance)
		ok, retry, err := l.Allow(ctx, s.key)
		if err != nil {
			t.Fatal(err)
		}
		if ok != s.ok || retry != s.retry {
			t.Errorf("step %d: Allow(%q) = %v, %v; want %v, %v", i, s.key, ok, retry, s.ok, s.retry)
		}
	}
}

func TestNewRejectsBadLimits(t *testing.T) {
	for _, lim := range []Limit{{0, 1}, {1, 0}, {-1, 5}} {
		if _, err := New(Options{Name: "x", Limit: lim}); err == nil {
			t.Errorf("New with %+v: no error", lim)
		}
	}
}

// TestRedisAcrossInstances: two limiters (two replicas) sharing Redis
// together allow exactly the burst.
func TestRedisAcrossInstances(t *testing.T) {
	t.Parallel()
	rdb, prefix := testRedis(t)
	ctx := context.Background()
	var ls []*Limiter
	for range 2 {
		l, err := New(Options{Name: "stream", Limit: Limit{Rate: 1.0 / 3600, Burst: 5}, Redis: rdb, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	allowed := 0
	var lastRetry time.Duration
	for i := range 12 {
		ok, retry, err := ls[i%2].Allow(ctx, "ip:10.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			allowed++
		} else {
			lastRetry = retry
		}
	}
	if allowed != 5 {
		t.Errorf("allowed %d of 12 across two limiters, want 5 (the burst)", allowed)
	}
	if lastRetry < 59*time.Minute || lastRetry > time.Hour {
		t.Errorf("retry after %v, want about 1h", lastRetry)
	}
	if ok, _, err := ls[1].Allow(ctx, "ip:10.0.0.2"); !ok || err != nil {
		t.Errorf("another client: ok %v, err %v; want allowed", ok, err)
	}
	if err := ls[0].Ready(); err != nil {
		t.Errorf("ready: %v", err)
	}
}

// TestRedisRefills checks the Redis script's arithmetic at a fast rate.
func TestRedisRefills(t *testing.T) {
	t.Parallel()
	rdb, prefix := testRedis(t)
	ctx := context.Background()
	l, err := New(Options{Name: "ingest", Limit: Limit{Rate: 20, Burst: 2}, Redis: rdb, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if ok, _, err := l.Allow(ctx, "k"); !ok || err != nil {
			t.Fatalf("within the burst: ok %v, err %v", ok, err)
		}
	}
	ok, retry, err := l.Allow(ctx, "k")
	if ok || err != nil || retry <= 0 || retry > 50*time.Millisecond {
		t.Fatalf("past the burst: ok %v, retry %v, err %v; want refused with retry in (0, 50ms]", ok, retry, err)
	}
	// Poll until the refill the limiter announced has happened.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, _, err := l.Allow(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no refill within 5s at 20/s")
		}
	}
}

func TestRedisFailsOpen(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer rdb.Close()
	l, err := New(Options{Name: "ingest", Limit: Limit{Rate: 1, Burst: 1}, Redis: rdb, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ok, _, err := l.Allow(context.Background(), "k")
		if !ok || err == nil {
			t.Errorf("Redis unreachable: ok %v, err %v; want allowed with an error", ok, err)
		}
	}
	if got := testutil.ToFloat64(l.errors); got != 3 {
		t.Errorf("errors counted %v, want 3", got)
	}
	if l.Ready() == nil {
		t.Error("ready with Redis unreachable: nil, want an error")
	}
	// A second limiter shares the registered metrics.
	if _, err := New(Options{Name: "stream", Limit: Limit{Rate: 1, Burst: 1}, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
}

func TestMiddleware(t *testing.T) {
	c := &clock{now: time.Unix(1_764_482_400, 0)}
	// Key stands in for the verified identity the API puts before the
	// limiter: here the Authorization header, taken as verified.
	key := func(r *http.Request) string {
		if a := r.Header.Get("Authorization"); a != "" {
			return "verified:" + a
		}
		return ClientKey(r)
	}
	l, err := New(Options{Name: "ingest", Limit: Limit{Rate: 0.5, Burst: 1}, Now: c.Now, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	h := l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	do := func(remote, auth string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/api/v1/ingest", nil)
		r.RemoteAddr = remote
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	if w := do("192.0.2.1:5000", ""); w.Code != http.StatusNoContent {
		t.Fatalf("first request: %d", w.Code)
	}
	w := do("192.0.2.1:5001", "")
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("second request: %d, want 429", w.Code)
	}
	if got, want := w.Header().Get("Retry-After"), "2"; got != want {
		t.Errorf("Retry-After %q, want %q", got, want)
	}
	if got, want := w.Header().Get("Content-Type"), "application/problem+json"; got != want {
		t.Errorf("Content-Type %q, want %q", got, want)
	}
	var p problem.Problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if p.Type != problem.TypeRateLimited || p.Status != 429 {
		t.Errorf("problem %+v", p)
	}
	// Another IP, or an identity from the same IP, is another client.
	if w := do("192.0.2.2:5000", ""); w.Code != http.StatusNoContent {
		t.Errorf("another IP: %d", w.Code)
	}
	if w := do("192.0.2.1:5002", "Bearer s3cret"); w.Code != http.StatusNoContent {
		t.Errorf("a token: %d", w.Code)
	}
	if w := do("192.0.2.9:5002", "Bearer s3cret"); w.Code != http.StatusTooManyRequests {
		t.Errorf("the same token from another IP: %d, want 429", w.Code)
	}
	c.Add(2 * time.Second)
	if w := do("192.0.2.1:5003", ""); w.Code != http.StatusNoContent {
		t.Errorf("after Retry-After: %d", w.Code)
	}
}

func TestClientKey(t *testing.T) {
	tests := []struct {
		name, remote, auth, want string
	}{
		{"ipv4", "192.0.2.1:1234", "", "ip:192.0.2.1"},
		{"ipv6", "[2001:db8::1]:1234", "", "ip:2001:db8::1"},
		{"no port", "192.0.2.1", "", "ip:192.0.2.1"},
		{"basic auth is not a token", "192.0.2.1:1", "Basic Zm9v", "ip:192.0.2.1"},
		// An unverified token never names the client: a made-up token
		// per request would escape the limit.
		{"unverified token", "192.0.2.1:1", "Bearer abc", "ip:192.0.2.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tt.remote
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			if diff := cmp.Diff(tt.want, ClientKey(r)); diff != "" {
				t.Errorf("ClientKey (-want +got):\n%s", diff)
			}
		})
	}
}

func testRedis(t testing.TB) (*redis.Client, string) { return redistest.Client(t) }
