package bench

import (
	"testing"

	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/twinline/twinline/internal/ingest"
)

// TestTSBSBody: the TSBS iot shape decodes as twinline reads it — every
// line accepted, readings and diagnostics in turn with 7 and 3 fields,
// the truck's 7 descriptive tags, 10 s between a truck's events.
func TestTSBSBody(t *testing.T) {
	names := machineList("truck", 3)
	tags := make([]string, len(names))
	for i, n := range names {
		tags[i] = tsbsTags(n, i)
	}
	const base = 1796018400000
	var next [3]int64
	body := tsbsBody(nil, 12, tags, func(j int) (int, int64, int64) {
		k := j % 3
		ts := base + next[k]*tsbsInterval
		next[k]++
		return k, ts, int64(j)
	})
	opts := ingest.DefaultOptions()
	opts.Tags = ingest.NewTagCache()
	events, rejects, st, err := ingest.DecodeLineProtocolStats(body, lineprotocol.Nanosecond, opts, nil)
	if err != nil || len(rejects) > 0 {
		t.Fatalf("decoding: %v %v\n%s", err, rejects, body)
	}
	if len(events) != 12 {
		t.Fatalf("%d events, want 12", len(events))
	}
	fields := 0
	for j, ev := range events {
		want := 7
		if j%2 == 1 {
			want = 3
		}
		if len(ev.Metrics) != want {
			t.Errorf("line %d: %d fields, want %d", j+1, len(ev.Metrics), want)
		}
		fields += len(ev.Metrics)
		if ev.Machine != names[j/2%3] {
			t.Errorf("line %d: machine %s, want %s", j+1, ev.Machine, names[j/2%3])
		}
		if wantTS := base + int64(j/6)*tsbsInterval; ev.Time != wantTS {
			t.Errorf("line %d: time %d, want %d", j+1, ev.Time, wantTS)
		}
	}
	if fields != 12*tsbsFieldsPerLine {
		t.Errorf("%d fields, want %d", fields, 12*tsbsFieldsPerLine)
	}
	if len(st.Tags) != 3 || len(st.Tags[0].Tags) != 7 {
		t.Errorf("tags %+v, want 7 per truck", st.Tags)
	}
}
