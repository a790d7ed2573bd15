package promapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/twinline/twinline/internal/promapi"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// TestMachineSetMatcher: the set matcher gives the ids back as its set
// matches (what the PostgreSQL store pushes down as machine = ANY), also
// for ids with regexp metacharacters, and matches exactly them.
func TestMachineSetMatcher(t *testing.T) {
	ids := []string{"m1", "a.b", "c|d", "e+f(g)", "[x]"}
	m := promapi.MachineSetMatcher(ids)
	got := m.SetMatches()
	slices.Sort(got)
	want := slices.Clone(ids)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("SetMatches: got %q; want %q", got, want)
	}
	for _, id := range ids {
		if !m.Matches(id) {
			t.Errorf("%q does not match its own set", id)
		}
	}
	for _, other := range []string{"aXb", "c", "d", "m", "m12", "e+f(g)h", "x"} {
		if m.Matches(other) {
			t.Errorf("%q matches the set %s", other, m)
		}
	}
	if m.Type != labels.MatchRegexp || m.Name != "machine" {
		t.Errorf("matcher %s; want machine=~…", m)
	}
}

// BenchmarkRangeQuery is a 24 h range query at a 1 min step over one
// machine and over 1 000 (each sampled every minute), through the HTTP
// handler: evaluation and JSON encoding.
func BenchmarkRangeQuery(b *testing.B) {
	const machines = 1000
	s, err := embedded.Open(filepath.Join(b.TempDir(), "tsdb"), embedded.Options{MaxFuture: -1}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	start := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	end := start.Add(24 * time.Hour)
	infos := make([]twin.Info, machines)
	for i := range infos {
		infos[i] = twin.Info{ID: fmt.Sprintf("m%04d", i), Site: "lyon", Line: fmt.Sprintf("L%d", i%10)}
	}
	var batch []telemetry.Sample
	for ts := start; !ts.After(end); ts = ts.Add(time.Minute) {
		for i, in := range infos {
			batch = append(batch, telemetry.Sample{Machine: in.ID, Metric: "temp", Time: ts.UnixMilli(), Value: float64(i) + float64(ts.Minute())/7})
		}
		if len(batch) >= 50_000 {
			if err := s.Append(context.Background(), batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := s.Append(context.Background(), batch); err != nil {
		b.Fatal(err)
	}
	h := promapi.New(s.PromQueryable(), func() []twin.Info { return infos }, promapi.Options{})
	for _, bc := range []struct{ name, query string }{
		{"1machine", `temp{machine="m0000"}`},
		{"1000machines", `temp`},
		{"1000machines_max_by_line", `max by (line) (temp)`},
		{"1000machines_line_selector", `avg_over_time(temp{line="L3"}[5m])`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			form := url.Values{"query": {bc.query}, "start": {fmt.Sprint(start.Unix())}, "end": {fmt.Sprint(end.Unix())}, "step": {"60"}}
			b.ReportAllocs()
			var size int
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/prometheus/api/v1/query_range?"+form.Encode(), nil))
				if rec.Code != 200 {
					b.Fatalf("%d %s", rec.Code, rec.Body)
				}
				size = rec.Body.Len()
			}
			b.ReportMetric(float64(size), "B/answer")
		})
	}
}
