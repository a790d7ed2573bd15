package embedded

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// promSelect returns the series of a Select as "labels: t=v …" strings.
func promSelect(t *testing.T, q storage.Querier, sorted bool, ms ...*labels.Matcher) []string {
	t.Helper()
	ss := q.Select(context.Background(), sorted, &storage.SelectHints{Start: 0, End: 10_000}, ms...)
	var out []string
	var it chunkenc.Iterator
	for ss.Next() {
		s := ss.At().Labels().String() + ":"
		it = ss.At().Iterator(it)
		for it.Next() == chunkenc.ValFloat {
			ts, v := it.At()
			s += " " + labels.FromStrings("t", strconv.FormatInt(ts, 10), "v", strconv.FormatFloat(v, 'g', -1, 64)).String()
		}
		out = append(out, s)
	}
	if err := ss.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPromQueryable(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxFuture: -1})
	// TSDB orders by machine, PromQL by __name__ first: m1/temp, m2/rpm
	// come out the other way round.
	err := s.Append(context.Background(), []telemetry.Sample{
		{Machine: "m1", Metric: "temp", Time: 1000, Value: 1},
		{Machine: "m1", Metric: "temp", Time: 2000, Value: 2},
		{Machine: "m2", Metric: "rpm", Time: 1000, Value: 3},
	})
	if err != nil {
		t.Fatal(err)
	}
	q, err := s.PromQueryable().Querier(0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	eq := func(name, v string) *labels.Matcher { return labels.MustNewMatcher(labels.MatchEqual, name, v) }
	tests := []struct {
		name string
		ms   []*labels.Matcher
		want []string
	}{
		{"all", []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+")}, []string{
			`{__name__="rpm", machine="m2"}: {t="1000", v="3"}`,
			`{__name__="temp", machine="m1"}: {t="1000", v="1"} {t="2000", v="2"}`,
		}},
		{"by name", []*labels.Matcher{eq("__name__", "temp")}, []string{`{__name__="temp", machine="m1"}: {t="1000", v="1"} {t="2000", v="2"}`}},
		{"by machine set", []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, "machine", "m2|m9")}, []string{`{__name__="rpm", machine="m2"}: {t="1000", v="3"}`}},
		{"metric is no label of PromQL", []*labels.Matcher{eq("metric", "temp")}, nil},
		{"metric empty", []*labels.Matcher{eq("metric", ""), eq("machine", "m2")}, []string{`{__name__="rpm", machine="m2"}: {t="1000", v="3"}`}},
		{"other label empty", []*labels.Matcher{eq("site", ""), eq("machine", "m2")}, []string{`{__name__="rpm", machine="m2"}: {t="1000", v="3"}`}},
		{"other label set", []*labels.Matcher{eq("site", "lyon")}, nil},
	}
	for _, tt := range tests {
		for _, sorted := range []bool{true, false} {
			got := promSelect(t, q, sorted, tt.ms...)
			if !sorted && len(got) > 1 {
				continue // unsorted: order not promised
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("%s (sorted %v) (-got +want):\n%s", tt.name, sorted, diff)
			}
		}
	}
	ctx := context.Background()
	for _, c := range []struct {
		name string
		ms   []*labels.Matcher
		want []string
	}{
		{"__name__", nil, []string{"rpm", "temp"}},
		{"__name__", []*labels.Matcher{eq("machine", "m1")}, []string{"temp"}},
		{"machine", []*labels.Matcher{eq("__name__", "rpm")}, []string{"m2"}},
		{"metric", nil, nil},
		{"site", nil, nil},
	} {
		got, _, err := q.LabelValues(ctx, c.name, nil, c.ms...)
		if err != nil || !cmp.Equal(got, c.want) {
			t.Errorf("label values of %s %v: got %v, %v; want %v", c.name, c.ms, got, err, c.want)
		}
	}
	names, _, err := q.LabelNames(ctx, nil)
	if err != nil || !cmp.Equal(names, []string{"__name__", "machine"}) {
		t.Errorf("label names: got %v, %v", names, err)
	}
	names, _, err = q.LabelNames(ctx, nil, eq("__name__", "nope"))
	if err != nil || len(names) != 0 {
		t.Errorf("label names of no series: got %v, %v", names, err)
	}

	// Close waits for the open querier, then refuses new ones.
	closed := make(chan error)
	go func() { closed <- s.Close() }()
	if got := promSelect(t, q, true, eq("__name__", "rpm")); len(got) != 1 {
		t.Errorf("querier while Close waits: got %v", got)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if _, err := s.PromQueryable().Querier(0, 1); !errors.Is(err, store.ErrClosed) {
		t.Errorf("querier after Close: got %v; want store.ErrClosed", err)
	}
}
