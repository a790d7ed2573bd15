package main

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"time"
)

// sample is one row of the soak record, taken every interval.
type sample struct {
	Elapsed time.Duration // since the load started
	// Server side, from /proc and /metrics; -1 when it could not be read
	// (the server was down at that moment).
	RSS        int64
	RSSAnon    int64 // anonymous part of RSS (heap, stacks)
	HeapInuse  int64
	HeapLive   int64 // heap marked live by the last GC
	Goroutines int64
	OpenFDs    int64
	// Sender: cumulative events sent (first attempts) and acknowledged, and
	// the acknowledged rate over the interval.
	Sent, Acked  int64
	AckedPerS    float64
	Lag          [numGroups]lagStat // per client group, over the interval
	Received     int64              // stream samples received, cumulative
	Reconnects   int64              // stream reconnects, cumulative
	Restarts     int64              // server restarts, cumulative
	Unanswered   int64              // requests without a 2xx yet (retrying)
	Retries      int64              // cumulative retried requests
	SenderBehind int64              // events due but not yet handed to a worker
}

// lagStat is the sensor → client latency of one group over one interval.
type lagStat struct {
	N        int64
	P50, P99 time.Duration
}

// client groups of the stream side.
const (
	groupMachine = iota
	groupFleet
	groupConflate
	numGroups
)

var groupNames = [numGroups]string{"machine", "fleet", "conflate"}

var csvHeader = []string{
	"elapsed_s", "rss_bytes", "rss_anon_bytes", "heap_inuse_bytes", "heap_live_bytes", "goroutines", "open_fds",
	"events_sent", "events_acked", "acked_per_s",
	"lag_machine_n", "lag_machine_p50_ms", "lag_machine_p99_ms",
	"lag_fleet_n", "lag_fleet_p50_ms", "lag_fleet_p99_ms",
	"lag_conflate_n", "lag_conflate_p50_ms", "lag_conflate_p99_ms",
	"stream_samples", "stream_reconnects", "server_restarts",
	"requests_unanswered", "requests_retried", "sender_behind",
}

// csvWriter writes the record as CSV, one row per sample, flushed at once
// so a run cut short keeps what it measured.
type csvWriter struct{ w *csv.Writer }

func newCSVWriter(w io.Writer) (*csvWriter, error) {
	c := &csvWriter{w: csv.NewWriter(w)}
	if err := c.w.Write(csvHeader); err != nil {
		return nil, fmt.Errorf("writing csv header: %w", err)
	}
	c.w.Flush()
	return c, c.w.Error()
}

func (c *csvWriter) Write(s sample) error {
	i := func(v int64) string {
		if v < 0 {
			return ""
		}
		return strconv.FormatInt(v, 10)
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	msf := func(d time.Duration) string { return f(float64(d) / float64(time.Millisecond)) }
	row := []string{
		f(s.Elapsed.Seconds()), i(s.RSS), i(s.RSSAnon), i(s.HeapInuse), i(s.HeapLive), i(s.Goroutines), i(s.OpenFDs),
		i(s.Sent), i(s.Acked), f(s.AckedPerS),
	}
	for _, l := range s.Lag {
		if l.N == 0 {
			row = append(row, "0", "", "")
			continue
		}
		row = append(row, i(l.N), msf(l.P50), msf(l.P99))
	}
	row = append(row, i(s.Received), i(s.Reconnects), i(s.Restarts), i(s.Unanswered), i(s.Retries), i(s.SenderBehind))
	if err := c.w.Write(row); err != nil {
		return fmt.Errorf("writing csv row: %w", err)
	}
	c.w.Flush()
	return c.w.Error()
}

// warmupFor is the part of a run excluded from the drift and flatness
// figures: 5 minutes, or a sixth of the run when that is shorter.
func warmupFor(d time.Duration) time.Duration { return min(5*time.Minute, d/6) }

// afterWarmup returns the samples taken at or after warm-up whose value
// (by get) was read (≥ 0).
func afterWarmup(ss []sample, warmup time.Duration, get func(sample) int64) (t []float64, v []float64) {
	for _, s := range ss {
		if s.Elapsed < warmup {
			continue
		}
		if x := get(s); x >= 0 {
			t = append(t, s.Elapsed.Seconds())
			v = append(v, float64(x))
		}
	}
	return t, v
}

// drift is how much a series grows over the run after warm-up, in percent:
// the least-squares line through the samples, its rise from the first to
// the last sample over its value at the first. A line rather than the end
// points, so one garbage collection more or less at either end does not
// decide. ok is false with fewer than two samples.
func drift(t, v []float64) (pct float64, ok bool) {
	n := float64(len(t))
	if len(t) < 2 {
		return 0, false
	}
	var st, sv, stt, stv float64
	for i := range t {
		st += t[i]
		sv += v[i]
		stt += t[i] * t[i]
		stv += t[i] * v[i]
	}
	den := n*stt - st*st
	if den == 0 {
		return 0, false
	}
	slope := (n*stv - st*sv) / den
	icept := (sv - slope*st) / n
	first := icept + slope*t[0]
	if first <= 0 {
		return 0, false
	}
	return slope * (t[len(t)-1] - t[0]) / first * 100, true
}

// spread is the min and max of v.
func spread(v []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// flatness is the verdict on a series that should stay flat after warm-up:
// the median of its last fifth within max(abs, rel × first) of the median
// of its first fifth. Medians, not min and max: bursts (writer goroutines
// of busy stream clients, a compaction) come and go; a leak moves the
// baseline.
type flatness struct {
	Name        string
	Min, Max    float64
	First, Last float64 // medians of the first and last fifth
	Abs         float64 // absolute tolerance
	Rel         float64 // relative tolerance (0.1 = 10 %)
	N           int     // samples considered
}

func (f flatness) tolerance() float64 { return max(f.Abs, f.Rel*f.First) }

func (f flatness) ok() bool { return f.N > 0 && math.Abs(f.Last-f.First) <= f.tolerance() }

func (f flatness) String() string {
	if f.N == 0 {
		return fmt.Sprintf("%s: no samples after warm-up", f.Name)
	}
	return fmt.Sprintf("%s baseline %.0f → %.0f after warm-up (medians of the first and last fifth; flat: within max(%.0f, %.0f %%) = %.0f); min %.0f max %.0f",
		f.Name, f.First, f.Last, f.Abs, f.Rel*100, f.tolerance(), f.Min, f.Max)
}

func flat(name string, v []float64, abs, rel float64) flatness {
	f := flatness{Name: name, Abs: abs, Rel: rel, N: len(v)}
	if len(v) > 0 {
		f.Min, f.Max = spread(v)
		k := max(1, len(v)/5)
		f.First, f.Last = median(v[:k]), median(v[len(v)-k:])
	}
	return f
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
