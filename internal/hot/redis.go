package hot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// DefaultTimeout bounds each Redis call of the hot window when
// RedisOptions.Timeout is zero.
const DefaultTimeout = 500 * time.Millisecond

// RedisOptions configure a Redis hot window.
type RedisOptions struct {
	Options
	// Prefix namespaces every key (e.g. "twinline:").
	Prefix string
	// Timeout bounds each call to Redis (default 500ms), so that an
	// unreachable Redis does not hold ingest up for long. It bounds the
	// network waits only if the client has ContextTimeoutEnabled.
	Timeout time.Duration
}

// Redis is the hot window shared by every replica, in Redis. Each series is
// a sorted set scored by event time (ms) whose members pack the time and
// the value in 16 bytes; each machine has a set of its metrics. Append
// trims by time and renews the TTLs of what it writes, all in one pipelined
// round trip, so an idle machine's keys expire. A sorted set
// "<prefix>hot:meta" holds since, the time from which the window is known
// to be complete: set when the window is first written and raised past any
// write lost while Redis was unreachable. It is safe for concurrent use.
type Redis struct {
	rdb     redis.UniversalClient
	opts    RedisOptions
	window  int64 // ms
	ttl     time.Duration
	meta    string
	latest  *redis.Script
	mu      sync.Mutex
	lostMax int64 // ms, latest failed write not yet marked in Redis; 0 if none
	// born is when the window was made (ms): until its first write has
	// succeeded, it is where a new window starts; after it, now is.
	born    int64
	written bool
}

// NewRedis returns a hot window in Redis through rdb. It does not contact
// Redis.
func NewRedis(rdb redis.UniversalClient, opts RedisOptions) *Redis {
	opts.Options = opts.withDefaults()
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	return &Redis{
		rdb:    rdb,
		opts:   opts,
		window: opts.Window.Milliseconds(),
		// A little past the window, for samples stamped slightly ahead.
		ttl:    opts.Window + 10*time.Second,
		meta:   opts.Prefix + "hot:meta",
		latest: redis.NewScript(latestScript),
		born:   opts.Now().UnixMilli(),
	}
}

// The keys of a machine carry its id as a hash tag, so that on a Redis
// Cluster they share a slot and Latest is one script call.

func (r *Redis) metricsKey(machine string) string {
	return r.opts.Prefix + "hot:{" + machine + "}"
}

func (r *Redis) seriesPrefix(machine string) string {
	return r.opts.Prefix + "hot:{" + machine + "}:"
}

// member packs a point: big-endian time (sign bit flipped, so that the
// bytes order as the times do), then the IEEE 754 bits of the value.
func member(p store.Point) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(p.Time)^(1<<63))
	binary.BigEndian.PutUint64(b[8:], math.Float64bits(p.Value))
	return string(b[:])
}

func unpack(s string) (store.Point, error) {
	if len(s) != 16 {
		return store.Point{}, fmt.Errorf("decoding hot window member: %d bytes, want 16", len(s))
	}
	return store.Point{
		Time:  int64(binary.BigEndian.Uint64([]byte(s[:8])) ^ (1 << 63)),
		Value: math.Float64frombits(binary.BigEndian.Uint64([]byte(s[8:]))),
	}, nil
}

