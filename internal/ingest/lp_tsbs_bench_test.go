package ingest

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/influxdata/line-protocol/v2/lineprotocol"
)

// tsbsIoTBody is n pairs of TSBS iot lines (readings, 7 fields;
// diagnostics, 3 fields; 8 tags) over trucks trucks at 10 s.
func tsbsIoTBody(n, trucks int) []byte {
	fleets := []string{"East", "West", "North", "South"}
	drivers := []string{"Albert", "Andy", "Seth", "Trish", "Derek", "Rodney"}
	var b []byte
	for p := range n {
		k := p % trucks
		ts := int64(1796018400000+int64(p/trucks)*10_000) * 1e6
		tags := fmt.Sprintf(",name=truck_%d,fleet=%s,driver=%s,model=H-2,device_version=v2.3,load_capacity=1500,fuel_capacity=150,nominal_fuel_consumption=12",
			k, fleets[k%4], drivers[k%6])
		b = append(b, "readings"+tags+" "...)
		for f, name := range []string{"latitude", "longitude", "elevation", "velocity", "heading", "grade", "fuel_consumption"} {
			if f > 0 {
				b = append(b, ',')
			}
			b = append(b, name+"="...)
			b = strconv.AppendFloat(b, float64((p*7+f*13)%10_000)/7, 'f', 5, 64)
		}
		b = append(b, ' ')
		b = strconv.AppendInt(b, ts, 10)
		b = append(b, "\ndiagnostics"+tags+" "...)
		for f, name := range []string{"fuel_state", "current_load", "status"} {
			if f > 0 {
				b = append(b, ',')
			}
			b = append(b, name+"="...)
			b = strconv.AppendFloat(b, float64((p*7+f*13)%10_000)/7, 'f', 5, 64)
		}
		b = append(b, ' ')
		b = strconv.AppendInt(b, ts, 10)
		b = append(b, '\n')
	}
	return b
}

// BenchmarkDecodeLineProtocolTSBS decodes a tsbs_load_influx batch (10 000
// lines of TSBS iot over 1 000 trucks), with and without tags kept as
// attributes; points are data points (fields).
func BenchmarkDecodeLineProtocolTSBS(b *testing.B) {
	body := tsbsIoTBody(5000, 1000)
	for _, tags := range []bool{false, true} {
		b.Run(fmt.Sprintf("tags=%v", tags), func(b *testing.B) {
			opts := DefaultOptions()
			opts.Now = 1796018400000
			if tags {
				opts.Tags = NewTagCache()
				_, _, st, _ := DecodeLineProtocolStats(body, lineprotocol.Nanosecond, opts, nil)
				opts.Tags.Remember(st.Tags)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			cpu0 := processCPUTime()
			for b.Loop() {
				events, rejects, _, err := DecodeLineProtocolStats(body, lineprotocol.Nanosecond, opts, nil)
				if err != nil || len(rejects) > 0 || len(events) != 10_000 {
					b.Fatalf("%d events, %v, %v", len(events), rejects, err)
				}
			}
			b.ReportMetric(float64(b.N)*50_000/b.Elapsed().Seconds(), "points/s")
			// CPU time, unlike wall time, leaves out what other processes
			// of a busy machine ran (GC workers of this one count).
			if cpu := processCPUTime() - cpu0; cpu > 0 {
				b.ReportMetric(float64(b.N)*50_000/cpu.Seconds(), "points/cpu-s")
			}
		})
	}
}
