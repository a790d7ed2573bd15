package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	promclient "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/promapi"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// The fleet of the Prometheus API tests: three machines on two sites and
// two lines, with a gauge (temp, random) and a counter (parts) sampled
// every 15 s for two hours from promT0.
var (
	promT0    = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	promSpan  = 2 * time.Hour
	promEvery = 15 * time.Second
	promFleet = []twin.Info{
		{ID: "m1", Site: "lyon", Line: "A", Attributes: map[string]any{"model": "X1"}},
		{ID: "m2", Site: "lyon", Line: "B", Attributes: map[string]any{"model": "X2"}},
		{ID: "m3", Site: "paris", Line: "A", Attributes: map[string]any{"model": "X1", "nested": map[string]any{"a": 1}}},
	}
)

// promBackend opens a store of one backend for the Prometheus API tests.
type promBackend struct {
	name string
	open func(t *testing.T) store.Store
}

// promBackends are the stores the Prometheus API must answer alike on.
// The PostgreSQL case fails until its store serves PromQL (issue 17,
// internal/store/postgres/promql.go).
var promBackends = []promBackend{
	{"embedded", func(t *testing.T) store.Store { return openOEEEmbedded(t) }},
	{"postgres", func(t *testing.T) store.Store { return openOEEPostgres(t) }},
}

// promEnv is an API server over a store holding the fleet's data, with
// auth on: the token "all" reads every site, "lyon" only lyon.
type promEnv struct {
	srv *httptest.Server
}

type promEnvOptions struct {
	maxSeries, maxSamples int
	timeout               time.Duration
}

func newPromEnv(t *testing.T, st store.Store, o promEnvOptions) *promEnv {
	t.Helper()
	pq, ok := st.(store.PromQueryable)
	if !ok {
		t.Fatalf("the %T store does not implement store.PromQueryable", st)
	}
	reg, live := openTwins(t, time.Minute, time.Now)
	for _, in := range promFleet {
		if _, _, err := reg.Put(in.ID, in); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(17, 1))
	var samples []telemetry.Sample
	for i, in := range promFleet {
		parts := float64(1000 * (i + 1))
		for ts := promT0; !ts.After(promT0.Add(promSpan)); ts = ts.Add(promEvery) {
			parts += float64(rng.IntN(5))
			samples = append(samples,
				telemetry.Sample{Machine: in.ID, Metric: "temp", Time: ts.UnixMilli(), Value: 60 + 20*rng.Float64()},
				telemetry.Sample{Machine: in.ID, Metric: "parts", Time: ts.UnixMilli(), Value: parts})
		}
	}
	if err := st.Append(context.Background(), samples); err != nil {
		t.Fatal(err)
	}
	prom := promapi.New(pq.PromQueryable(), reg.List, promapi.Options{
		Attributes: []string{"model", "nested"},
		MaxSeries:  o.maxSeries, MaxSamples: o.maxSamples, Timeout: o.timeout,
		Version: "test", Now: func() time.Time { return promT0.Add(promSpan) },
	})
	identities := map[string]auth.Identity{
		"all":  {Name: "all", Kind: auth.KindToken, Scopes: auth.ScopeRead, TokenID: "a"},
		"lyon": {Name: "lyon", Kind: auth.KindToken, Scopes: auth.ScopeRead, Sites: []string{"lyon"}, TokenID: "l"},
	}
	a := New(Options{MaxInflightIngest: 1}, Deps{
		Registry: reg, Live: live, Store: st, Logger: slog.New(slog.DiscardHandler), Prometheus: prom,
		Ready: func() error { return nil },
		Auth: &Auth{Open: func() bool { return false }, Verify: func(secret string) (auth.Identity, error) {
			if id, ok := identities[secret]; ok {
				return id, nil
			}
			return auth.Identity{}, auth.ErrInvalidToken
		}},
	})
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return &promEnv{srv: srv}
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// client is Prometheus' own Go client of the API, as token.
func (e *promEnv) client(t *testing.T, token string) promv1.API {
	t.Helper()
	c, err := promclient.NewClient(promclient.Config{Address: e.srv.URL + "/prometheus",
		RoundTripper: bearer{token, http.DefaultTransport}})
	if err != nil {
		t.Fatal(err)
	}
	return promv1.NewAPI(c)
}

// raw returns the raw points of one series from twinline's own series
// API (GET /api/v1/machines/{id}/series), in [from, to].
func (e *promEnv) raw(t *testing.T, machine, metric string, from, to time.Time) []store.Point {
	t.Helper()
	u := fmt.Sprintf("%s/api/v1/machines/%s/series?metric=%s&from=%d&to=%d", e.srv.URL, machine, metric, from.UnixMilli(), to.UnixMilli())
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer all")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sr seriesResponse
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&sr); err != nil {
		t.Fatal(err)
	}
	pts := make([]store.Point, len(sr.T))
	for i := range sr.T {
		pts[i] = store.Point{Time: sr.T[i], Value: sr.V[i]}
	}
	return pts
}

