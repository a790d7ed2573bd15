package ingest

import (
	"bytes"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/twinline/twinline/internal/telemetry"
)

const benchEvents = 1000

// benchJSONEvents returns n small events from 50 machines, 3 metrics each,
// as JSON objects separated by sep.
func benchJSONEvents(n int, sep string) []byte {
	var b bytes.Buffer
	for i := range n {
		if i > 0 {
			b.WriteString(sep)
		}
		fmt.Fprintf(&b, `{"machineId":"press-%02d","timestamp":"2026-11-30T06:%02d:%02d.%03dZ","temp":%d.%d,"vib":0.0%d,"rpm":%d}`,
			i%50, i/60%60, i%60, i%1000, 60+i%20, i%10, i%97, 1400+i%100)
	}
	return b.Bytes()
}

func benchDecode(b *testing.B, body []byte, unit string, perOp int, decode func([]telemetry.Event) ([]telemetry.Event, []Reject, error)) {
	b.Helper()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	var dst []telemetry.Event
	cpu0 := processCPUTime()
	for b.Loop() {
		events, rejects, err := decode(dst[:0])
		if err != nil || len(rejects) != 0 || len(events) != benchEvents {
			b.Fatalf("decoded %d events, rejects %v, err %v", len(events), rejects, err)
		}
		dst = events
	}
	cpu := processCPUTime() - cpu0
	b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), unit)
	// Per CPU second (GC included): steadier than wall time on a shared
	// machine.
	if cpu > 0 {
		b.ReportMetric(float64(b.N*perOp)/cpu.Seconds(), unit[:len(unit)-2]+"/cpu-s")
	}
}

func BenchmarkDecodeJSONArray(b *testing.B) {
	body := append(append([]byte("["), benchJSONEvents(benchEvents, ",")...), ']')
	opts := DefaultOptions()
	benchDecode(b, body, "events/s", benchEvents, func(dst []telemetry.Event) ([]telemetry.Event, []Reject, error) {
		return DecodeJSON(body, opts, dst)
	})
}

func BenchmarkDecodeNDJSON(b *testing.B) {
	body := benchJSONEvents(benchEvents, "\n")
	opts := DefaultOptions()
	benchDecode(b, body, "events/s", benchEvents, func(dst []telemetry.Event) ([]telemetry.Event, []Reject, error) {
		return DecodeNDJSON(body, opts, dst)
	})
}

// BenchmarkDecodeNDJSONStamped is BenchmarkDecodeNDJSON without the
// timestamps: every event takes a server stamp from a shared Stamper (a
// lock and a map update each), the cost of the stamping rule.
func BenchmarkDecodeNDJSONStamped(b *testing.B) {
	body := regexp.MustCompile(`"timestamp":"[^"]*",`).ReplaceAll(benchJSONEvents(benchEvents, "\n"), nil)
	opts := DefaultOptions()
	opts.Stamper = NewStamper()
	benchDecode(b, body, "events/s", benchEvents, func(dst []telemetry.Event) ([]telemetry.Event, []Reject, error) {
		opts.Now = time.Now().UnixMilli()
		return DecodeNDJSON(body, opts, dst)
	})
}

// benchLineProtocol returns benchEvents lines from 50 machines, 2 fields
// each, as Telegraf writes them.
func benchLineProtocol() []byte {
	var buf bytes.Buffer
	for i := range benchEvents {
		fmt.Fprintf(&buf, "press,machine_id=press-%02d,site=plant-1 temp=%d.%d,vib=0.0%d %d\n",
			i%50, 60+i%20, i%10, i%97, 1796018400000000000+int64(i)*1e6)
	}
	return buf.Bytes()
}

func BenchmarkDecodeLineProtocol(b *testing.B) {
	body := benchLineProtocol()
	opts := DefaultOptions()
	benchDecode(b, body, "points/s", 2*benchEvents, func(dst []telemetry.Event) ([]telemetry.Event, []Reject, error) {
		return DecodeLineProtocol(body, lineprotocol.Nanosecond, opts, dst)
	})
}

// BenchmarkLineProtocolLibrary measures the lineprotocol decoder alone on
// the body of BenchmarkDecodeLineProtocol: the ceiling of that benchmark.
func BenchmarkLineProtocolLibrary(b *testing.B) {
	body := benchLineProtocol()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	cpu0 := processCPUTime()
	for b.Loop() {
		n := 0
		for dec := lineprotocol.NewDecoderWithBytes(body); dec.Next(); {
			dec.Measurement()
			for k, _, _ := dec.NextTag(); k != nil; k, _, _ = dec.NextTag() {
			}
			for k, _, _ := dec.NextField(); k != nil; k, _, _ = dec.NextField() {
				n++
			}
			dec.TimeBytes()
		}
		if n != 2*benchEvents {
			b.Fatalf("decoded %d fields", n)
		}
	}
	b.ReportMetric(float64(b.N*2*benchEvents)/b.Elapsed().Seconds(), "points/s")
	if cpu := processCPUTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(b.N*2*benchEvents)/cpu.Seconds(), "points/cpu-s")
	}
}
