package embedded

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// tsbsFields are the data points of one truck and interval in TSBS's iot
// use case: a readings line of 7 fields and a diagnostics line of 3.
var tsbsFields = []string{
	"readings.latitude", "readings.longitude", "readings.elevation", "readings.velocity",
	"readings.heading", "readings.grade", "readings.fuel_consumption",
	"diagnostics.load_capacity", "diagnostics.fuel_state", "diagnostics.current_load",
}

// tsbsRequest fills batch with the samples of one tsbs_load_influx request
// as the processor commits it: intervals of 10 s from t on, every truck at
// one interval before the next, a truck's 10 fields together; it returns
// the next interval's time.
func tsbsRequest(batch []telemetry.Sample, trucks []string, t int64) int64 {
	i := 0
	for i < len(batch) {
		for k, m := range trucks {
			for f, metric := range tsbsFields {
				if i == len(batch) {
					return t
				}
				// Values with decimals that wander, as TSBS's do.
				v := math.Round((float64(k*10+f)+math.Sin(float64(t/sec)/600+float64(f)))*1000) / 1000
				batch[i] = telemetry.Sample{Machine: m, Metric: metric, Time: t, Value: v}
				i++
			}
		}
		t += 10 * sec
	}
	return t
}

// BenchmarkAppendTSBS appends the TSBS iot load (1 000 trucks × 10 fields,
// 10 s interval) in commits of one request each (10 000 lines, 5 intervals,
// 50 000 samples), as the in-process log gives them to the store: in
// request order ("in-order"), and as 8 loader connections deliver them,
// each window of 8 consecutive requests in a shuffled order ("8-workers":
// most requests arrive after a later one, so their samples are older than
// their series' newest).
func BenchmarkAppendTSBS(b *testing.B) {
	trucks := make([]string, 1000)
	for i := range trucks {
		trucks[i] = fmt.Sprintf("truck_%d", i)
	}
	const perRequest = 50_000
	const span = 5 * 10 * sec // of one request
	// The arrival order within a window of 8 requests.
	shuffled := []int64{3, 0, 6, 1, 7, 2, 5, 4}
	for _, c := range []string{"in-order", "8-workers"} {
		b.Run(c, func(b *testing.B) {
			now := base + 40*24*3600*sec
			s := open(b, b.TempDir(), Options{Now: func() time.Time { return time.UnixMilli(now) }})
			batch := make([]telemetry.Sample, perRequest)
			start := now - 20*3600*sec
			// Warm: every series known, as after the first seconds of a load.
			tsbsRequest(batch, trucks, start-span)
			mustAppend(b, s, batch)
			fresh := make([]bool, perRequest)
			b.ReportAllocs()
			n := int64(0)
			for b.Loop() {
				r := n
				if c == "8-workers" {
					r = n/8*8 + shuffled[n%8]
				}
				n++
				tsbsRequest(batch, trucks, start+r*span)
				if err := s.AppendFresh(context.Background(), batch, fresh); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*perRequest)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