// get is a raw GET of the Prometheus API: status and decoded body.
func (e *promEnv) get(t *testing.T, token, path string, params url.Values) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.srv.URL+path+"?"+params.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s: body not JSON: %v", path, err)
	}
	return resp.StatusCode, body
}

// TestPrometheusClient drives the API with Prometheus' unmodified Go
// client: instant and range queries, series, label names and values,
// metadata and build information, on each store.
func TestPrometheusClient(t *testing.T) {
	for _, b := range promBackends {
		t.Run(b.name, func(t *testing.T) {
			e := newPromEnv(t, b.open(t), promEnvOptions{})
			c := e.client(t, "all")
			ctx := context.Background()
			at := promT0.Add(time.Hour)

			v, _, _, err := c.Query(ctx, `temp{machine="m1"}`, at)
			if err != nil {
				t.Fatal(err)
			}
			vec, ok := v.(model.Vector)
			if !ok || len(vec) != 1 {
				t.Fatalf("instant query: got %v; want one sample", v)
			}
			raw := e.raw(t, "m1", "temp", at.Add(-time.Minute), at)
			wantMetric := model.Metric{"__name__": "temp", "machine": "m1", "site": "lyon", "line": "A", "model": "X1"}
			if !vec[0].Metric.Equal(wantMetric) || float64(vec[0].Value) != raw[len(raw)-1].Value || !vec[0].Timestamp.Time().Equal(at) {
				t.Errorf("instant query: got %v; want %v => %v @ %v", vec[0], wantMetric, raw[len(raw)-1].Value, at)
			}

			r := promv1.Range{Start: promT0, End: promT0.Add(10 * time.Minute), Step: time.Minute}
			v, _, _, err = c.QueryRange(ctx, `parts{line="A"}`, r)
			if err != nil {
				t.Fatal(err)
			}
			mat, ok := v.(model.Matrix)
			if !ok || len(mat) != 2 {
				t.Fatalf("range query: got %v; want two series (m1 and m3 of line A)", v)
			}
			for _, s := range mat {
				m := string(s.Metric["machine"])
				pts := e.raw(t, m, "parts", r.Start, r.End)
				if len(s.Values) != 11 {
					t.Fatalf("range query %s: %d points; want 11", m, len(s.Values))
				}
				for i, p := range s.Values {
					// Every minute is a sample time: the value is that sample's.
					want := pts[i*4]
					if p.Timestamp.Time().UnixMilli() != want.Time || float64(p.Value) != want.Value {
						t.Errorf("range query %s step %d: got %v; want %v", m, i, p, want)
					}
				}
			}

			sets, _, _, err := c.Series(ctx, []string{`temp`, `{__name__="parts",machine="m2"}`}, promT0, promT0.Add(promSpan))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range sets {
				got = append(got, model.Metric(s).String())
			}
			want := []string{
				`parts{line="B", machine="m2", model="X2", site="lyon"}`,
				`temp{line="A", machine="m1", model="X1", site="lyon"}`,
				`temp{line="A", machine="m3", model="X1", site="paris"}`,
				`temp{line="B", machine="m2", model="X2", site="lyon"}`,
			}
			if diff := gocmp.Diff(got, want); diff != "" {
				t.Errorf("series (-got +want):\n%s", diff)
			}

			names, _, _, err := c.LabelNames(ctx, nil, time.Time{}, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			// nested is an object: no label.
			if diff := gocmp.Diff(names.String(), "__name__, line, machine, model, site"); diff != "" {
				t.Errorf("label names (-got +want):\n%s", diff)
			}
			for label, want := range map[string]string{
				"__name__": "[parts temp]", "machine": "[m1 m2 m3]", "site": "[lyon paris]", "line": "[A B]", "model": "[X1 X2]", "nope": "[]",
			} {
				vals, _, _, err := c.LabelValues(ctx, label, nil, time.Time{}, time.Time{})
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(vals) != want {
					t.Errorf("label values of %s: got %v; want %s", label, vals, want)
				}
			}
			vals, _, _, err := c.LabelValues(ctx, "machine", []string{`temp{line="A"}`}, time.Time{}, time.Time{})
			if err != nil || fmt.Sprint(vals) != "[m1 m3]" {
				t.Errorf("machines of line A: got %v, %v; want [m1 m3]", vals, err)
			}
			md, err := c.Metadata(ctx, "", "")
			if err != nil || len(md) != 2 || md["temp"][0].Type != promv1.MetricTypeUnknown {
				t.Errorf("metadata: got %v, %v; want parts and temp of type unknown", md, err)
			}
			bi, err := c.Buildinfo(ctx)
			if err != nil || bi.Version != "test" {
				t.Errorf("buildinfo: got %+v, %v", bi, err)
			}
		})
	}
}

// promCase is a PromQL expression and its value computed from the raw
// points of twinline's own series API.
type promCase struct {
	name, query string
	// want returns the expected samples at t, by label set (the labels
	// the query keeps, model.Metric.String()).
	want func(e *promEnv, t *testing.T, at time.Time) map[string]float64
}

// lastIn is the newest point in (from, to] or false.
func lastIn(pts []store.Point, from, to time.Time) (store.Point, bool) {
	for i := len(pts) - 1; i >= 0; i-- {
		if pts[i].Time <= to.UnixMilli() {
			if pts[i].Time > from.UnixMilli() {
				return pts[i], true
			}
			break
		}
	}
	return store.Point{}, false
}

// window is the points in (at-d, at].
func window(pts []store.Point, at time.Time, d time.Duration) []float64 {
	var vs []float64
	for _, p := range pts {
		if p.Time > at.Add(-d).UnixMilli() && p.Time <= at.UnixMilli() {
			vs = append(vs, p.Value)
		}
	}
	return vs
}

func metricKey(kv ...string) string {
	m := model.Metric{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[model.LabelName(kv[i])] = model.LabelValue(kv[i+1])
	}
	return m.String()
}

func fleetLabels(in twin.Info) []string {
	return []string{"machine", in.ID, "site", in.Site, "line", in.Line, "model", in.Attributes["model"].(string)}
}

var promCases = []promCase{
	{"rate", `rate(parts[5m])`, func(e *promEnv, t *testing.T, at time.Time) map[string]float64 {
		out := map[string]float64{}
		for _, in := range promFleet {
			pts := e.raw(t, in.ID, "parts", at.Add(-5*time.Minute), at)
			var w []store.Point
			for _, p := range pts {
				if p.Time > at.Add(-5*time.Minute).UnixMilli() {
					w = append(w, p)
				}
			}
			// Prometheus' extrapolated rate of a counter without resets
			// whose samples are evenly spaced up to the evaluation time:
			// the increase is extrapolated by one interval to the window's
			// start (less than 1.1 intervals away; the counter's zero is
			// further), then divided by the window.
			first, last := w[0], w[len(w)-1]
			sampled := float64(last.Time-first.Time) / 1000
			toStart := float64(first.Time-at.Add(-5*time.Minute).UnixMilli()) / 1000
			toEnd := float64(at.UnixMilli()-last.Time) / 1000
			inc := (last.Value - first.Value) * (sampled + toStart + toEnd) / sampled
			out[metricKey(fleetLabels(in)...)] = inc / 300
		}
		return out
	}},
	{"avg_over_time", `avg_over_time(temp[10m])`, func(e *promEnv, t *testing.T, at time.Time) map[string]float64 {
		out := map[string]float64{}
		for _, in := range promFleet {
			vs := window(e.raw(t, in.ID, "temp", at.Add(-10*time.Minute), at), at, 10*time.Minute)
			sum := 0.0
			for _, v := range vs {
				sum += v
			}
			out[metricKey(fleetLabels(in)...)] = sum / float64(len(vs))
		}
		return out
	}},
	{"max by line", `max by (line) (temp)`, func(e *promEnv, t *testing.T, at time.Time) map[string]float64 {
		out := map[string]float64{}
		for _, in := range promFleet {
			p, ok := lastIn(e.raw(t, in.ID, "temp", at.Add(-5*time.Minute), at), at.Add(-5*time.Minute), at)
			if !ok {
				continue
			}
			k := metricKey("line", in.Line)
			if cur, seen := out[k]; !seen || p.Value > cur {
				out[k] = p.Value
			}
		}
		return out
	}},
	{"quantile_over_time", `quantile_over_time(0.9, temp{site="lyon"}[10m])`, func(e *promEnv, t *testing.T, at time.Time) map[string]float64 {
		out := map[string]float64{}
		for _, in := range promFleet[:2] {
			vs := window(e.raw(t, in.ID, "temp", at.Add(-10*time.Minute), at), at, 10*time.Minute)
			sort.Float64s(vs)
			rank := 0.9 * float64(len(vs)-1)
			lo := math.Floor(rank)
			hi := math.Min(lo+1, float64(len(vs)-1))
			w := rank - lo
			out[metricKey(fleetLabels(in)...)] = vs[int(lo)]*(1-w) + vs[int(hi)]*w
		}
		return out
	}},
	{"topk", `topk(2, temp)`, func(e *promEnv, t *testing.T, at time.Time) map[string]float64 {
		type mv struct {
			key string
			v   float64
		}
		var all []mv
		for _, in := range promFleet {
			p, ok := lastIn(e.raw(t, in.ID, "temp", at.Add(-5*time.Minute), at), at.Add(-5*time.Minute), at)
			if ok {
				all = append(all, mv{metricKey(append([]string{"__name__", "temp"}, fleetLabels(in)...)...), p.Value})
			}
		}
		slices.SortFunc(all, func(a, b mv) int { return -cmpFloat(a.v, b.v) })
		out := map[string]float64{}
		for _, x := range all[:2] {
			out[x.key] = x.v
		}
		return out
	}},
	{"offset", `temp{machine="m2"} offset 30m`, func(e *promEnv, t *testing.T, at time.Time) map[string]float64 {
		then := at.Add(-30 * time.Minute)
		p, ok := lastIn(e.raw(t, "m2", "temp", then.Add(-5*time.Minute), then), then.Add(-5*time.Minute), then)
		if !ok {
			return map[string]float64{}
		}
		return map[string]float64{metricKey(append([]string{"__name__", "temp"}, fleetLabels(promFleet[1])...)...): p.Value}
	}},
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func near(a, b float64) bool {
	return a == b || math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))
}

