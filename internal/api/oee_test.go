package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/oee"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// fakeSeriesStore is a store of in-memory counter samples, without
// state series.
type fakeSeriesStore struct {
	points map[store.SeriesKey][]store.Point
	err    error
}

func (f *fakeSeriesStore) Append(context.Context, []telemetry.Sample) error { return nil }
func (f *fakeSeriesStore) Select(_ context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) error {
	if f.err != nil {
		return f.err
	}
	for _, p := range f.points[key] {
		if p.Time >= from && p.Time <= to && !fn(p) {
			break
		}
	}
	return nil
}
func (f *fakeSeriesStore) Series(context.Context, int64, int64) ([]store.SeriesKey, error) {
	return nil, nil
}
func (f *fakeSeriesStore) Close() error { return nil }

// fakeStateStore adds state series: States answers as the contract says,
// and records the ranges asked.
type fakeStateStore struct {
	fakeSeriesStore
	changes map[string][]store.StateChange // by machine/name
	mu      sync.Mutex
	asked   []string
}

func (f *fakeStateStore) AppendStates(context.Context, []store.StateChange) error { return nil }
func (f *fakeStateStore) States(_ context.Context, machine, name string, from, to int64) ([]store.StateChange, error) {
	f.mu.Lock()
	f.asked = append(f.asked, machine+"/"+name)
	f.mu.Unlock()
	var out []store.StateChange
	for _, c := range f.changes[machine+"/"+name] {
		switch {
		case c.Time <= from:
			out = append(out[:0], c) // the one in force at from
		case c.Time <= to:
			out = append(out, c)
		}
	}
	return out, nil
}

const (
	hourMs = int64(time.Hour / time.Millisecond)
	minMs  = int64(time.Minute / time.Millisecond)
	t0     = int64(1_765_000_800_000) // a whole hour
)

var testSpec = twin.OEESpec{StateMetric: "state", RunningStates: []string{"RUNNING"}, PlannedStopStates: []string{"PLANNED"},
	TotalCount: "parts_total", GoodCount: "parts_good", IdealCycleSeconds: 6}

func sc(m string, t int64, v string) store.StateChange {
	return store.StateChange{Machine: m, Name: "state", Time: t, Value: v}
}

// newOEEAPI is an API with auth on, machines p1, p2 (lyon, line A), p3
// (paris, line B) with an OEE spec and m0 (lyon) without, over st, at
// t0 + 3h. Secrets: "all" (read, every site), "lyon" (read, lyon only).
func newOEEAPI(t *testing.T, st store.Store) *API {
	t.Helper()
	now := time.UnixMilli(t0 + 3*hourMs)
	clock := func() time.Time { return now }
	reg, live := openTwins(t, time.Minute, clock)
	for _, in := range []twin.Info{
		{ID: "p1", Site: "lyon", Line: "A", OEE: &testSpec},
		{ID: "p2", Site: "lyon", Line: "A", OEE: &testSpec},
		{ID: "p3", Site: "paris", Line: "B", OEE: &testSpec},
		{ID: "m0", Site: "lyon", Line: "A"},
	} {
		if _, _, err := reg.Put(in.ID, in); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]auth.Identity{
		"all":  {Name: "all", Kind: auth.KindToken, Scopes: auth.ScopeRead, TokenID: "a"},
		"lyon": {Name: "lyon", Kind: auth.KindToken, Scopes: auth.ScopeRead, Sites: []string{"lyon"}, TokenID: "l"},
	}
	return New(Options{MaxInflightIngest: 1}, Deps{
		Registry: reg, Live: live, Store: st, Clock: clock, Logger: slog.New(slog.DiscardHandler),
		Ready: func() error { return nil },
		Auth: &Auth{Open: func() bool { return false }, Verify: func(secret string) (auth.Identity, error) {
			if id, ok := ids[secret]; ok {
				return id, nil
			}
			return auth.Identity{}, auth.ErrInvalidToken
		}},
	})
}

