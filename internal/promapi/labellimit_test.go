package promapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/twinline/twinline/internal/twin"
)

// fakeQ is a store of three series that honours a Select's limit.
type fakeQ struct{}

func (fakeQ) Querier(int64, int64) (storage.Querier, error) { return fakeQuerier{}, nil }

type fakeQuerier struct{}

// Select honours hints.Limit the way the PostgreSQL store does (series).
func (fakeQuerier) Select(_ context.Context, _ bool, h *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	var out []storage.Series
	for _, m := range []string{"m1", "m2", "m3"} {
		ls := labels.FromStrings("__name__", "t", "machine", m)
		ok := true
		for _, x := range ms {
			ok = ok && x.Matches(ls.Get(x.Name))
		}
		if ok {
			out = append(out, storage.NewListSeries(ls, nil))
		}
	}
	if h != nil && h.Limit > 0 && len(out) > h.Limit {
		out = out[:h.Limit]
	}
	return &listSet{series: out}
}
func (fakeQuerier) LabelValues(context.Context, string, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, nil
}
func (fakeQuerier) LabelNames(context.Context, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, nil
}
func (fakeQuerier) Close() error { return nil }

// TestLabelValuesLimitIsOnValues: a label call's limit counts values, not
// the series they are read from.
func TestLabelValuesLimitIsOnValues(t *testing.T) {
	e := &enriched{inner: fakeQ{}, list: func() []twin.Info {
		return []twin.Info{{ID: "m1", Site: "a"}, {ID: "m2", Site: "a"}, {ID: "m3", Site: "b"}}
	}}
	q, _ := e.Querier(0, 1)
	vs, _, err := q.LabelValues(context.Background(), "site", &storage.LabelHints{Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 {
		t.Fatalf("label_values(site) limit=2 of sites {a,b}: got %v", vs)
	}
}

// TestMetadataCallsTakeASlot: series, label and metadata calls wait for
// an evaluation slot like queries, within their timeout: with every slot
// taken they answer 503 timeout instead of running unbounded.
func TestMetadataCallsTakeASlot(t *testing.T) {
	h := New(fakeQ{}, func() []twin.Info { return nil }, Options{})
	for range cap(h.slots) {
		h.slots <- struct{}{}
	}
	for _, path := range []string{"series?match[]=t&timeout=5ms", "labels?timeout=5ms", "label/site/values?timeout=5ms", "metadata?timeout=5ms"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Prefix+path, nil))
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"errorType":"timeout"`) {
			t.Errorf("%s with every slot taken: %d %s; want 503 timeout", path, rec.Code, rec.Body)
		}
	}
	for range cap(h.slots) {
		<-h.slots
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Prefix+"labels", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("labels with slots free: %d %s", rec.Code, rec.Body)
	}
}

// TestSeriesLimitOverAllSelectors: --prometheus-max-series bounds the
// series a query's selectors select all together (as the engine's
// query-cost budget counts them): 422 cost_limit past it.
func TestSeriesLimitOverAllSelectors(t *testing.T) {
	h := New(fakeQ{}, func() []twin.Info { return nil }, Options{MaxSeries: 3})
	for _, c := range []struct {
		query string
		code  int
	}{
		{`count(t)`, http.StatusOK}, // 3
		{`count(t{machine="m1"}) + count(t{machine=~"m2|m3"})`, http.StatusOK}, // 1 + 2
		{`count(t) + count(t{machine="m1"})`, http.StatusUnprocessableEntity},  // 3 + 1
		{`count(t) + count(t)`, http.StatusUnprocessableEntity},                // 3 + 3
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Prefix+"query?time=1&query="+url.QueryEscape(c.query), nil))
		if rec.Code != c.code {
			t.Errorf("%s under a bound of 3 series: %d %s; want %d", c.query, rec.Code, rec.Body, c.code)
		}
		if c.code != http.StatusOK && (!strings.Contains(rec.Body.String(), `"errorType":"cost_limit"`) || !strings.Contains(rec.Body.String(), "too many series")) {
			t.Errorf("%s: %s; want cost_limit, too many series", c.query, rec.Body)
		}
	}
}