// TestPrometheusQueriesMatchSeries evaluates each PromQL case on every
// backend, as instant queries and as a range query, and compares each
// value with what the case computes from the raw points of GET
// /api/v1/machines/{id}/series of the same data.
func TestPrometheusQueriesMatchSeries(t *testing.T) {
	for _, b := range promBackends {
		t.Run(b.name, func(t *testing.T) {
			e := newPromEnv(t, b.open(t), promEnvOptions{})
			c := e.client(t, "all")
			// Sample times, between them, and where the offset reaches
			// before the data (empty).
			times := []time.Time{promT0.Add(time.Hour), promT0.Add(time.Hour + 7*time.Second + 250*time.Millisecond), promT0.Add(promSpan), promT0.Add(20 * time.Minute)}
			for _, tc := range promCases {
				t.Run(tc.name, func(t *testing.T) {
					for _, at := range times {
						v, _, _, err := c.Query(context.Background(), tc.query, at)
						if err != nil {
							t.Fatalf("%s at %v: %v", tc.query, at, err)
						}
						got := map[string]float64{}
						for _, s := range v.(model.Vector) {
							got[s.Metric.String()] = float64(s.Value)
						}
						want := tc.want(e, t, at)
						if diff := gocmp.Diff(got, want, gocmp.Comparer(near)); diff != "" {
							t.Errorf("%s at %v (-got +want):\n%s", tc.query, at, diff)
						}
					}
					// A range query gives the instant query's value at each
					// step.
					r := promv1.Range{Start: promT0.Add(time.Hour), End: promT0.Add(time.Hour + 10*time.Minute), Step: 150 * time.Second}
					v, _, _, err := c.QueryRange(context.Background(), tc.query, r)
					if err != nil {
						t.Fatal(err)
					}
					got := map[string]float64{}
					for _, s := range v.(model.Matrix) {
						for _, p := range s.Values {
							got[fmt.Sprintf("%s@%d", s.Metric, p.Timestamp)] = float64(p.Value)
						}
					}
					want := map[string]float64{}
					for at := r.Start; !at.After(r.End); at = at.Add(r.Step) {
						for k, v := range tc.want(e, t, at) {
							want[fmt.Sprintf("%s@%d", k, at.UnixMilli())] = v
						}
					}
					if diff := gocmp.Diff(got, want, gocmp.Comparer(near)); diff != "" {
						t.Errorf("range %s (-got +want):\n%s", tc.query, diff)
					}
				})
			}
		})
	}
}

