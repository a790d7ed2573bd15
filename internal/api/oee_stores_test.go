package api

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/oee"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// oeeStateStore is what the property test needs of a store: samples and
// state series.
type oeeStateStore interface {
	store.Store
	store.StateStore
}

// openOEEEmbedded opens the embedded store on a directory of t's, with no
// bound on sample times.
func openOEEEmbedded(t *testing.T) oeeStateStore {
	t.Helper()
	es, err := embedded.Open(filepath.Join(t.TempDir(), "tsdb"), embedded.Options{MaxFuture: -1}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { es.Close() })
	return es
}

// oeePGURL is the PostgreSQL of the tests: TWINLINE_TEST_POSTGRES_URL,
// else the development server.
func oeePGURL() string {
	if u := os.Getenv("TWINLINE_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// openOEEPostgres opens the PostgreSQL store in a schema of its own,
// dropped at the end of t. It fails t under CI=true when PostgreSQL is
// unreachable, and skips it otherwise.
func openOEEPostgres(t *testing.T) oeeStateStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	schema := openOEEPostgresSchema(t)
	ps, err := postgres.Open(ctx, oeePGURL(), postgres.Options{Schema: schema, Retention: -1, MaxFuture: -1, MaxConns: 4},
		slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatalf("opening the PostgreSQL store: %v", err)
	}
	t.Cleanup(func() { _ = ps.Close() })
	return ps
}

// openOEEPostgresSchema names a schema of t's own, dropped at the end of
// t (the store creates it). It fails t under CI=true when PostgreSQL is
// unreachable, and skips it otherwise.
func openOEEPostgresSchema(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, oeePGURL())
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s unreachable (CI=true): %v", oeePGURL(), err)
		}
		t.Skipf("PostgreSQL at %s unreachable, skipping (set CI=true to fail instead): %v", oeePGURL(), err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "tl_test_oee_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
		}
		admin.Close(ctx)
	})
	return schema
}

// oeeFleetMachine is one random machine of the property test and what was
// written for it.
type oeeFleetMachine struct {
	id, line string
	spec     twin.OEESpec
	// batches are the state changes in the order they were appended (of
	// its state metric and of another name, which must not count).
	batches [][]store.StateChange
	// counters are the samples by metric (distinct times).
	counters map[string][]store.Point
}

var oeePropStates = []string{"RUNNING", "FAST", "IDLE", "DOWN", "JAM", "SETUP", "WAIT", "STARVED", "PLANNED", "BREAK"}