func newFakeStateStore() *fakeStateStore {
	return &fakeStateStore{
		fakeSeriesStore: fakeSeriesStore{points: map[store.SeriesKey][]store.Point{
			{Machine: "p1", Metric: "parts_total"}: {{Time: t0 - minMs, Value: 100}, {Time: t0 + 30*minMs, Value: 400}, {Time: t0 + 90*minMs, Value: 1000}},
			{Machine: "p1", Metric: "parts_good"}:  {{Time: t0 - minMs, Value: 100}, {Time: t0 + 30*minMs, Value: 390}, {Time: t0 + 90*minMs, Value: 980}},
			{Machine: "p2", Metric: "parts_total"}: {{Time: t0 - minMs, Value: 0}, {Time: t0 + 90*minMs, Value: 500}},
			{Machine: "p2", Metric: "parts_good"}:  {{Time: t0 - minMs, Value: 0}, {Time: t0 + 90*minMs, Value: 500}},
		}},
		changes: map[string][]store.StateChange{
			"p1/state": {sc("p1", t0-10*minMs, "RUNNING"), sc("p1", t0+30*minMs, "DOWN"), sc("p1", t0+40*minMs, "RUNNING")},
			"p2/state": {sc("p2", t0, "IDLE"), sc("p2", t0+60*minMs, "RUNNING")},
			"p3/state": {sc("p3", t0-hourMs, "RUNNING"), sc("p3", t0+2*hourMs+30*minMs, "PLANNED")},
		},
	}
}

func getOEE(t *testing.T, a *API, secret, query string) (*httptest.ResponseRecorder, oeeReport) {
	t.Helper()
	r := httptest.NewRequest("GET", "/api/v1/oee"+query, nil)
	r.Header.Set("Authorization", "Bearer "+secret)
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	var rep oeeReport
	if w.Code == http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
			t.Fatalf("decoding %s: %v", w.Body, err)
		}
	}
	return w, rep
}

// oeeReport is the answer as a client decodes it.
type oeeReport struct {
	From, To int64
	Step     string
	Machines []struct {
		Machine, Site, Line string
		Buckets             []oee.Bucket
		Total               oee.Bucket
	}
	Lines []struct {
		Site, Line string
		Buckets    []oee.Bucket
		Total      oee.Bucket
	}
	Sites []struct {
		Site    string
		Buckets []oee.Bucket
		Total   oee.Bucket
	}
}

func fp(v float64) *float64 { return &v }