// TestPrometheusSiteRestricted: an identity of lyon sees lyon's machines
// only, whatever the selector says.
func TestPrometheusSiteRestricted(t *testing.T) {
	e := newPromEnv(t, openOEEEmbedded(t), promEnvOptions{})
	c := e.client(t, "lyon")
	ctx := context.Background()
	at := promT0.Add(time.Hour)
	for query, want := range map[string]string{
		`count(temp)`:                      "2",
		`count(temp{site="paris"})`:        "",
		`count(temp{machine="m3"})`:        "",
		`count(temp{machine=~"m.*"})`:      "2",
		`count(temp{site!="lyon"})`:        "",
		`count({__name__=~".+"})`:          "4",
		`count(temp{line="A"})`:            "1",
		`count(temp{nothere=""})`:          "2",
		`count by (site) (temp{line=~""})`: "",
	} {
		v, _, _, err := c.Query(ctx, query, at)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		got := ""
		if vec := v.(model.Vector); len(vec) > 0 {
			got = vec[0].Value.String()
		}
		if got != want {
			t.Errorf("%s: got %q; want %q", query, got, want)
		}
	}
	sets, _, _, err := c.Series(ctx, []string{`{__name__=~".+"}`}, promT0, promT0.Add(promSpan))
	if err != nil || len(sets) != 4 {
		t.Errorf("series: got %v, %v; want lyon's 4", sets, err)
	}
	for _, s := range sets {
		if s["site"] != "lyon" {
			t.Errorf("series of another site: %v", s)
		}
	}
	for label, want := range map[string]string{"site": "[lyon]", "machine": "[m1 m2]", "__name__": "[parts temp]"} {
		vals, _, _, err := c.LabelValues(ctx, label, nil, time.Time{}, time.Time{})
		if err != nil || fmt.Sprint(vals) != want {
			t.Errorf("label values of %s: got %v, %v; want %s", label, vals, err, want)
		}
	}
}