// TestOEEStoresMatchOracle writes a random fleet's state changes and part
// counters (resets, duplicates, out-of-order batches) into each store,
// asks GET /api/v1/oee for a random range, step and present, and checks
// every machine bucket against an oracle that recomputes it from the
// generated data by the rules of docs/oee.md, and every line and site
// bucket against the time-weighted combination of the oracle's machine
// sums.
func TestOEEStoresMatchOracle(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(*testing.T) oeeStateStore
	}{
		{"embedded", openOEEEmbedded},
		{"postgres", openOEEPostgres},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.open(t)
			var now atomic.Int64
			a, reg := newOEEPropAPI(t, st, func() time.Time { return time.UnixMilli(now.Load()) })
			var iter atomic.Int64
			rapid.Check(t, func(rt *rapid.T) {
				// Each example its own site and machines in the shared store.
				site := fmt.Sprintf("s%d", iter.Add(1))
				from := t0 + within(rt, "from", -hourMs, hourMs)
				to := from + rapid.SampledFrom([]int64{1, 10 * minMs, hourMs, 3 * hourMs}).Draw(rt, "span")
				if rapid.Bool().Draw(rt, "odd_span") {
					to = from + within(rt, "span", 1, 3*hourMs)
				}
				steps := []struct {
					param string
					ms    int64
				}{{"", 0}, {"1m", minMs}, {"7m", 7 * minMs}, {"15m", 15 * minMs}, {"1h", hourMs}, {"1d", 24 * hourMs}}
				step := steps[rapid.IntRange(0, len(steps)-1).Draw(rt, "step")]
				// Mostly a past range; else the present within it (or around).
				now.Store(to + within(rt, "now_after", 0, hourMs))
				if rapid.IntRange(0, 2).Draw(rt, "now_in_range") == 0 {
					now.Store(within(rt, "now", from-10*minMs, to+10*minMs))
				}
				// Times on the edges that matter, drawn now and then.
				special := []int64{from, to, to - 1, from - counterLookback.Milliseconds(), now.Load()}
				if step.ms > 0 {
					special = append(special, (from/step.ms+1)*step.ms)
				}
				timeIn := func(label string, lo, hi int64) int64 {
					if rapid.IntRange(0, 4).Draw(rt, label+"_special") == 0 {
						return rapid.SampledFrom(special).Draw(rt, label+"_edge")
					}
					return within(rt, label, lo, hi)
				}

				nLines := rapid.IntRange(1, 2).Draw(rt, "lines")
				fleet := make([]oeeFleetMachine, rapid.IntRange(2, 4).Draw(rt, "machines"))
				for i := range fleet {
					m := &fleet[i]
					m.id = fmt.Sprintf("%s-m%d", site, i)
					m.line = string(rune('A' + rapid.IntRange(0, nLines-1).Draw(rt, "line")))
					m.spec = drawOEESpec(rt)
					var changes []store.StateChange
					for range rapid.IntRange(0, 40).Draw(rt, "changes") {
						name := m.spec.StateMetric
						if rapid.IntRange(0, 5).Draw(rt, "other_name") == 0 {
							name = "other"
						}
						c := store.StateChange{Machine: m.id, Name: name,
							Time:  timeIn("change_t", from-20*minMs, to+5*minMs),
							Value: rapid.SampledFrom(oeePropStates).Draw(rt, "value")}
						if len(changes) > 0 && rapid.IntRange(0, 5).Draw(rt, "replay") == 0 {
							// Another value at the time of an earlier change: the
							// first written wins.
							prev := rapid.SampledFrom(changes).Draw(rt, "replayed")
							c.Name, c.Time = prev.Name, prev.Time
						}
						changes = append(changes, c)
					}
					m.batches = splitBatches(rt, changes)
					m.counters = map[string][]store.Point{}
					for _, metric := range []string{"parts_total", "parts_good"} {
						m.counters[metric] = drawCounter(rt, metric, timeIn, from, to)
					}
				}

				// Write the fleet: registry entries, state batches, samples.
				ctx := context.Background()
				for _, m := range fleet {
					spec := m.spec
					if _, _, err := reg.Put(m.id, twin.Info{ID: m.id, Site: site, Line: m.line, OEE: &spec}); err != nil {
						rt.Fatalf("registering %s: %v", m.id, err)
					}
					for _, b := range m.batches {
						if err := st.AppendStates(ctx, b); err != nil {
							rt.Fatalf("appending states: %v", err)
						}
					}
					var samples []telemetry.Sample
					for _, metric := range []string{"parts_total", "parts_good"} {
						for _, p := range m.counters[metric] {
							samples = append(samples, telemetry.Sample{Machine: m.id, Metric: metric, Time: p.Time, Value: p.Value})
						}
					}
					samples = rapid.Permutation(samples).Draw(rt, "sample_order")
					for _, b := range splitBatches(rt, samples) {
						if err := st.Append(ctx, b); err != nil {
							rt.Fatalf("appending samples: %v", err)
						}
					}
				}

				query := fmt.Sprintf("?site=%s&from=%d&to=%d", site, from, to)
				if step.param != "" {
					query += "&step=" + step.param
				}
				rep := oeePropGet(rt, a, query)
				checkOEEAgainstOracle(rt, rep, fleet, site, from, to, step.ms, now.Load())
			})
		})
	}
}

// newOEEPropAPI is an API over st, auth on ("all" reads every site),
// with an empty registry and the clock now.
func newOEEPropAPI(t *testing.T, st store.Store, now func() time.Time) (*API, *twin.Registry) {
	t.Helper()
	reg, live := openTwins(t, time.Minute, now)
	return New(Options{MaxInflightIngest: 1}, Deps{
		Registry: reg, Live: live, Store: st, Clock: now, Logger: slog.New(slog.DiscardHandler),
		Ready: func() error { return nil },
		Auth: &Auth{Open: func() bool { return false }, Verify: func(secret string) (auth.Identity, error) {
			if secret == "all" {
				return auth.Identity{Name: "all", Kind: auth.KindToken, Scopes: auth.ScopeRead, TokenID: "a"}, nil
			}
			return auth.Identity{}, auth.ErrInvalidToken
		}},
	}), reg
}