func TestOEE(t *testing.T) {
	st := newFakeStateStore()
	a := newOEEAPI(t, st)
	w, rep := getOEE(t, a, "all", "?from=1765000800000&to=1765008000000&step=1h")
	if w.Code != http.StatusOK {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
	if rep.From != t0 || rep.To != t0+2*hourMs || rep.Step != "1h" {
		t.Errorf("range %d..%d step %q; want %d..%d 1h", rep.From, rep.To, rep.Step, t0, t0+2*hourMs)
	}
	var machines, lines, sites []string
	for _, m := range rep.Machines {
		machines = append(machines, m.Site+"/"+m.Line+"/"+m.Machine)
	}
	for _, l := range rep.Lines {
		lines = append(lines, l.Site+"/"+l.Line)
	}
	for _, s := range rep.Sites {
		sites = append(sites, s.Site)
	}
	if diff := cmp.Diff([][]string{machines, lines, sites},
		[][]string{{"lyon/A/p1", "lyon/A/p2", "paris/B/p3"}, {"lyon/A", "paris/B"}, {"lyon", "paris"}}); diff != "" {
		t.Fatalf("machines, lines, sites (-got +want):\n%s", diff)
	}
	opts := []cmp.Option{cmpopts.IgnoreUnexported(oee.Bucket{}), cmpopts.EquateApprox(1e-12, 0)}
	p1 := []oee.Bucket{
		{From: t0, To: t0 + hourMs, PlannedMs: 60 * minMs, RunMs: 50 * minMs, TotalCount: 300, GoodCount: 290,
			Availability: fp(50.0 / 60), Performance: fp(0.6), Quality: fp(290.0 / 300), OEE: fp(50.0 / 60 * 0.6 * 290 / 300),
			Downtime: []oee.Downtime{{State: "DOWN", Ms: 10 * minMs}}},
		{From: t0 + hourMs, To: t0 + 2*hourMs, PlannedMs: 60 * minMs, RunMs: 60 * minMs, TotalCount: 600, GoodCount: 590,
			Availability: fp(1), Performance: fp(1), Quality: fp(590.0 / 600), OEE: fp(590.0 / 600), Downtime: []oee.Downtime{}},
	}
	if diff := cmp.Diff(rep.Machines[0].Buckets, p1, opts...); diff != "" {
		t.Errorf("p1 (-got +want):\n%s", diff)
	}
	// Line A is time-weighted: p2 idled the first hour, made 500 parts the second.
	lineA := []oee.Bucket{
		{From: t0, To: t0 + hourMs, PlannedMs: 120 * minMs, RunMs: 50 * minMs, TotalCount: 300, GoodCount: 290,
			Availability: fp(50.0 / 120), Performance: fp(0.6), Quality: fp(290.0 / 300), OEE: fp(50.0 / 120 * 0.6 * 290 / 300),
			Downtime: []oee.Downtime{{State: "IDLE", Ms: 60 * minMs}, {State: "DOWN", Ms: 10 * minMs}}},
		{From: t0 + hourMs, To: t0 + 2*hourMs, PlannedMs: 120 * minMs, RunMs: 120 * minMs, TotalCount: 1100, GoodCount: 1090,
			Availability: fp(1), Performance: fp(6000.0 * 1100 / float64(120*minMs)), Quality: fp(1090.0 / 1100),
			OEE: fp(6000.0 * 1100 / float64(120*minMs) * 1090 / 1100), Downtime: []oee.Downtime{}},
	}
	if diff := cmp.Diff(rep.Lines[0].Buckets, lineA, opts...); diff != "" {
		t.Errorf("line A (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(rep.Sites[0].Total, rep.Lines[0].Total, opts...); diff != "" {
		t.Errorf("site lyon vs its only line (-got +want):\n%s", diff)
	}
	// p3 ran and counted no parts: performance 0, quality undefined.
	p3 := rep.Machines[2].Total
	if p3.Availability == nil || *p3.Availability != 1 || p3.Performance == nil || *p3.Performance != 0 || p3.Quality != nil || p3.OEE != nil {
		t.Errorf("p3 total: %+v; want availability 1, performance 0, quality and oee null", p3)
	}
	if strings.Contains(w.Body.String(), `"m0"`) {
		t.Errorf("m0 has no OEE spec but is in the answer: %s", w.Body)
	}
}

func TestOEEDefaultsAndFuture(t *testing.T) {
	st := newFakeStateStore()
	a := newOEEAPI(t, st)
	// The last 24 h in one bucket; the range to t0 + 4h ends after now
	// (t0 + 3h): the last hour is not counted.
	w, rep := getOEE(t, a, "all", "?machine=p1&to=1765015200000")
	if w.Code != http.StatusOK {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
	if len(rep.Machines) != 1 || len(rep.Machines[0].Buckets) != 1 || rep.Step != "1d" || rep.To-rep.From != 24*hourMs {
		t.Fatalf("got %s; want p1 alone, one bucket of 1d", w.Body)
	}
	// p1 is known from t0-10m, down 10 minutes, running until now.
	got := rep.Machines[0].Total
	if got.PlannedMs != 3*hourMs+10*minMs || got.RunMs != 3*hourMs {
		t.Errorf("planned %d run %d; want %d and %d (t0-10m until now, t0+3h)", got.PlannedMs, got.RunMs, 3*hourMs+10*minMs, 3*hourMs)
	}
	if diff := cmp.Diff(st.asked, []string{"p1/state"}); diff != "" {
		t.Errorf("state series read (-got +want):\n%s", diff)
	}
}

func TestOEESites(t *testing.T) {
	a := newOEEAPI(t, newFakeStateStore())
	tests := []struct {
		name, secret, query string
		status              int
		machines            []string
	}{
		{"a lyon identity sees lyon", "lyon", "", 200, []string{"p1", "p2"}},
		{"another site is filtered out", "lyon", "?site=paris", 200, nil},
		{"a paris machine is not found", "lyon", "?machine=p3", 404, nil},
		{"site filter", "all", "?site=paris", 200, []string{"p3"}},
		{"line filter", "all", "?line=A", 200, []string{"p1", "p2"}},
		{"named machines", "all", "?machine=p3&machine=p1", 200, []string{"p1", "p3"}},
		{"unknown machine", "all", "?machine=nope", 404, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, rep := getOEE(t, a, tt.secret, tt.query)
			if w.Code != tt.status {
				t.Fatalf("got %d %s; want %d", w.Code, w.Body, tt.status)
			}
			if tt.status != 200 {
				if !strings.Contains(w.Header().Get("Content-Type"), "problem+json") || strings.Contains(w.Body.String(), "paris") {
					t.Errorf("got %s %s; want a problem that does not reveal the site", w.Header().Get("Content-Type"), w.Body)
				}
				return
			}
			var got []string
			for _, m := range rep.Machines {
				got = append(got, m.Machine)
			}
			if diff := cmp.Diff(got, tt.machines); diff != "" {
				t.Errorf("machines (-got +want):\n%s", diff)
			}
			if tt.secret == "lyon" && strings.Contains(w.Body.String(), "paris") {
				t.Errorf("the answer shows paris: %s", w.Body)
			}
		})
	}
}

func TestOEEBadParams(t *testing.T) {
	a := newOEEAPI(t, newFakeStateStore())
	tests := []struct{ query, param string }{
		{"?step=1x", "step"},
		{"?step=0s", "step"},
		{"?from=1765000800000&to=1765000800000", "from"},
		{"?from=yesterday", "from"},
		{"?to=soon", "to"},
		{"?from=1765000800000&to=1765008000000&step=1s", "step"},
		{"?from=0&to=1765008000000&step=1h", "step"}, // 490 280 buckets
		{"?machine=m0", "machine"},                   // no OEE spec
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			w, _ := getOEE(t, a, "all", tt.query)
			if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `"name":"`+tt.param+`"`) {
				t.Errorf("got %d %s; want 400 naming %s", w.Code, w.Body, tt.param)
			}
		})
	}
}

