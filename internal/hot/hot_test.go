package hot

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

type window = Window

// implementations returns a constructor per implementation, each window
// on the given clock.
func implementations(t *testing.T) map[string]func(t *testing.T, c *clock) window {
	return map[string]func(t *testing.T, c *clock) window{
		"memory": func(t *testing.T, c *clock) window {
			return NewMemory(Options{Window: 5 * time.Minute, Now: c.Now})
		},
		"redis": func(t *testing.T, c *clock) window {
			rdb, prefix := testRedis(t)
			return NewRedis(rdb, RedisOptions{Options: Options{Window: 5 * time.Minute, Now: c.Now}, Prefix: prefix})
		},
	}
}

func TestWindowHoldsTheLastFiveMinutes(t *testing.T) {
	for name, newWindow := range implementations(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			c := newClock()
			w := newWindow(t, c)
			start := c.Now().UnixMilli()
			key := store.SeriesKey{Machine: "press-07", Metric: "temp"}
			// One sample every 30 s for 10 minutes, plus a stale one.
			for i := 0; i <= 20; i++ {
				batch := []telemetry.Sample{
					{Machine: "press-07", Metric: "temp", Time: c.Now().UnixMilli(), Value: float64(i)},
					{Machine: "press-07", Metric: "temp", Time: c.Now().Add(-6 * time.Minute).UnixMilli(), Value: -1},
				}
				if err := w.Append(ctx, batch); err != nil {
					t.Fatal(err)
				}
				if i < 20 {
					c.Add(30 * time.Second)
				}
			}
			now := c.Now().UnixMilli()
			got, covered, err := w.Range(ctx, key, now-5*60_000, now)
			if err != nil {
				t.Fatal(err)
			}
			var want []store.Point
			for i := 10; i <= 20; i++ {
				want = append(want, store.Point{Time: start + int64(i)*30_000, Value: float64(i)})
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("last 5 minutes (-want +got):\n%s", diff)
			}
			if !covered {
				t.Errorf("range of the last 5 minutes: covered = false, want true")
			}
			if r, ok := w.(*Redis); ok {
				// Trimmed on write: the sorted set holds the window only.
				k := r.seriesPrefix("press-07") + "temp"
				if n, err := r.rdb.ZCard(ctx, k).Result(); err != nil || n != 11 {
					t.Errorf("ZCARD %s = %d, %v; want 11", k, n, err)
				}
				if ttl, err := r.rdb.PTTL(ctx, k).Result(); err != nil || ttl <= 0 || ttl > 5*time.Minute+10*time.Second {
					t.Errorf("PTTL %s = %v, %v; want in (0, 5m10s]", k, ttl, err)
				}
			}
			if _, covered, _ := w.Range(ctx, key, now-5*60_000-1, now); covered {
				t.Errorf("range starting past the window: covered = true, want false")
			}
			// A minute later, the oldest two points have left the window.
			c.Add(time.Minute)
			got, _, err = w.Range(ctx, key, 0, c.Now().UnixMilli())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want[2:], got); diff != "" {
				t.Errorf("a minute later (-want +got):\n%s", diff)
			}
			gotLatest, err := w.Latest(ctx, "press-07")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(map[string]store.Point{"temp": want[len(want)-1]}, gotLatest); diff != "" {
				t.Errorf("latest (-want +got):\n%s", diff)
			}
			// Five minutes after the last write, nothing is left.
			c.Add(5 * time.Minute)
			gotLatest, err = w.Latest(ctx, "press-07")
			if err != nil {
				t.Fatal(err)
			}
			if len(gotLatest) != 0 {
				t.Errorf("latest of an idle machine = %v, want none", gotLatest)
			}
		})
	}
}

