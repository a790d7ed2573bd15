// Package ratelimit limits requests per client (its verified identity, see
// Options.Key, else its IP address) with GCRA, the generic cell rate algorithm: a limit of
// Rate requests per second with bursts of up to Burst. With a Redis client
// the limit holds across every replica (one Lua script, one round trip per
// request, on Redis's clock); without, it holds per process. If Redis
// fails, the limiter fails open: the request is allowed and the error
// counted.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/problem"
)

// Limit is a rate with a burst.
type Limit struct {
	// Rate is the sustained rate, in requests per second.
	Rate float64
	// Burst is how many requests may come at once.
	Burst int
}

// DefaultTimeout bounds each Redis call when Options.Timeout is zero.
const DefaultTimeout = 250 * time.Millisecond

// Options configure a Limiter.
type Options struct {
	// Name names the limiter in keys, metrics and answers ("ingest",
	// "stream").
	Name string
	// Limit is the limit per client.
	Limit Limit
	// Redis, when not nil, holds the limiter state shared by every replica.
	Redis redis.UniversalClient
	// Prefix namespaces the Redis keys (e.g. "twinline:").
	Prefix string
	// Timeout bounds each Redis call (default 250ms).
	Timeout time.Duration
	// Now is the clock of the in-memory limiter (default time.Now); the
	// Redis limiter uses Redis's clock.
	Now func() time.Time
	// Logger gets the Redis errors (rate limited to one a minute); nil
	// discards.
	Logger *slog.Logger
	// Registerer gets the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Key names the client of a request for Middleware: its verified
	// identity, or its address (default ClientKey).
	Key func(*http.Request) string
}

// Limiter is a per-client rate limit. It is safe for concurrent use.
type Limiter struct {
	opts     Options
	interval float64 // seconds between requests at the sustained rate
	tolerant float64 // seconds of burst: interval × (burst − 1)
	script   *redis.Script
	logger   *slog.Logger
	allowed  prometheus.Counter
	limited  prometheus.Counter
	errors   prometheus.Counter

	mu        sync.Mutex
	tat       map[string]int64 // in memory: key → theoretical arrival time, Unix ns
	lastSweep int64
	lastLog   time.Time
}

// New returns a Limiter; it does not contact Redis.
func New(opts Options) (*Limiter, error) {
	if opts.Limit.Rate <= 0 || math.IsInf(opts.Limit.Rate, 0) || math.IsNaN(opts.Limit.Rate) || opts.Limit.Burst < 1 {
		return nil, fmt.Errorf("rate limit %s: rate must be positive and burst at least 1, got %g and %d",
			opts.Name, opts.Limit.Rate, opts.Limit.Burst)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	interval := 1 / opts.Limit.Rate
	l := &Limiter{
		opts:     opts,
		interval: interval,
		tolerant: interval * float64(opts.Limit.Burst-1),
		script:   redis.NewScript(gcraScript),
		logger:   logger.With("component", "ratelimit", "limiter", opts.Name),
		tat:      make(map[string]int64),
	}
	m := newMetrics(opts.Registerer)
	l.allowed = m.requests.WithLabelValues(opts.Name, "allowed")
	l.limited = m.requests.WithLabelValues(opts.Name, "limited")
	l.errors = m.errors.WithLabelValues(opts.Name)
	return l, nil
}

// Allow takes one request of client key and reports whether it is
// allowed; if not, retryAfter is how long until it would be. With Redis
// unreachable it reports ok with the error (fail open), which the caller
// may log or ignore.
func (l *Limiter) Allow(ctx context.Context, key string) (ok bool, retryAfter time.Duration, err error) {
	if l.opts.Redis == nil {
		ok, retryAfter = l.allowMemory(key)
	} else {
		ok, retryAfter, err = l.allowRedis(ctx, key)
		if err != nil {
			l.errors.Inc()
			l.logError(err)
			ok, retryAfter = true, 0
		}
	}
	if ok {
		l.allowed.Inc()
	} else {
		l.limited.Inc()
	}
	return ok, retryAfter, err
}

// allowMemory is GCRA on a map: a client's tat is when its bucket would be
// empty; a request is allowed if tat − now ≤ tolerant, and pushes tat by
// one interval.
func (l *Limiter) allowMemory(key string) (bool, time.Duration) {
	now := l.opts.Now().UnixNano()
	interval, tolerant := int64(seconds(l.interval)), int64(seconds(l.tolerant))
	l.mu.Lock()
	defer l.mu.Unlock()
	tat, ok := l.tat[key]
	if !ok || tat < now {
		tat = now
	}
	if wait := tat - now - tolerant; wait > 0 {
		return false, time.Duration(wait)
	}
	l.tat[key] = tat + interval
	// Forget idle clients: a tat in the past is the same as none.
	if now-l.lastSweep > int64(time.Minute) {
		for k, t := range l.tat {
			if t < now {
				delete(l.tat, k)
			}
		}
		l.lastSweep = now
	}
	return true, 0
}

// gcraScript is GCRA in one call, on Redis's clock (TIME), so that replicas
// with skewed clocks agree. KEYS[1] holds the client's tat in seconds;
// ARGV are the interval and the tolerance, in seconds. It returns {1, 0}
// when allowed, {0, wait in µs} when not.
const gcraScript = `
local interval = tonumber(ARGV[1])
local tolerant = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - tolerant
if wait > 0 then
  return {0, math.ceil(wait * 1000000)}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
return {1, 0}
`

func (l *Limiter) allowRedis(ctx context.Context, key string) (bool, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	k := l.opts.Prefix + "rl:" + l.opts.Name + ":" + key
	res, err := l.script.Run(ctx, l.opts.Redis, []string{k},
		strconv.FormatFloat(l.interval, 'g', -1, 64), strconv.FormatFloat(l.tolerant, 'g', -1, 64)).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("checking rate limit %s: %w", l.opts.Name, err)
	}
	if len(res) != 2 {
		return false, 0, fmt.Errorf("checking rate limit %s: script answered %d values, want 2", l.opts.Name, len(res))
	}
	return res[0] == 1, time.Duration(res[1]) * time.Microsecond, nil
}

