package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// explainPlan returns the plan PostgreSQL makes for sql with args, and
// its JSON to log.
func explainPlan(t *testing.T, ctx context.Context, s *Store, sql string, args ...any) (planNode, string) {
	t.Helper()
	var out string
	if err := s.pool.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+sql, args...).Scan(&out); err != nil {
		t.Fatalf("EXPLAIN: %v\n%s", err, sql)
	}
	var plans []struct {
		Plan planNode `json:"Plan"`
	}
	if err := json.Unmarshal([]byte(out), &plans); err != nil || len(plans) != 1 {
		t.Fatalf("decoding plan: %v\n%s", err, out)
	}
	return plans[0].Plan, out
}

// planNode is the part of an EXPLAIN (FORMAT JSON) node the test reads.
type planNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	IndexName    string     `json:"Index Name"`
	Plans        []planNode `json:"Plans"`
}

// scans returns the scan nodes of a plan.
func (n planNode) scans() []planNode {
	var out []planNode
	if n.RelationName != "" || n.IndexName != "" {
		out = append(out, n)
	}
	for _, c := range n.Plans {
		out = append(out, c.scans()...)
	}
	return out
}

// TestQueryPlans runs EXPLAIN on the store's main queries over three days of
// data and fails when a query scans a partition outside its time range (no
// partition pruning) or reads one without an index.
func TestQueryPlans(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ctx := context.Background()
	day0 := time.UnixMilli(storetest.Base).UTC() // the last day holds 12 hours
	// 20 series, one sample every 30 s, from two days before day0 to now.
	var batch []telemetry.Sample
	for tm := day0.Add(-48 * time.Hour).UnixMilli(); tm <= testNow.UnixMilli(); tm += 30 * sec {
		for m := range 20 {
			batch = append(batch, telemetry.Sample{Machine: fmt.Sprintf("m%02d", m), Metric: "x", Time: tm, Value: float64(tm%1000 + int64(m))})
		}
		if len(batch) >= 20_000 {
			mustAppend(t, s, batch)
			batch = batch[:0]
		}
	}
	mustAppend(t, s, batch)
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO machines (id, attributes, retired_at)
		SELECT 'm' || i, jsonb_build_object('vendor', CASE WHEN i % 500 = 1 THEN 'acme' ELSE 'other' || (i % 37) END, 'line', 'l' || (i % 10)),
			CASE WHEN i % 10 = 0 THEN now() END
		FROM generate_series(1, 10000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE samples; ANALYZE sample_aggs; ANALYZE machines"); err != nil {
		t.Fatal(err)
	}

	dayM1 := day0.Add(-24 * time.Hour) // a full day in the middle
	hourFrom := dayM1.Add(10 * time.Hour)
	hourTo := hourFrom.Add(time.Hour - time.Millisecond)
	dayTo := dayM1.Add(24*time.Hour - time.Millisecond)
	raw := partitionName(samplesTable, dayNum(dayM1))
	agg := partitionName(aggsTable, dayNum(dayM1))
	const key = "m07"
	tests := []struct {
		name  string
		sql   string
		args  []any
		want  []string // every relation scanned, each through an index
		index string   // the index the scans use (a suffix of its name)
	}{
		{"select one hour", selectRange, []any{key, "x", hourFrom, hourTo}, []string{raw}, "machine_metric_time_idx"},
		{"aggregate a day by minute from aggregates", aggregateMixed,
			[]any{key, "x", dayM1, dayTo, time.Minute, dayM1, dayTo.Add(time.Millisecond)}, []string{agg}, "_pkey"},
		{"aggregate an unaligned day by minute", aggregateMixed,
			[]any{key, "x", dayM1.Add(5 * time.Second), dayTo.Add(-3 * time.Second), time.Minute, dayM1.Add(10 * time.Second), dayTo.Add(-9999 * time.Millisecond)},
			[]string{agg, raw, raw}, ""},
		{"aggregate an hour by 7 s from raw", aggregateRaw, []any{key, "x", hourFrom, hourTo, 7 * time.Second}, []string{raw}, "machine_metric_time_idx"},
		{"downsample a day", downsampleMinMax,
			[]any{key, "x", dayM1, dayTo, dayM1.UnixMilli(), int64(500), int64(24 * time.Hour / time.Millisecond)}, []string{raw}, "machine_metric_time_idx"},
		{"downsample a day from aggregates", downsampleWindows, downsampleArgs(key, dayM1.UnixMilli(), dayTo.UnixMilli(), 1000),
			[]string{agg, raw}, ""},
		{"delta over an hour", transformDelta, []any{key, "x", hourFrom, hourTo, 100_000}, []string{raw}, "machine_metric_time_idx"},
		{"rolling average over an hour", transformRollingAvg, []any{key, "x", hourFrom, hourTo, 100_000, 30}, []string{raw}, "machine_metric_time_idx"},
		{"series of an hour", listSeries, []any{hourFrom, hourTo, 10 * time.Second}, []string{agg, agg, raw}, ""},
		{"active machines with an attribute (Registry.WithAttributes, the fleet's attr filters)", fmt.Sprintf(selectWithAttributes, "machines"),
			[]any{`{"vendor": "acme"}`}, []string{"machines"}, "machines_active_attributes_idx"},
		{"active machines with two attributes", fmt.Sprintf(selectWithAttributes, "machines"),
			[]any{`{"vendor": "acme", "line": "l1"}`}, []string{"machines"}, "machines_active_attributes_idx"},
		{"active machines with a number attribute", fmt.Sprintf(selectWithAttributes, "machines"),
			[]any{`{"floor": 3}`}, []string{"machines"}, "machines_active_attributes_idx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, out := explainPlan(t, ctx, s, tt.sql, tt.args...)
			var rels []string
			for _, sc := range plan.scans() {
				if sc.RelationName != "" {
					rels = append(rels, sc.RelationName)
				}
				switch sc.NodeType {
				case "Index Scan", "Index Only Scan", "Bitmap Index Scan":
					if !strings.HasSuffix(sc.IndexName, tt.index) || !ourIndex(sc.IndexName) {
						t.Errorf("%s uses index %s, want *%s", sc.NodeType, sc.IndexName, tt.index)
					}
				case "Bitmap Heap Scan": // its child is the Bitmap Index Scan
				default:
					t.Errorf("%s on %s: not an index scan", sc.NodeType, sc.RelationName)
				}
			}
			slices.Sort(rels)
			want := slices.Sorted(slices.Values(tt.want))
			if !slices.Equal(rels, want) {
				t.Errorf("relations scanned = %v, want %v (partition pruning lost?)", rels, want)
			}
			if t.Failed() {
				t.Logf("plan:\n%s", out)
			}
		})
	}
}