func TestWindowLatestAndOrder(t *testing.T) {
	for name, newWindow := range implementations(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			c := newClock()
			w := newWindow(t, c)
			c.Add(time.Minute)
			now := c.Now().UnixMilli()
			err := w.Append(ctx, []telemetry.Sample{
				{Machine: "oven-1", Metric: "temp", Time: now - 10, Value: 180},
				{Machine: "oven-1", Metric: "temp", Time: now - 30, Value: 170}, // late
				{Machine: "oven-1", Metric: "rpm", Time: now - 5, Value: 12},
				{Machine: "mill-3", Metric: "temp", Time: now - 1, Value: 40},
			})
			if err != nil {
				t.Fatal(err)
			}
			// Duplicate time, same value: kept once.
			if err := w.Append(ctx, []telemetry.Sample{{Machine: "oven-1", Metric: "temp", Time: now - 10, Value: 180}}); err != nil {
				t.Fatal(err)
			}
			got, err := w.Latest(ctx, "oven-1")
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]store.Point{"temp": {Time: now - 10, Value: 180}, "rpm": {Time: now - 5, Value: 12}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("latest (-want +got):\n%s", diff)
			}
			pts, covered, err := w.Range(ctx, store.SeriesKey{Machine: "oven-1", Metric: "temp"}, now-60_000, now)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]store.Point{{Time: now - 30, Value: 170}, {Time: now - 10, Value: 180}}, pts); diff != "" {
				t.Errorf("range (-want +got):\n%s", diff)
			}
			if !covered {
				t.Errorf("covered = false, want true")
			}
			// Before the window started, not covered.
			if _, covered, _ := w.Range(ctx, store.SeriesKey{Machine: "oven-1", Metric: "temp"}, now-2*60_000, now); covered {
				t.Errorf("range from before the window started: covered = true, want false")
			}
			if pts, _, err := w.Range(ctx, store.SeriesKey{Machine: "oven-1", Metric: "temp"}, now, now-1); err != nil || len(pts) != 0 {
				t.Errorf("empty range = %v, %v; want none", pts, err)
			}
			if got, err := w.Latest(ctx, "nobody"); err != nil || len(got) != 0 {
				t.Errorf("latest of an unknown machine = %v, %v; want none", got, err)
			}
			if err := w.Ready(); err != nil {
				t.Errorf("ready: %v", err)
			}
		})
	}
}

// TestRedisOutage cuts Redis off (a TCP proxy) while writes go on: they
// fail fast, Range stops claiming the lost range, and the window recovers
// without a new client.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, prefix := testRedis(t)
	p := newProxy(t, redisAddr())
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer rdb.Close()
	c := newClock()
	w := NewRedis(rdb, RedisOptions{Options: Options{Now: c.Now}, Prefix: prefix, Timeout: 300 * time.Millisecond})
	key := store.SeriesKey{Machine: "press-07", Metric: "temp"}
	write := func() error {
		return w.Append(ctx, []telemetry.Sample{{Machine: "press-07", Metric: "temp", Time: c.Now().UnixMilli(), Value: 1}})
	}
	if err := write(); err != nil {
		t.Fatal(err)
	}
	start := c.Now().UnixMilli()
	c.Add(time.Minute)

	p.Cut()
	t0 := time.Now()
	if err := write(); err == nil {
		t.Fatal("append with Redis cut off: no error")
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("append with Redis cut off took %v", d)
	}
	if err := w.Ready(); err == nil {
		t.Error("ready with Redis cut off: nil, want an error")
	}
	if _, covered, err := w.Range(ctx, key, start, c.Now().UnixMilli()); err == nil || covered {
		t.Errorf("range with Redis cut off = covered %v, %v; want not covered and an error", covered, err)
	}
	if _, err := w.Latest(ctx, "press-07"); err == nil {
		t.Error("latest with Redis cut off: no error")
	}
	lost := c.Now().UnixMilli()
	c.Add(time.Minute)

	p.Restore()
	deadline := time.Now().Add(10 * time.Second)
	for write() != nil {
		if time.Now().After(deadline) {
			t.Fatal("append still failing 10s after Redis came back")
		}
	}
	if err := w.Ready(); err != nil {
		t.Errorf("ready after recovery: %v", err)
	}
	now := c.Now().UnixMilli()
	if _, covered, err := w.Range(ctx, key, start, now); err != nil || covered {
		t.Errorf("range over the lost write = covered %v, %v; want false", covered, err)
	}
	if _, covered, err := w.Range(ctx, key, lost+1, now); err != nil || !covered {
		t.Errorf("range after the lost write = covered %v, %v; want true", covered, err)
	}
}

func TestUnpackRejectsGarbage(t *testing.T) {
	if _, err := unpack("short"); err == nil {
		t.Error("unpack of 5 bytes: no error")
	}
	for _, p := range []store.Point{{Time: -5, Value: -1.5}, {Time: 1 << 50, Value: 3}} {
		got, err := unpack(member(p))
		if err != nil || got != p {
			t.Errorf("unpack(member(%v)) = %v, %v", p, got, err)
		}
	}
}
