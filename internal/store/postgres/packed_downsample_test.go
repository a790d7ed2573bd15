package postgres

import (
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestPackedDownsampleGo compares, over three compacted days of a 10 s
// series with many tied values (the earliest of equal extremes must win),
// late head rows in compacted hours and today's head, the Go plan of
// DownsampleRange (1 h rollups and the cut hours' chunks), the SQL plan
// (1 min rollups) and store.Downsample over the raw samples, on ranges
// cut anywhere, aligned on hours, partial at both ends and reaching past
// the data.
func TestPackedDownsampleGo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, "", Options{Layout: LayoutPacked})
	day := storetest.Base - 3*24*hourMs
	key := store.SeriesKey{Machine: "m", Metric: "temp"}
	for d := range 3 {
		mustAppend(t, s, storetest.Samples("m", "temp", day+int64(d)*24*hourMs, 10*time.Second, 8640,
			func(i int) float64 { return float64((i * 7919) % 23) }))
	}
	// Today, in the head.
	mustAppend(t, s, storetest.Samples("m", "temp", storetest.Base, 10*time.Second, 720,
		func(i int) float64 { return float64((i * 31) % 29) }))
	if _, err := s.Compact(ctx, testNow); err != nil {
		t.Fatal(err)
	}
	// Late samples in compacted hours stay in the head: new extremes, and
	// ties of the extremes earlier and later than the stored ones.
	mustAppend(t, s, []telemetry.Sample{
		{Machine: "m", Metric: "temp", Time: day + 5*hourMs + 1, Value: -7},
		{Machine: "m", Metric: "temp", Time: day + 30*hourMs + 3, Value: 99},
		{Machine: "m", Metric: "temp", Time: day + 40*hourMs + 5, Value: 0},
		{Machine: "m", Metric: "temp", Time: day + 50*hourMs + 7, Value: 22},
	})
	var head int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM sample_head WHERE time < $1", ts(storetest.Base)).Scan(&head); err != nil || head != 4 {
		t.Fatalf("late head rows: %d, %v; want 4", head, err)
	}
	sqlPlan := openTest(t, "", Options{Layout: LayoutPacked, Schema: s.schema})
	sqlPlan.downsampleSQL = true
	rng := rand.New(rand.NewPCG(3, 4))
	end := storetest.Base + 2*hourMs
	ranges := []struct {
		from, to int64
		n        int
	}{
		{day, end, 1000},
		{day, storetest.Base - 1, 144},
		{day + 1, storetest.Base - 2, 100},
		{day - hourMs, end + hourMs, 7},
		{day + 3*hourMs, day + 9*hourMs - 1, 12}, // buckets of whole hours
		{day + 30*hourMs + 2, day + 30*hourMs + 3, 2},
	}
	for range 40 {
		from := day + rng.Int64N(3*24*hourMs)
		ranges = append(ranges, struct {
			from, to int64
			n        int
		}{from, from + rng.Int64N(end-from), 2 + rng.IntN(1200)})
	}
	for _, r := range ranges {
		want, err := store.Downsample(ctx, s, key, r.from, r.to, r.n)
		if err != nil {
			t.Fatal(err)
		}
		for name, st := range map[string]*Store{"go": s, "sql": sqlPlan} {
			got, err := st.DownsampleRange(ctx, key, r.from, r.to, r.n)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("%s plan: DownsampleRange(%d, %d, %d) (-got +want):\n%s", name, r.from, r.to, r.n, diff)
			}
		}
	}
}

// TestPGArrayBinary walks binary arrays as PostgreSQL sends them, and
// refuses what it cannot walk (the caller then scans through pgx).
func TestPGArrayBinary(t *testing.T) {
	arr := func(ndim, hasNull uint32, elems ...[]byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, ndim)
		b = binary.BigEndian.AppendUint32(b, hasNull)
		b = binary.BigEndian.AppendUint32(b, 23) // int4
		if ndim == 0 {
			return b
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(elems)))
		b = binary.BigEndian.AppendUint32(b, 1)
		for _, e := range elems {
			if e == nil {
				b = binary.BigEndian.AppendUint32(b, 0xffffffff)
				continue
			}
			b = binary.BigEndian.AppendUint32(b, uint32(len(e)))
			b = append(b, e...)
		}
		return b
	}
	i4 := func(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }
	got, ok := pgArrayInt4(arr(1, 0, i4(5), i4(-7), i4(3_599_999)), nil)
	if !ok || !slices.Equal(got, []int32{5, -7, 3_599_999}) {
		t.Errorf("int4 array: %v, %v", got, ok)
	}
	if got, ok := pgArrayInt4(arr(0, 0), nil); !ok || len(got) != 0 {
		t.Errorf("empty array: %v, %v", got, ok)
	}
	for name, b := range map[string][]byte{
		"null":      arr(1, 1, i4(1), nil),
		"2 dims":    arr(2, 0, i4(1)),
		"short":     arr(1, 0, i4(1), i4(2))[:25],
		"elem size": arr(1, 0, []byte{1, 2}),
		"truncated": {0, 0},
	} {
		if _, ok := pgArrayInt4(b, nil); ok {
			t.Errorf("%s: walked", name)
		}
	}
	f8 := binary.BigEndian.AppendUint64(nil, math.Float64bits(-2.5))
	if got, ok := pgArrayFloat8(arr(1, 0, f8), nil); !ok || !slices.Equal(got, []float64{-2.5}) {
		t.Errorf("float8 array: %v, %v", got, ok)
	}
}