// TestPrometheusLimits: the series, samples and time limits answer
// Prometheus' errors.
func TestPrometheusLimits(t *testing.T) {
	st := openOEEEmbedded(t)
	ctx := context.Background()
	at := promT0.Add(time.Hour)
	apiErr := func(err error) *promv1.Error {
		var e *promv1.Error
		if !errors.As(err, &e) {
			t.Fatalf("got %v; want a Prometheus API error", err)
		}
		return e
	}

	e := newPromEnv(t, st, promEnvOptions{maxSeries: 2})
	c := e.client(t, "all")
	if _, _, _, err := c.Query(ctx, `temp{machine!="m3"}`, at); err != nil {
		t.Errorf("2 series under a bound of 2: %v", err)
	}
	_, _, _, err := c.Query(ctx, `temp`, at)
	if e := apiErr(err); e.Type != "cost_limit" || !strings.Contains(e.Msg, "too many series") {
		t.Errorf("3 series over a bound of 2: got %+v; want cost_limit", e)
	}
	_, _, _, err = c.Series(ctx, []string{`temp`}, promT0, at)
	if e := apiErr(err); e.Type != "cost_limit" || !strings.Contains(e.Msg, "--prometheus-max-series") {
		t.Errorf("series over the bound: got %+v; want cost_limit naming the flag", e)
	}
	status, body := e.get(t, "all", "/prometheus/api/v1/query", url.Values{"query": {"temp"}, "time": {fmt.Sprint(at.Unix())}})
	if status != 422 || body["errorType"] != "cost_limit" || body["status"] != "error" {
		t.Errorf("GET over the series bound: %d %v; want 422 cost_limit", status, body)
	}

	e = newPromEnv(t, openOEEEmbedded(t), promEnvOptions{maxSamples: 100})
	c = e.client(t, "all")
	_, _, _, err = c.QueryRange(ctx, `temp`, promv1.Range{Start: promT0, End: at, Step: time.Minute})
	if e := apiErr(err); e.Type != promv1.ErrExec || !strings.Contains(e.Msg, "too many samples") {
		t.Errorf("over the samples bound: got %+v; want execution error", e)
	}
	if _, _, _, err := c.Query(ctx, `temp`, at); err != nil {
		t.Errorf("3 samples under a bound of 100: %v", err)
	}
	// Two steps an hour apart: the engine holds 6 samples at most, but
	// PostgreSQL reads the selection whole (every sample of the hour)
	// before the engine iterates it, so there the bound stops the read.
	hourly := promv1.Range{Start: promT0, End: at, Step: time.Hour}
	if _, _, _, err := c.QueryRange(ctx, `temp`, hourly); err != nil {
		t.Errorf("embedded, 6 samples held under a bound of 100: %v", err)
	}
	e = newPromEnv(t, openOEEPostgres(t), promEnvOptions{maxSamples: 100})
	c = e.client(t, "all")
	_, _, _, err = c.QueryRange(ctx, `temp`, hourly)
	if e := apiErr(err); e.Type != promv1.ErrExec || !strings.Contains(e.Msg, "too many samples") || !strings.Contains(e.Msg, "read more than 100 samples") {
		t.Errorf("PostgreSQL reading over the samples bound: got %+v; want the store's execution error", e)
	}

	e = newPromEnv(t, openOEEEmbedded(t), promEnvOptions{timeout: time.Nanosecond})
	status, body = e.get(t, "all", "/prometheus/api/v1/query", url.Values{"query": {"temp"}, "time": {fmt.Sprint(at.Unix())}})
	if status != 503 || body["errorType"] != "timeout" {
		t.Errorf("over the timeout: %d %v; want 503 timeout", status, body)
	}
}