func oeePropGet(rt *rapid.T, a *API, query string) oeeReport {
	r := httptest.NewRequest("GET", "/api/v1/oee"+query, nil)
	r.Header.Set("Authorization", "Bearer all")
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		rt.Fatalf("GET /api/v1/oee%s: %d %s", query, w.Code, w.Body)
	}
	var rep oeeReport
	if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
		rt.Fatalf("decoding %s: %v", w.Body, err)
	}
	return rep
}

// within draws a time in [lo, hi], spread over it (rapid's Int64Range
// favours the small offsets).
func within(rt *rapid.T, label string, lo, hi int64) int64 {
	t := lo + (hi-lo)*int64(rapid.IntRange(0, 1000).Draw(rt, label))/1000
	return min(t+int64(rapid.IntRange(0, 999).Draw(rt, label+"_ms")), hi)
}

// drawOEESpec draws a valid spec: state metric, running and planned stop
// states, counters and ideal cycle, each possibly absent.
func drawOEESpec(rt *rapid.T) twin.OEESpec {
	spec := twin.OEESpec{StateMetric: rapid.SampledFrom([]string{"state", "mode"}).Draw(rt, "state_metric"),
		RunningStates: []string{"RUNNING"}}
	if rapid.Bool().Draw(rt, "fast_runs") {
		spec.RunningStates = append(spec.RunningStates, "FAST")
	}
	if rapid.Bool().Draw(rt, "planned_stops") {
		spec.PlannedStopStates = []string{"PLANNED", "BREAK"}
	}
	switch rapid.IntRange(0, 2).Draw(rt, "counters") {
	case 2:
		spec.GoodCount = "parts_good"
		fallthrough
	case 1:
		spec.TotalCount = "parts_total"
	}
	spec.IdealCycleSeconds = rapid.SampledFrom([]float64{0, 0.5, 1.5, 6}).Draw(rt, "ideal")
	return spec
}

// drawCounter draws a part counter's samples at distinct times around
// [from, to), counting up with now and then a reset.
func drawCounter(rt *rapid.T, metric string, timeIn func(string, int64, int64) int64, from, to int64) []store.Point {
	seen := map[int64]bool{}
	var times []int64
	for range rapid.IntRange(0, 15).Draw(rt, metric+"_samples") {
		if tm := timeIn(metric+"_t", from-40*minMs, to+10*minMs); !seen[tm] {
			seen[tm] = true
			times = append(times, tm)
		}
	}
	slices.Sort(times)
	pts := make([]store.Point, len(times))
	v := float64(rapid.IntRange(0, 100).Draw(rt, metric+"_start"))
	for i, tm := range times {
		if i > 0 {
			if rapid.IntRange(0, 7).Draw(rt, metric+"_reset") == 0 {
				v = float64(rapid.IntRange(0, 5).Draw(rt, metric+"_restart"))
			} else {
				v += float64(rapid.IntRange(0, 30).Draw(rt, metric+"_inc"))
			}
		}
		pts[i] = store.Point{Time: tm, Value: v}
	}
	return pts
}

// splitBatches cuts xs into 1 to 3 consecutive batches.
func splitBatches[T any](rt *rapid.T, xs []T) [][]T {
	if len(xs) == 0 {
		return nil
	}
	var out [][]T
	for n := rapid.IntRange(1, 3).Draw(rt, "batches"); n > 1 && len(xs) > 1; n-- {
		i := rapid.IntRange(1, len(xs)-1).Draw(rt, "cut")
		out, xs = append(out, xs[:i]), xs[i:]
	}
	return append(out, xs)
}

// oracleSums are the additive parts of a bucket, recomputed by the
// oracle: a machine's, or the sum of machines' for a line or site.
type oracleSums struct {
	from, to      int64
	planned, run  int64
	total, good   float64
	perfRun       int64   // run time of machines with performance inputs
	ideal         float64 // their ideal ms: Σ ideal cycle × 1000 × total
	qTotal, qGood float64 // parts of machines that count good ones
	down          map[string]int64
}

func (s *oracleSums) add(o oracleSums) {
	s.planned += o.planned
	s.run += o.run
	s.total += o.total
	s.good += o.good
	s.perfRun += o.perfRun
	s.ideal += o.ideal
	s.qTotal += o.qTotal
	s.qGood += o.qGood
	for k, v := range o.down {
		s.down[k] += v
	}
}

