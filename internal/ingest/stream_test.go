package ingest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/twinline/twinline/internal/telemetry"
)

type format struct {
	name   string
	decode func(body []byte, opts Options) ([]telemetry.Event, []Reject, error)
}

var formats = []format{
	{"json", func(b []byte, o Options) ([]telemetry.Event, []Reject, error) { return DecodeJSON(b, o, nil) }},
	{"ndjson", func(b []byte, o Options) ([]telemetry.Event, []Reject, error) { return DecodeNDJSON(b, o, nil) }},
	{"lineprotocol", func(b []byte, o Options) ([]telemetry.Event, []Reject, error) {
		return DecodeLineProtocol(b, lineprotocol.Nanosecond, o, nil)
	}},
}

// streamed decodes body through a Sink of chunk events and returns the
// flushed events, with a copy of each chunk's slice header to check the
// chunk sizes.
func streamed(f format, body []byte, opts Options, chunk int) (events []telemetry.Event, chunks []int, rejects []Reject, sink *Sink, err error) {
	sink = &Sink{Chunk: chunk, Flush: func(ev []telemetry.Event) error {
		events = append(events, ev...)
		chunks = append(chunks, len(ev))
		return nil
	}}
	opts.Sink = sink
	got, rejects, err := f.decode(body, opts)
	if len(got) != 0 {
		err = errors.Join(err, fmt.Errorf("returned %d events besides the sink", len(got)))
	}
	return events, chunks, rejects, sink, err
}

// checkStreamed checks that decoding body through a Sink gives the events
// and rejects of a plain decode, in chunks of at most chunk events.
func checkStreamed(t *testing.T, f format, body []byte, opts Options, chunk int) {
	t.Helper()
	want, wantRejects, wantErr := f.decode(body, opts)
	want = cloneEvents(want)
	got, chunks, rejects, sink, err := streamed(f, body, opts, chunk)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("%s chunk %d: err = %v, want %v", f.name, chunk, err, wantErr)
	}
	if wantErr != nil {
		if len(got) != 0 {
			t.Fatalf("%s chunk %d: flushed %d events from a body with a syntax error", f.name, chunk, len(got))
		}
		return
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateEmpty(), cmpopts.EquateNaNs()); diff != "" {
		t.Fatalf("%s chunk %d: events differ (-plain +streamed):\n%s", f.name, chunk, diff)
	}
	if diff := cmp.Diff(wantRejects, rejects, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("%s chunk %d: rejects differ (-plain +streamed):\n%s", f.name, chunk, diff)
	}
	if sink.Flushed != len(want) || sink.Rejected != len(wantRejects) {
		t.Fatalf("%s chunk %d: Flushed %d, Rejected %d; want %d, %d", f.name, chunk, sink.Flushed, sink.Rejected, len(want), len(wantRejects))
	}
	for i, n := range chunks {
		if n > chunk || n == 0 {
			t.Fatalf("%s chunk %d: chunk %d holds %d events", f.name, chunk, i, n)
		}
	}
}

func FuzzStream(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add(uint8(0), []byte(s))
		f.Add(uint8(1), []byte(s))
	}
	for _, s := range lpSeeds {
		f.Add(uint8(2), []byte(s))
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		fm := formats[int(which)%len(formats)]
		for _, chunk := range []int{1, 2, 7} {
			checkStreamed(t, fm, body, fuzzOptions(), chunk)
		}
	})
}

