package promapi

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
)

// TestHasSubquery checks which queries the handler marks to read raw
// samples only (store.WithRawSamples): those with a subquery anywhere.
func TestHasSubquery(t *testing.T) {
	eng := promql.NewEngine(promql.EngineOpts{MaxSamples: 1000, Timeout: time.Minute})
	for q, want := range map[string]bool{
		"max_over_time(temp[1m])":                                    false,
		"avg by (machine) (avg_over_time(temp[1m] offset 1ms))":      false,
		"max_over_time(max_over_time(temp[1m])[1h:1m])":              true,
		"sum(rate(parts_total[5m])) * 60 + max_over_time(temp[5m:])": true,
		"1": false,
	} {
		qry, err := eng.NewInstantQuery(context.Background(), storage.QueryableFunc(func(int64, int64) (storage.Querier, error) {
			return storage.NoopQuerier(), nil
		}), nil, q, time.Unix(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		if got := hasSubquery(qry); got != want {
			t.Errorf("hasSubquery(%s) = %v, want %v", q, got, want)
		}
		qry.Close()
	}
}