// want is the bucket the API must answer for s.
func (s oracleSums) want() oee.Bucket {
	ratio := func(num, den float64) *float64 {
		if den <= 0 {
			return nil
		}
		r := num / den
		return &r
	}
	b := oee.Bucket{From: s.from, To: s.to, PlannedMs: s.planned, RunMs: s.run, TotalCount: s.total, GoodCount: s.good,
		Availability: ratio(float64(s.run), float64(s.planned)),
		Performance:  ratio(s.ideal, float64(s.perfRun)),
		Quality:      ratio(s.qGood, s.qTotal)}
	if b.Availability != nil && b.Performance != nil && b.Quality != nil {
		o := *b.Availability * *b.Performance * *b.Quality
		b.OEE = &o
	}
	for state, ms := range s.down {
		b.Downtime = append(b.Downtime, oee.Downtime{State: state, Ms: ms})
	}
	slices.SortFunc(b.Downtime, func(x, y oee.Downtime) int { return cmp.Or(cmp.Compare(y.Ms, x.Ms), cmp.Compare(x.State, y.State)) })
	b.Downtime = b.Downtime[:min(len(b.Downtime), 5)]
	return b
}

// oracleBuckets are the bucket bounds of [from, to) by step (0: one
// bucket): multiples of step since the epoch, clipped to the range.
func oracleBuckets(from, to, step int64) [][2]int64 {
	if step == 0 {
		return [][2]int64{{from, to}}
	}
	var out [][2]int64
	for lo := from - from%step; lo < to; lo += step {
		out = append(out, [2]int64{max(lo, from), min(lo+step, to)})
	}
	return out
}

// oracleMachine recomputes one machine's buckets from what was written.
func oracleMachine(m oeeFleetMachine, bounds [][2]int64, from, to, now int64) []oracleSums {
	// The stored series: first write wins at a time.
	first := map[int64]string{}
	for _, b := range m.batches {
		for _, c := range b {
			if _, dup := first[c.Time]; c.Name == m.spec.StateMetric && !dup {
				first[c.Time] = c.Value
			}
		}
	}
	times := make([]int64, 0, len(first))
	for tm := range first {
		times = append(times, tm)
	}
	slices.Sort(times)
	// stateAt is the state in force at tm: the latest change at or before it.
	stateAt := func(tm int64) (string, bool) {
		i, found := slices.BinarySearch(times, tm)
		if found {
			return first[tm], true
		}
		if i == 0 {
			return "", false
		}
		return first[times[i-1]], true
	}
	// counted is a counter's increase per bucket: samples from 15 minutes
	// before from up to to; each one after the first counts in its bucket
	// the increase from the previous one, or its value after a drop.
	counted := func(metric string) []float64 {
		inc := make([]float64, len(bounds))
		if metric == "" {
			return inc
		}
		var prev *store.Point
		for _, p := range m.counters[metric] {
			if p.Time < from-counterLookback.Milliseconds() || p.Time >= to {
				continue
			}
			if prev != nil && p.Time >= from {
				d := p.Value - prev.Value
				if d < 0 {
					d = p.Value
				}
				for i, b := range bounds {
					if b[0] <= p.Time && p.Time < b[1] {
						inc[i] += d
					}
				}
			}
			prev = &p
		}
		return inc
	}
	total, good := counted(m.spec.TotalCount), counted(m.spec.GoodCount)

	out := make([]oracleSums, len(bounds))
	for i, b := range bounds {
		s := oracleSums{from: b[0], to: b[1], down: map[string]int64{}}
		// The instants where the state may change within the bucket, up to
		// the present.
		end := min(b[1], now)
		points := []int64{b[0]}
		for _, tm := range times {
			if b[0] < tm && tm < end {
				points = append(points, tm)
			}
		}
		points = append(points, end)
		for j := 0; j+1 < len(points); j++ {
			d := points[j+1] - points[j]
			v, known := stateAt(points[j])
			switch {
			case d <= 0 || !known: // unknown: neither planned nor run
			case slices.Contains(m.spec.RunningStates, v):
				s.planned += d
				s.run += d
			case slices.Contains(m.spec.PlannedStopStates, v):
			default:
				s.planned += d
				s.down[v] += d
			}
		}
		s.total, s.good = total[i], good[i]
		if m.spec.TotalCount != "" && m.spec.IdealCycleSeconds > 0 {
			s.perfRun, s.ideal = s.run, m.spec.IdealCycleSeconds*1000*s.total
		}
		if m.spec.GoodCount != "" {
			s.qTotal, s.qGood = s.total, s.good
		}
		out[i] = s
	}
	return out
}