func TestOEEStoreWithoutStates(t *testing.T) {
	a := newOEEAPI(t, &fakeSeriesStore{})
	w, _ := getOEE(t, a, "all", "")
	if w.Code != http.StatusNotImplemented || !strings.Contains(w.Body.String(), "state series") {
		t.Errorf("got %d %s; want 501 saying the store keeps no state series", w.Code, w.Body)
	}
	// Nothing to compute: an empty answer, whatever the store.
	w, rep := getOEE(t, a, "all", "?site=nowhere")
	if w.Code != http.StatusOK || rep.Machines == nil || len(rep.Machines) != 0 || len(rep.Lines) != 0 || len(rep.Sites) != 0 {
		t.Errorf("got %d %s; want 200 with empty lists", w.Code, w.Body)
	}
}

func TestOEEStoreError(t *testing.T) {
	st := newFakeStateStore()
	st.err = errors.New("disk on fire")
	a := newOEEAPI(t, st)
	w, _ := getOEE(t, a, "all", "")
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "disk on fire") {
		t.Errorf("got %d %s; want 503 with Retry-After", w.Code, w.Body)
	}
}

// embeddedWithStates is the embedded store (counters) with the fake's
// state series.
type embeddedWithStates struct {
	*embedded.Store
	states *fakeStateStore
}

func (e embeddedWithStates) AppendStates(ctx context.Context, cs []store.StateChange) error {
	return e.states.AppendStates(ctx, cs)
}
func (e embeddedWithStates) States(ctx context.Context, machine, name string, from, to int64) ([]store.StateChange, error) {
	return e.states.States(ctx, machine, name, from, to)
}

// TestOEECountersFromEmbeddedStore reads the counters from the embedded
// store: baselines before from, Select's inclusive end.
func TestOEECountersFromEmbeddedStore(t *testing.T) {
	es, err := embedded.Open(filepath.Join(t.TempDir(), "tsdb"), embedded.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { es.Close() })
	fake := newFakeStateStore()
	var samples []telemetry.Sample
	for key, pts := range fake.points {
		for _, p := range pts {
			samples = append(samples, telemetry.Sample{Machine: key.Machine, Metric: key.Metric, Time: p.Time, Value: p.Value})
		}
	}
	// A sample at the end of the range (Select includes it) belongs to the
	// bucket after it.
	samples = append(samples, telemetry.Sample{Machine: "p1", Metric: "parts_total", Time: t0 + 2*hourMs, Value: 5000})
	if err := es.Append(context.Background(), samples); err != nil {
		t.Fatal(err)
	}
	a := newOEEAPI(t, embeddedWithStates{Store: es, states: fake})
	w, rep := getOEE(t, a, "all", "?machine=p1&machine=p2&from=1765000800000&to=1765008000000&step=1h")
	if w.Code != http.StatusOK {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
	var got [][2]float64
	for _, m := range rep.Machines {
		for _, b := range m.Buckets {
			got = append(got, [2]float64{b.TotalCount, b.GoodCount})
		}
	}
	if diff := cmp.Diff(got, [][2]float64{{300, 290}, {600, 590}, {0, 0}, {500, 500}}); diff != "" {
		t.Errorf("counts per bucket, p1 then p2 (-got +want):\n%s", diff)
	}
}