func (l *Limiter) logError(err error) {
	l.mu.Lock()
	now := time.Now()
	log := now.Sub(l.lastLog) > time.Minute
	if log {
		l.lastLog = now
	}
	l.mu.Unlock()
	if log {
		l.logger.Warn("rate limiter failing open", "err", err)
	}
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * 1e9)) }

// Ready reports whether the limiter's Redis answers; an in-memory limiter
// is always ready. A limiter that is not ready still answers (it fails
// open).
func (l *Limiter) Ready() error {
	if l.opts.Redis == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.Timeout)
	defer cancel()
	if err := l.opts.Redis.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("pinging redis: %w", err)
	}
	return nil
}

// Middleware limits the requests next serves, per ClientKey, answering
// 429 problem+json with Retry-After (whole seconds, at least 1) past the
// limit.
func (l *Limiter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := ClientKey
		if l.opts.Key != nil {
			key = l.opts.Key
		}
		ok, retry, _ := l.Allow(r.Context(), key(r))
		if !ok {
			problem.Write(w, &problem.Problem{
				Type:       problem.TypeRateLimited,
				Status:     http.StatusTooManyRequests,
				Detail:     fmt.Sprintf("too many %s requests from this client: at most %g a second, bursts of %d; retry later", l.opts.Name, l.opts.Limit.Rate, l.opts.Limit.Burst),
				RetryAfter: max(1, int(math.Ceil(retry.Seconds()))),
			})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ClientKey names the client of r by "ip:" and the host of r.RemoteAddr.
// Servers with identities pass Options.Key instead: an unverified token
// must never name a client (a made-up token per request would escape
// every limit).
func ClientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "ip:" + host
}

type metrics struct {
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_ratelimit_requests_total",
			Help: "Requests checked by a rate limiter, by limiter (ingest, stream) and result (allowed, limited).",
		}, []string{"limiter", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_ratelimit_errors_total",
			Help: "Rate limit checks that failed on Redis and were allowed (fail open), by limiter.",
		}, []string{"limiter"}),
	}
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.errors = register(reg, m.errors)
	}
	return m
}

// register registers c, or returns the collector already registered under
// its name (the limiters of one process share their metrics).
func register(reg prometheus.Registerer, c *prometheus.CounterVec) *prometheus.CounterVec {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
	}
	return c
}