// checkOEEAgainstOracle compares the answer with the oracle's machines,
// and lines and the site with the sums of the oracle's machines.
func checkOEEAgainstOracle(rt *rapid.T, rep oeeReport, fleet []oeeFleetMachine, site string, from, to, step, now int64) {
	opts := []gocmp.Option{cmpopts.IgnoreUnexported(oee.Bucket{}), cmpopts.EquateApprox(1e-9, 1e-12), cmpopts.EquateEmpty()}
	if rep.From != from || rep.To != to {
		rt.Fatalf("range %d..%d; want %d..%d", rep.From, rep.To, from, to)
	}
	bounds := oracleBuckets(from, to, step)
	series := func(sums []oracleSums) (buckets []oee.Bucket, total oee.Bucket) {
		all := oracleSums{from: from, to: to, down: map[string]int64{}}
		for _, s := range sums {
			buckets = append(buckets, s.want())
			all.add(s)
		}
		return buckets, all.want()
	}
	combine := func(parts [][]oracleSums) []oracleSums {
		out := make([]oracleSums, len(bounds))
		for i, b := range bounds {
			out[i] = oracleSums{from: b[0], to: b[1], down: map[string]int64{}}
			for _, p := range parts {
				out[i].add(p[i])
			}
		}
		return out
	}

	byID := slices.Clone(fleet)
	slices.SortFunc(byID, func(x, y oeeFleetMachine) int { return cmp.Compare(x.id, y.id) })
	if len(rep.Machines) != len(byID) {
		rt.Fatalf("%d machines in the answer; want %d", len(rep.Machines), len(byID))
	}
	lines := map[string][][]oracleSums{}
	var all [][]oracleSums
	for i, m := range byID {
		got := rep.Machines[i]
		if got.Machine != m.id || got.Site != site || got.Line != m.line {
			rt.Fatalf("machine %d is %s/%s/%s; want %s/%s/%s", i, got.Site, got.Line, got.Machine, site, m.line, m.id)
		}
		sums := oracleMachine(m, bounds, from, to, now)
		lines[m.line] = append(lines[m.line], sums)
		all = append(all, sums)
		buckets, total := series(sums)
		if diff := gocmp.Diff(got.Buckets, buckets, opts...); diff != "" {
			rt.Fatalf("machine %s (spec %+v) buckets (-got +want):\n%s", m.id, m.spec, diff)
		}
		if diff := gocmp.Diff(got.Total, total, opts...); diff != "" {
			rt.Fatalf("machine %s total (-got +want):\n%s", m.id, diff)
		}
	}
	names := make([]string, 0, len(lines))
	for l := range lines {
		names = append(names, l)
	}
	slices.Sort(names)
	if len(rep.Lines) != len(names) {
		rt.Fatalf("%d lines in the answer; want %d", len(rep.Lines), len(names))
	}
	for i, l := range names {
		got := rep.Lines[i]
		if got.Site != site || got.Line != l {
			rt.Fatalf("line %d is %s/%s; want %s/%s", i, got.Site, got.Line, site, l)
		}
		buckets, total := series(combine(lines[l]))
		if diff := gocmp.Diff(got.Buckets, buckets, opts...); diff != "" {
			rt.Fatalf("line %s buckets (-got +want):\n%s", l, diff)
		}
		if diff := gocmp.Diff(got.Total, total, opts...); diff != "" {
			rt.Fatalf("line %s total (-got +want):\n%s", l, diff)
		}
	}
	if len(rep.Sites) != 1 || rep.Sites[0].Site != site {
		rt.Fatalf("sites %+v; want %s alone", rep.Sites, site)
	}
	buckets, total := series(combine(all))
	if diff := gocmp.Diff(rep.Sites[0].Buckets, buckets, opts...); diff != "" {
		rt.Fatalf("site buckets (-got +want):\n%s", diff)
	}
	if diff := gocmp.Diff(rep.Sites[0].Total, total, opts...); diff != "" {
		rt.Fatalf("site total (-got +want):\n%s", diff)
	}
}
