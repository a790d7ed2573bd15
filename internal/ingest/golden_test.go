package ingest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/twinline/twinline/internal/telemetry"
)

// TestGolden decodes the mixed batches in testdata/ and compares what is
// kept and what is rejected with the .golden files (-update rewrites them).
func TestGolden(t *testing.T) {
	tests := []struct {
		file   string
		decode func([]byte, Options) ([]telemetry.Event, []Reject, Stats, error)
	}{
		{"mixed.json", func(b []byte, o Options) ([]telemetry.Event, []Reject, Stats, error) {
			e, r, err := DecodeJSON(b, o, nil)
			return e, r, Stats{}, err
		}},
		{"mixed.ndjson", func(b []byte, o Options) ([]telemetry.Event, []Reject, Stats, error) {
			e, r, err := DecodeNDJSON(b, o, nil)
			return e, r, Stats{}, err
		}},
		{"telegraf.lp", func(b []byte, o Options) ([]telemetry.Event, []Reject, Stats, error) {
			return DecodeLineProtocolStats(b, lineprotocol.Nanosecond, o, nil)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			opts := testOptions()
			opts.MinTime, opts.MaxTime = testNow-3600_000, testNow+600_000
			events, rejects, stats, err := tt.decode(body, opts)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.file+".golden", render(events, rejects, stats))
		})
	}
}

// render writes decoder output one item a line, for golden files.
func render(events []telemetry.Event, rejects []Reject, stats Stats) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%d events, %d rejects, {IgnoredStringFields:%d}\n", len(events), len(rejects), stats.IgnoredStringFields)
	for _, e := range events {
		fmt.Fprintf(&b, "event %s %s", e.Machine, time.UnixMilli(e.Time).UTC().Format(time.RFC3339Nano))
		if e.ID != "" {
			fmt.Fprintf(&b, " id=%q", e.ID)
		}
		if e.HasSeq {
			fmt.Fprintf(&b, " seq=%d", e.Seq)
		}
		for _, m := range e.Metrics {
			fmt.Fprintf(&b, " %s=%v", m.Name, m.Value)
		}
		for _, st := range e.States {
			fmt.Fprintf(&b, " state:%s=%q", st.Name, st.Value)
		}
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range e.Tags {
				if !yield(k) {
					return
				}
			}
		}) {
			fmt.Fprintf(&b, " tag:%s=%q", k, e.Tags[k])
		}
		b.WriteString("\n")
	}
	for _, r := range rejects {
		fmt.Fprintf(&b, "reject %d %q: %s\n", r.Index, r.Field, r.Reason)
	}
	return []byte(b.String())
}