// ourIndex reports whether name is one of the indexes of the migrations (or
// a partition's copy of one).
func ourIndex(name string) bool {
	for _, suffix := range []string{"machine_metric_time_idx", "_pkey", "bucket_idx", "machines_active_attributes_idx", "series_id_time_idx", "time_brin"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return false
}

// downsampleArgs are the arguments DownsampleRange passes to
// downsampleWindows.
func downsampleArgs(key string, from, to int64, n int) []any {
	nb, span := uint64(n/2), uint64(to-from+1)
	midFrom, midTo, lo, hi, ok := windowPlan(from, to, from, to, nb, span, 10_000)
	if !ok {
		panic("no whole windows")
	}
	return []any{key, "x", ts(midFrom), ts(midTo), from, int64(nb), int64(span), int64(10_000), lo, hi, ts(from), ts(to)}
}

// TestPackedQueryPlans runs EXPLAIN on the packed layout's reads over three
// days of data (two compacted, today in the head) and fails when a query
// scans a partition outside its range, or a table other than series (which
// the series listing walks) without an index.
func TestPackedQueryPlans(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{Layout: LayoutPacked})
	ctx := context.Background()
	day0 := time.UnixMilli(storetest.Base).UTC()
	var batch []telemetry.Sample
	for tm := day0.Add(-48 * time.Hour).UnixMilli(); tm <= testNow.UnixMilli(); tm += 30 * sec {
		for m := range 20 {
			batch = append(batch, telemetry.Sample{Machine: fmt.Sprintf("m%02d", m), Metric: "x", Time: tm, Value: float64(tm%1000 + int64(m))})
		}
		if len(batch) >= 20_000 {
			mustAppend(t, s, batch)
			batch = batch[:0]
		}
	}
	mustAppend(t, s, batch)
	if _, err := s.Compact(ctx, testNow); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE series, sample_head, sample_chunks, agg_window, agg_1m, agg_1h"); err != nil {
		t.Fatal(err)
	}
	id, _, err := s.lookupSeries(ctx, "m07", "x")
	if err != nil {
		t.Fatal(err)
	}
	dayM1 := day0.Add(-24 * time.Hour)
	hourFrom := dayM1.Add(10*time.Hour + 30*time.Second)
	hourTo := hourFrom.Add(time.Hour - time.Millisecond)
	dayTo := dayM1.Add(24*time.Hour - time.Millisecond)
	chunks := partitionName(chunksTable, dayNum(dayM1))
	todayFrom := day0.Add(time.Hour)
	nb, span := uint64(500), uint64(24*hourMs)
	midFrom, midTo, lo, hi, ok := windowPlan(dayM1.UnixMilli(), dayTo.UnixMilli(), dayM1.UnixMilli(), dayTo.UnixMilli(), nb, span, 60_000)
	if !ok {
		t.Fatal("no whole minutes")
	}
	tests := []struct {
		name  string
		sql   string
		args  []any
		want  []string
		seqOK string // a relation the planner may read sequentially (empty)
	}{
		{"select one compacted hour", packedRaw, []any{id, hourFrom, hourTo, chunkStart(hourFrom.UnixMilli())}, []string{chunks}, ""},
		{"select one hour of the head", packedRaw, []any{id, todayFrom, todayFrom.Add(time.Hour), chunkStart(todayFrom.UnixMilli())},
			[]string{partitionName(headTable, dayNum(day0)), partitionName(chunksTable, dayNum(day0))}, partitionName(chunksTable, dayNum(day0))},
		{"aggregate a day by hour from agg_1h", packedAggSQL(tier{agg1hTable, hourMs}, false),
			[]any{id, dayM1, dayTo, dayM1, time.Hour, dayM1, dayTo.Add(time.Millisecond), dayTo.Add(time.Millisecond - time.Hour)},
			[]string{partitionName(agg1hTable, dayNum(dayM1)), chunks}, ""},
		{"aggregate a day by minute from agg_1m", packedAggSQL(tier{agg1mTable, 60_000}, false),
			[]any{id, dayM1, dayTo, dayM1, 5 * time.Minute, dayM1, dayTo.Add(time.Millisecond), dayTo.Add(time.Millisecond - time.Hour)},
			[]string{partitionName(agg1mTable, dayNum(dayM1)), chunks}, ""},
		{"downsample a day from agg_1m", downsamplePackedSQL(agg1mTable, false),
			[]any{id, ts(midFrom), ts(midTo), nil, dayM1.UnixMilli(), int64(nb), int64(span), int64(60_000), lo, hi, dayM1, dayTo, dayM1},
			[]string{partitionName(agg1mTable, dayNum(dayM1)), chunks}, ""},
		{"series of an hour", listSeriesPacked + " ORDER BY 1, 2", []any{hourFrom, hourTo, chunkStart(hourFrom.UnixMilli())},
			[]string{"series", chunks}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, out := explainPlan(t, ctx, s, tt.sql, tt.args...)
			var rels []string
			for _, sc := range plan.scans() {
				if sc.RelationName != "" {
					rels = append(rels, sc.RelationName)
				}
				switch {
				case sc.NodeType == "Index Scan" || sc.NodeType == "Index Only Scan" || sc.NodeType == "Bitmap Index Scan":
					if !ourIndex(sc.IndexName) {
						t.Errorf("%s uses index %s", sc.NodeType, sc.IndexName)
					}
				case sc.NodeType == "Bitmap Heap Scan":
				case sc.NodeType == "Seq Scan" && (sc.RelationName == "series" || sc.RelationName == tt.seqOK):
				default:
					t.Errorf("%s on %s: not an index scan", sc.NodeType, sc.RelationName)
				}
			}
			slices.Sort(rels)
			rels = slices.Compact(rels)
			want := slices.Sorted(slices.Values(tt.want))
			if !slices.Equal(rels, want) {
				t.Errorf("relations scanned = %v, want %v (partition pruning lost?)", rels, want)
			}
			if t.Failed() {
				t.Logf("plan:\n%s", out)
			}
		})
	}
}
