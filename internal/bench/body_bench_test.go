package bench

import "testing"

// BenchmarkBody measures building one ingest-json request body of 1000
// events of 3 metrics: the client's share of the CPU in an ingest run.
func BenchmarkBody(b *testing.B) {
	metrics := metricList(3)
	names := machineList("bench", 100)
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		var err error
		buf, err = formatJSON.body(buf, 1000, metrics, func(j int) (string, int64, int64) {
			return names[j%len(names)], 1764482400000 + int64(j), int64(j)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}