// TestPrometheusBadRequests: bad PromQL and parameters are bad_data 400;
// a server without a PromQL store says so.
func TestPrometheusBadRequests(t *testing.T) {
	e := newPromEnv(t, openOEEEmbedded(t), promEnvOptions{})
	tests := []struct {
		path   string
		params url.Values
		msg    string
	}{
		{"/prometheus/api/v1/query", url.Values{"query": {"sum(temp"}}, "parse error"},
		{"/prometheus/api/v1/query", url.Values{"query": {"temp"}, "time": {"yesterday"}}, `"time"`},
		{"/prometheus/api/v1/query", url.Values{}, "no expression"},
		{"/prometheus/api/v1/query_range", url.Values{"query": {"temp"}, "start": {"10"}, "end": {"5"}, "step": {"1"}}, "before start"},
		{"/prometheus/api/v1/query_range", url.Values{"query": {"temp"}, "start": {"0"}, "end": {"100000"}, "step": {"1"}}, "11,000 points"},
		{"/prometheus/api/v1/query_range", url.Values{"query": {"temp"}, "start": {"0"}, "end": {"10"}, "step": {"0"}}, "step"},
		{"/prometheus/api/v1/query_range", url.Values{"query": {"temp"}, "end": {"10"}, "step": {"1"}}, `"start"`},
		{"/prometheus/api/v1/series", url.Values{}, "no match[]"},
		{"/prometheus/api/v1/series", url.Values{"match[]": {`{site=~".*"}`}}, "non-empty matcher"},
		{"/prometheus/api/v1/labels", url.Values{"match[]": {`temp{`}}, "match[]"},
		{"/prometheus/api/v1/label/a-b/values", url.Values{}, "invalid label name"},
	}
	for _, tt := range tests {
		status, body := e.get(t, "all", tt.path, tt.params)
		if status != 400 || body["status"] != "error" || body["errorType"] != "bad_data" || !strings.Contains(fmt.Sprint(body["error"]), tt.msg) {
			t.Errorf("%s?%s: %d %v; want 400 bad_data with %q", tt.path, tt.params.Encode(), status, body, tt.msg)
		}
	}

	// A server whose store does not serve PromQL.
	reg, live := openTwins(t, time.Minute, time.Now)
	a := New(Options{MaxInflightIngest: 1}, Deps{Registry: reg, Live: live, Logger: slog.New(slog.DiscardHandler), Ready: func() error { return nil }})
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", "/prometheus/api/v1/query?query=temp", nil))
	if rec.Code != 501 || !strings.Contains(rec.Body.String(), `"errorType":"unavailable"`) {
		t.Errorf("without a PromQL store: %d %s; want 501 unavailable", rec.Code, rec.Body)
	}
}