// Append writes samples in one pipelined round trip: per series ZADD, a
// trim of what has become older than the window, and PEXPIRE; per machine
// its metric set. Samples older than the window are skipped. On error the
// window is marked incomplete up to now once Redis answers again, so Range
// does not claim a range it may have lost.
func (r *Redis) Append(ctx context.Context, samples []telemetry.Sample) error {
	now := r.opts.Now().UnixMilli()
	cutoff := now - r.window
	type series struct {
		machine, metric string
		members         []redis.Z
	}
	index := make(map[store.SeriesKey]int)
	var all []series
	newest := now
	for i := range samples {
		s := &samples[i]
		if s.Time < cutoff {
			continue
		}
		newest = max(newest, s.Time)
		k := store.SeriesKey{Machine: s.Machine, Metric: s.Metric}
		j, ok := index[k]
		if !ok {
			j = len(all)
			index[k] = j
			all = append(all, series{machine: s.Machine, metric: s.Metric})
		}
		all[j].members = append(all[j].members, redis.Z{Score: float64(s.Time), Member: member(store.Point{Time: s.Time, Value: s.Value})})
	}
	if len(all) == 0 {
		return nil
	}
	r.mu.Lock()
	lost, start, first := r.lostMax, now, !r.written
	if first {
		start = r.born
	}
	r.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	pipe := r.rdb.Pipeline()
	min := "(" + strconv.FormatInt(cutoff, 10)
	machines := make(map[string][]any)
	for _, s := range all {
		key := r.seriesPrefix(s.machine) + s.metric
		pipe.ZAdd(ctx, key, s.members...)
		pipe.ZRemRangeByScore(ctx, key, "-inf", min)
		pipe.PExpire(ctx, key, r.ttl)
		machines[s.machine] = append(machines[s.machine], s.metric)
	}
	for machine, metrics := range machines {
		key := r.metricsKey(machine)
		pipe.SAdd(ctx, key, metrics...)
		pipe.PExpire(ctx, key, r.ttl)
	}
	// Complete from now on if the window is new (or Redis lost it); from
	// when this replica started if this is its first write, since every
	// sample it took was written.
	pipe.ZAddNX(ctx, r.meta, redis.Z{Score: float64(start), Member: "since"})
	if first {
		// A replica that died (kill -9) may have lost batches it had not
		// written yet, all of event times before this replica started: the
		// window is complete from then on only.
		pipe.ZAddGT(ctx, r.meta, redis.Z{Score: float64(r.born), Member: "since"})
	}
	if lost > 0 {
		pipe.ZAddGT(ctx, r.meta, redis.Z{Score: float64(lost + 1), Member: "since"})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		r.mu.Lock()
		r.lostMax = max(r.lostMax, newest)
		r.mu.Unlock()
		return fmt.Errorf("writing hot window: %w", err)
	}
	r.mu.Lock()
	r.written = true
	if lost > 0 && r.lostMax == lost {
		r.lostMax = 0
	}
	r.mu.Unlock()
	return nil
}

// latestScript returns, for the machine's metric set KEYS[1] and the
// series key prefix ARGV[1], metric and newest member pairs; it forgets
// the metrics whose series has expired.
const latestScript = `
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local r = redis.call('ZRANGE', ARGV[1] .. m, -1, -1)
  if r[1] then
    out[#out+1] = m
    out[#out+1] = r[1]
  else
    redis.call('SREM', KEYS[1], m)
  end
end
return out
`

// Latest returns the newest point (by event time) of each metric of
// machine held in the window, in one round trip.
func (r *Redis) Latest(ctx context.Context, machine string) (map[string]store.Point, error) {
	cutoff := r.opts.Now().UnixMilli() - r.window
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	res, err := r.latest.Run(ctx, r.rdb, []string{r.metricsKey(machine)}, r.seriesPrefix(machine)).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("reading hot window latest: %w", err)
	}
	out := make(map[string]store.Point, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		p, err := unpack(res[i+1])
		if err != nil {
			return nil, err
		}
		if p.Time >= cutoff {
			out[res[i]] = p
		}
	}
	return out, nil
}

// Range returns the points of key in [from, to] (ms, inclusive), in time
// order, and whether the window covers that range, in one round trip. Two
// values at the same time (a duplicate with another value) give the one
// whose bytes sort first. On error covered is false.
func (r *Redis) Range(ctx context.Context, key store.SeriesKey, from, to int64) ([]store.Point, bool, error) {
	if from > to {
		return nil, false, nil
	}
	cutoff := r.opts.Now().UnixMilli() - r.window
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	pipe := r.rdb.Pipeline()
	rng := pipe.ZRangeByScore(ctx, r.seriesPrefix(key.Machine)+key.Metric, &redis.ZRangeBy{
		Min: strconv.FormatInt(max(from, cutoff), 10),
		Max: strconv.FormatInt(to, 10),
	})
	since := pipe.ZScore(ctx, r.meta, "since")
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, false, fmt.Errorf("reading hot window range: %w", err)
	}
	members := rng.Val()
	pts := make([]store.Point, 0, len(members))
	for _, s := range members {
		p, err := unpack(s)
		if err != nil {
			return nil, false, err
		}
		if n := len(pts); n > 0 && pts[n-1].Time == p.Time {
			continue
		}
		pts = append(pts, p)
	}
	ok := since.Err() == nil && covered(from, to, max(int64(since.Val()), cutoff))
	return pts, ok, nil
}

// Ready reports whether Redis answers.
func (r *Redis) Ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
	defer cancel()
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("pinging redis: %w", err)
	}
	return nil
}
