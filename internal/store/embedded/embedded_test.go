package embedded

import (
	"context"
	"errors"
	"math"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

const (
	sec  = int64(time.Second / time.Millisecond)
	hour = int64(time.Hour / time.Millisecond)
)

var base = storetest.Base

func open(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func mustAppend(t testing.TB, s store.Store, samples []telemetry.Sample) {
	t.Helper()
	if err := s.Append(context.Background(), samples); err != nil {
		t.Fatalf("Append: %v", err)
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(t.TempDir(), Options{}, nil, prometheus.NewRegistry())
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := storetest.Samples("m1", "temp", base, time.Second, 500, func(i int) float64 { return float64(i) })
	b := storetest.Samples("m2", "rpm", base, time.Second, 500, func(i int) float64 { return -float64(i) })
	mustAppend(t, s, append(a[:400:400], b[:400]...))
	mustAppend(t, s, append(a[400:], b[400:]...))
	mustAppend(t, s, a[100:101]) // a late duplicate
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = open(t, dir, Options{})
	for _, tt := range []struct {
		key  store.SeriesKey
		want []telemetry.Sample
	}{
		{store.SeriesKey{Machine: "m1", Metric: "temp"}, a},
		{store.SeriesKey{Machine: "m2", Metric: "rpm"}, b},
	} {
		got := storetest.SelectAll(t, s, tt.key, math.MinInt64, math.MaxInt64)
		if diff := cmp.Diff(got, storetest.Points(tt.want)); diff != "" {
			t.Errorf("%v after reopen (-got +want):\n%s", tt.key, diff)
		}
	}
	keys, err := s.Series(context.Background(), math.MinInt64, math.MaxInt64)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(keys, []store.SeriesKey{{Machine: "m1", Metric: "temp"}, {Machine: "m2", Metric: "rpm"}}); diff != "" {
		t.Errorf("Series after reopen (-got +want):\n%s", diff)
	}

	// The series cache is cold: the store must learn what is stored before
	// treating old samples as new.
	changed := append([]telemetry.Sample(nil), a[499], a[200])
	changed[0].Value, changed[1].Value = 1e9, 1e9
	mustAppend(t, s, changed)
	mustAppend(t, s, a[300:301])
	got := storetest.SelectAll(t, s, store.SeriesKey{Machine: "m1", Metric: "temp"}, math.MinInt64, math.MaxInt64)
	if diff := cmp.Diff(got, storetest.Points(a)); diff != "" {
		t.Errorf("after conflicting appends on reopened store (-got +want):\n%s", diff)
	}
	if got, want := s.Stats(), (Stats{Conflicts: 2, Duplicates: 1}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, Options{}, nil, prometheus.NewRegistry())
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	t.Logf("second Open: %v", err)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, dir, Options{})
}

func TestRegistry(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	for range 2 { // reopening with the same registry must not panic
		s, err := Open(dir, Options{}, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		mustAppend(t, s, storetest.Samples("m", "x", base, time.Second, 3, func(int) float64 { return 1 }))
		mustAppend(t, s, storetest.Samples("m", "x", base, time.Second, 3, func(int) float64 { return 1 }))
		n, err := testutil.GatherAndCount(reg, "twinline_store_duplicate_samples_total", "prometheus_tsdb_head_series")
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Errorf("gathered %d of the 2 metrics", n)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Errorf("%d metrics left registered after Close", n)
	}
}

func TestOutOfBounds(t *testing.T) {
	now := time.UnixMilli(base + 100*hour)
	s := open(t, t.TempDir(), Options{
		OutOfOrderWindow: 24 * time.Hour,
		MaxFuture:        10 * time.Minute,
		Now:              func() time.Time { return now },
	})
	at := func(machine string, t int64) telemetry.Sample {
		return telemetry.Sample{Machine: machine, Metric: "x", Time: t, Value: 1}
	}
	t0 := base + 99*hour
	mustAppend(t, s, []telemetry.Sample{at("a", t0)})

	batch := []telemetry.Sample{
		at("a", t0-25*hour),               // beyond the window
		at("b", t0-25*hour),               // beyond the window, new series
		at("a", t0-22*hour),               // late but in the window
		at("a", t0+sec),                   // in order
		at("c", now.UnixMilli()+11*60000), // too far in the future
		at("c", now.UnixMilli()+9*60000),  // in the future, but not too far
	}
	err := s.Append(context.Background(), batch)
	if !errors.Is(err, store.ErrOutOfBounds) {
		t.Fatalf("Append = %v, want ErrOutOfBounds", err)
	}
	if !strings.Contains(err.Error(), "3 of 6") {
		t.Errorf("Append error %q does not say how many", err)
	}
	for _, tt := range []struct {
		machine string
		want    []store.Point
	}{
		{"a", []store.Point{{Time: t0 - 22*hour, Value: 1}, {Time: t0, Value: 1}, {Time: t0 + sec, Value: 1}}},
		{"b", nil},
		{"c", []store.Point{{Time: now.UnixMilli() + 9*60000, Value: 1}}},
	} {
		got := storetest.SelectAll(t, s, store.SeriesKey{Machine: tt.machine, Metric: "x"}, math.MinInt64, math.MaxInt64)
		if diff := cmp.Diff(got, tt.want, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("machine %s (-got +want):\n%s", tt.machine, diff)
		}
	}
	if got := s.Stats().OutOfBounds; got != 3 {
		t.Errorf("Stats().OutOfBounds = %d, want 3", got)
	}
}

func TestOutOfOrderDisabled(t *testing.T) {
	s := open(t, t.TempDir(), Options{OutOfOrderWindow: -1})
	samples := storetest.Samples("m", "x", base, time.Second, 10, func(i int) float64 { return float64(i) })
	mustAppend(t, s, samples)
	mustAppend(t, s, samples[3:5]) // identical old samples stay idempotent
	late := samples[5]
	late.Time += 500
	if err := s.Append(context.Background(), []telemetry.Sample{late}); !errors.Is(err, store.ErrOutOfBounds) {
		t.Errorf("late Append with out-of-order disabled = %v, want ErrOutOfBounds", err)
	}
	got := storetest.SelectAll(t, s, store.SeriesKey{Machine: "m", Metric: "x"}, math.MinInt64, math.MaxInt64)
	if diff := cmp.Diff(got, storetest.Points(samples)); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
}

func TestInvalidSamples(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	err := s.Append(context.Background(), []telemetry.Sample{
		{Machine: "", Metric: "x", Time: base, Value: 1},
		{Machine: "m", Metric: "", Time: base, Value: 1},
		{Machine: "m", Metric: "x", Time: base, Value: 1},
	})
	if err == nil || errors.Is(err, store.ErrOutOfBounds) {
		t.Errorf("Append with empty labels = %v, want an error", err)
	}
	if got := storetest.SelectAll(t, s, store.SeriesKey{Machine: "m", Metric: "x"}, math.MinInt64, math.MaxInt64); len(got) != 1 {
		t.Errorf("valid sample not stored: %v", got)
	}
	if got := s.Stats().Invalid; got != 2 {
		t.Errorf("Stats().Invalid = %d, want 2", got)
	}
}

// TestRetention writes a day of event time in 1 h blocks with a 4 h
// retention, compacts, and checks that old blocks are gone and recent data
// is intact. Retention is measured from the newest block, so no clock is
// involved.
func TestRetention(t *testing.T) {
	const retention = 4 * time.Hour
	s := open(t, t.TempDir(), Options{Retention: retention, BlockDuration: time.Hour})
	const n = 24 * 60
	samples := storetest.Samples("m", "x", base, time.Minute, n, func(i int) float64 { return float64(i) })
	for i := 0; i < n; i += 60 {
		mustAppend(t, s, samples[i:i+60])
	}
	if err := s.db.Compact(context.Background()); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	if len(s.db.Blocks()) == 0 {
		t.Fatal("no blocks after Compact")
	}
	got := storetest.SelectAll(t, s, store.SeriesKey{Machine: "m", Metric: "x"}, math.MinInt64, math.MaxInt64)
	end := samples[n-1].Time
	if len(got) == 0 || got[0].Time <= base {
		t.Fatalf("oldest sample after retention: %v, want old blocks deleted", got[:min(1, len(got))])
	}
	// Blocks go whole: at most a block more than the retention plus the
	// head (up to 1.5 blocks) remain.
	if oldest := got[0].Time; oldest < end-retention.Milliseconds()-3*hour {
		t.Errorf("oldest sample %d h before the newest, want at most %v + 3h", (end-oldest)/hour, retention)
	}
	keep := storetest.Points(samples[n-int(retention/time.Minute):])
	if diff := cmp.Diff(got[len(got)-len(keep):], keep); diff != "" {
		t.Errorf("recent samples after retention (-got +want):\n%s", diff)
	}
	t.Logf("kept %d h of %d h in %d blocks", (end-got[0].Time)/hour, n/60, len(s.db.Blocks()))
}

// crashBatches are the batches the crash helper appends: in-order batches
// over several series, then late (out-of-order) and duplicate samples.
func crashBatches() [][]telemetry.Sample {
	var out [][]telemetry.Sample
	for b := range 50 {
		var batch []telemetry.Sample
		for _, m := range []string{"m1", "m2", "m3"} {
			for _, k := range []string{"temp", "rpm"} {
				batch = append(batch, storetest.Samples(m, k, base+int64(b*20+1)*sec, time.Second, 20,
					func(i int) float64 { return float64(b*20 + i) })...)
			}
		}
		out = append(out, batch)
	}
	// Late samples between the in-order ones, in the out-of-order window.
	out = append(out, storetest.Samples("m1", "temp", base+500, 2*time.Second, 300, func(i int) float64 { return -float64(i) }))
	return out
}

// TestCrashHelper is the child process of TestCrash: it appends
// crashBatches and kills itself with SIGKILL, without closing the store.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv("TWINLINE_CRASH_DIR")
	if dir == "" {
		t.Skip("helper process of TestCrash")
	}
	s, err := Open(dir, Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range crashBatches() {
		if err := s.Append(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {} // wait for the signal
}

// TestCrash checks that every sample whose Append returned survives kill -9
// of the process.
func TestCrash(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TWINLINE_CRASH_DIR="+dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper did not die of SIGKILL: %v\n%s", err, out)
	}

	s := open(t, dir, Options{})
	want := make(map[store.SeriesKey][]store.Point)
	for _, b := range crashBatches() {
		for _, smp := range b {
			k := store.SeriesKey{Machine: smp.Machine, Metric: smp.Metric}
			want[k] = append(want[k], store.Point{Time: smp.Time, Value: smp.Value})
		}
	}
	for k, pts := range want {
		got := storetest.SelectAll(t, s, k, math.MinInt64, math.MaxInt64)
		m := storetest.NewMemory()
		for _, p := range pts {
			mustAppend(t, m, []telemetry.Sample{{Machine: k.Machine, Metric: k.Metric, Time: p.Time, Value: p.Value}})
		}
		if diff := cmp.Diff(got, storetest.SelectAll(t, m, k, math.MinInt64, math.MaxInt64)); diff != "" {
			t.Errorf("%v after kill -9 (-got +want):\n%s", k, diff)
		}
	}
}

// TestIdleSeriesForgotten: a series without samples for SeriesIdle leaves
// the cache at the next sweep (Appends, clock injected); its next samples
// are checked against the stored data: a duplicate stays a duplicate, a
// conflict keeps the stored value, and its newest time is learned again.
func TestIdleSeriesForgotten(t *testing.T) {
	clock := time.UnixMilli(base)
	s := open(t, t.TempDir(), Options{SeriesIdle: time.Hour, Now: func() time.Time { return clock }})
	a := func(t int64, v float64) telemetry.Sample {
		return telemetry.Sample{Machine: "m", Metric: "a", Time: t, Value: v}
	}
	b := func(t int64, v float64) telemetry.Sample {
		return telemetry.Sample{Machine: "m", Metric: "b", Time: t, Value: v}
	}
	mustAppend(t, s, []telemetry.Sample{a(base, 1), b(base, 1), b(base+sec, 2)})

	steps := []struct {
		after  time.Duration
		cached int
	}{
		{40 * time.Minute, 2},  // swept at 40 min: nothing idle for an hour
		{60 * time.Minute, 1},  // swept at 100 min: b idle since 0
		{120 * time.Minute, 1}, // swept at 220 min: a is seen by the Append that sweeps
	}
	at := base
	for _, st := range steps {
		clock = clock.Add(st.after)
		at += sec
		mustAppend(t, s, []telemetry.Sample{a(at+sec, 1)})
		if got := s.CachedSeries(); got != st.cached {
			t.Errorf("after %v: %d series cached, want %d", clock.Sub(time.UnixMilli(base)), got, st.cached)
		}
	}

	before := s.Stats()
	fresh := make([]bool, 3)
	// b's samples: a duplicate, a conflict, a new one.
	if err := s.AppendFresh(context.Background(), []telemetry.Sample{b(base, 1), b(base+sec, 9), b(base+2*sec, 3)}, fresh); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fresh, []bool{false, false, true}); diff != "" {
		t.Errorf("fresh (-got +want):\n%s", diff)
	}
	after := s.Stats()
	if after.Duplicates-before.Duplicates != 1 || after.Conflicts-before.Conflicts != 1 {
		t.Errorf("duplicates, conflicts = %d, %d; want 1, 1", after.Duplicates-before.Duplicates, after.Conflicts-before.Conflicts)
	}
	var got []store.Point
	if err := s.Select(context.Background(), store.SeriesKey{Machine: "m", Metric: "b"}, base, base+hour, func(p store.Point) bool {
		got = append(got, p)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, []store.Point{{Time: base, Value: 1}, {Time: base + sec, Value: 2}, {Time: base + 2*sec, Value: 3}}); diff != "" {
		t.Errorf("b (-got +want):\n%s", diff)
	}
	s.mu.RLock()
	newest := s.series[store.SeriesKey{Machine: "m", Metric: "b"}].maxT.Load()
	s.mu.RUnlock()
	if newest != base+2*sec {
		t.Errorf("b's newest time = %d, want %d (learned again)", newest, base+2*sec)
	}
}