func TestStreamLarge(t *testing.T) {
	var lp bytes.Buffer
	for i := range 1000 {
		fmt.Fprintf(&lp, "m,host=h%02d x=%d,y=2 %d\n", i%7, i, 1796018400000000000+int64(i)*1e6)
		if i == 700 {
			lp.WriteString("m\\ escaped,host=h x=1\n") // forces the slow path after a flush
		}
	}
	tests := []struct {
		name string
		f    format
		body []byte
	}{
		{"json array", formats[0], append(append([]byte("[\n"), benchJSONEvents(1000, " ,\r\n")...), ']')},
		{"json array with rejects", formats[0], []byte(`[{"machineId":"a","x":1},{"machineId":"a/b","x":1}, 3 ,{"machineId":"a","x":"s"},{"machineId":"a","y":2,"s":"[]{}\",\\"}]`)},
		{"json array, invalid at the end", formats[0], append(append([]byte("["), benchJSONEvents(100, ",")...), ",}]"...)},
		{"json array, malformed number", formats[0], append(append([]byte("["), benchJSONEvents(100, ",")...), `,{"machineId":"a","x":1-2}]`...)},
		{"ndjson", formats[1], benchJSONEvents(1000, "\n{bad\n")},
		{"line protocol", formats[2], lp.Bytes()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions()
			opts.MinTime, opts.MaxTime = 0, 0
			for _, chunk := range []int{1, 3, 64, 5000} {
				checkStreamed(t, tt.f, tt.body, opts, chunk)
			}
		})
	}
}

func TestStreamStopsOnFlushError(t *testing.T) {
	errStop := errors.New("stop")
	body := append(append([]byte("["), benchJSONEvents(100, ",")...), ']')
	calls := 0
	sink := &Sink{Chunk: 10, Flush: func([]telemetry.Event) error { calls++; return errStop }}
	opts := testOptions()
	opts.MinTime, opts.MaxTime = 0, 0
	opts.Sink = sink
	_, _, err := DecodeJSON(body, opts, nil)
	if !errors.Is(err, errStop) || calls != 1 {
		t.Fatalf("got err %v after %d flushes, want errStop after 1", err, calls)
	}
}

func TestStreamMaxRejects(t *testing.T) {
	body := bytes.Repeat([]byte("{bad\n"), 50)
	opts := testOptions()
	opts.Sink = &Sink{MaxRejects: 5, Flush: func([]telemetry.Event) error { return nil }}
	_, rejects, err := DecodeNDJSON(body, opts, nil)
	if err != nil || len(rejects) != 5 || opts.Sink.Rejected != 50 || rejects[4].Index != 5 {
		t.Fatalf("got %d rejects (Rejected %d, err %v), want the first 5 of 50", len(rejects), opts.Sink.Rejected, err)
	}
}

// largeJSONArray returns a JSON array of n one-metric events from 100
// machines, about 62 bytes each: the body of issue 13 for n = 400 000.
func largeJSONArray(n int) []byte {
	var b bytes.Buffer
	b.Grow(n * 64)
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"machineId":"press-%02d","timestamp":%d,"temp":%d.%d}`, i%100, 1796018400000+int64(i), 60+i%20, i%10)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// BenchmarkDecodeJSONArrayLarge decodes the 25 MB body of issue 13 whole
// and through a Sink: compare B/op.
func BenchmarkDecodeJSONArrayLarge(b *testing.B) {
	body := largeJSONArray(400_000)
	for _, streaming := range []bool{false, true} {
		b.Run(fmt.Sprintf("sink=%t", streaming), func(b *testing.B) {
			opts := DefaultOptions()
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				n := 0
				if streaming {
					opts.Sink = &Sink{Flush: func(ev []telemetry.Event) error { n += len(ev); return nil }}
				}
				events, rejects, err := DecodeJSON(body, opts, nil)
				n += len(events)
				if err != nil || len(rejects) != 0 || n != 400_000 {
					b.Fatalf("decoded %d events, rejects %d, err %v", n, len(rejects), err)
				}
			}
		})
	}
}

// BenchmarkDecodeJSONArraySink is BenchmarkDecodeJSONArray through a Sink,
// as the API decodes.
func BenchmarkDecodeJSONArraySink(b *testing.B) {
	body := append(append([]byte("["), benchJSONEvents(benchEvents, ",")...), ']')
	opts := DefaultOptions()
	var got []telemetry.Event
	opts.Sink = &Sink{Flush: func(ev []telemetry.Event) error { got = ev; return nil }}
	benchDecode(b, body, "events/s", benchEvents, func(dst []telemetry.Event) ([]telemetry.Event, []Reject, error) {
		_, rejects, err := DecodeJSON(body, opts, dst)
		return got, rejects, err
	})
}
