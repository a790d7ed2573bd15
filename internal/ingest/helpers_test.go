package ingest

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/telemetry"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testNow is the server time of every test: 2026-11-30T06:00:00Z.
const testNow = 1796018400000

// msOf returns the Unix milliseconds of an RFC 3339 time.
func msOf(t testing.TB, s string) int64 {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm.UnixMilli()
}

func testOptions() Options {
	o := DefaultOptions()
	o.Now = testNow
	return o
}

// cmpEvents compares events, treating nil and empty tags or metrics alike.
var cmpEvents = cmpopts.EquateEmpty()

func ev(machine string, time int64, metrics ...any) telemetry.Event {
	e := telemetry.Event{Machine: machine, Time: time}
	for i := 0; i < len(metrics); i += 2 {
		e.Metrics = append(e.Metrics, telemetry.Metric{Name: metrics[i].(string), Value: toFloat(metrics[i+1])})
	}
	return e
}

// withStates adds states (name, value pairs) to e.
func withStates(e telemetry.Event, states ...string) telemetry.Event {
	for i := 0; i < len(states); i += 2 {
		e.States = append(e.States, telemetry.State{Name: states[i], Value: states[i+1]})
	}
	return e
}

func toFloat(v any) float64 {
	switch v := v.(type) {
	case int:
		return float64(v)
	case float64:
		return v
	}
	panic(fmt.Sprintf("toFloat(%T)", v))
}

// checkEvent reports why e could not have come out of a decoder run with
// opts, or "" when it could.
func checkEvent(e telemetry.Event, opts Options) string {
	opts = opts.normalize()
	if p := machineIDProblem([]byte(e.Machine), opts.Limits.MaxMachineIDLen); p != "" {
		return fmt.Sprintf("machine %q: %s", e.Machine, p)
	}
	if n := len(e.Metrics) + len(e.States); n == 0 || n > opts.Limits.MaxMetricsPerEvent {
		return fmt.Sprintf("%d metrics and %d states", len(e.Metrics), len(e.States))
	}
	seen := map[string]bool{}
	for _, m := range e.Metrics {
		if p := metricNameProblem([]byte(m.Name), opts.Limits.MaxMetricNameLen); p != "" {
			return fmt.Sprintf("metric %q: %s", m.Name, p)
		}
		if seen[m.Name] {
			return fmt.Sprintf("metric %q twice", m.Name)
		}
		seen[m.Name] = true
		if math.IsNaN(m.Value) || math.IsInf(m.Value, 0) {
			return fmt.Sprintf("metric %q = %v", m.Name, m.Value)
		}
	}
	if cap(e.Metrics) != len(e.Metrics) {
		return "metrics slice has spare capacity another event may share"
	}
	for _, st := range e.States {
		if p := metricNameProblem([]byte(st.Name), opts.Limits.MaxMetricNameLen); p != "" {
			return fmt.Sprintf("state %q: %s", st.Name, p)
		}
		if seen[st.Name] {
			return fmt.Sprintf("state %q twice (or also a metric)", st.Name)
		}
		seen[st.Name] = true
		if p := stateValueProblem([]byte(st.Value)); p != "" {
			return fmt.Sprintf("state %q = %q: %s", st.Name, st.Value, p)
		}
	}
	if cap(e.States) != len(e.States) {
		return "states slice has spare capacity another event may share"
	}
	if opts.MinTime != 0 && e.Time < opts.MinTime || opts.MaxTime != 0 && e.Time > opts.MaxTime {
		return fmt.Sprintf("time %d outside [%d, %d]", e.Time, opts.MinTime, opts.MaxTime)
	}
	if len(e.ID) > MaxEventIDLen || textProblem([]byte(e.ID)) != "" {
		return fmt.Sprintf("id %q", e.ID)
	}
	for k, v := range e.Tags {
		if k == "" || textProblem([]byte(k)) != "" || textProblem([]byte(v)) != "" {
			return fmt.Sprintf("tag %q=%q", k, v)
		}
	}
	return ""
}

// cloneEvents deep-copies events, so later changes to what they alias show.
func cloneEvents(events []telemetry.Event) []telemetry.Event {
	out := make([]telemetry.Event, len(events))
	for i, e := range events {
		c := e
		c.Machine = string([]byte(e.Machine))
		c.ID = string([]byte(e.ID))
		c.Metrics = nil
		for _, m := range e.Metrics {
			c.Metrics = append(c.Metrics, telemetry.Metric{Name: string([]byte(m.Name)), Value: m.Value})
		}
		c.States = nil
		for _, st := range e.States {
			c.States = append(c.States, telemetry.State{Name: string([]byte(st.Name)), Value: string([]byte(st.Value))})
		}
		if e.Tags != nil {
			c.Tags = map[string]string{}
			for k, v := range e.Tags {
				c.Tags[string([]byte(k))] = string([]byte(v))
			}
		}
		out[i] = c
	}
	return out
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(got), string(want)); diff != "" {
		t.Errorf("%s mismatch (-got +want; run with -update if the change is intended):\n%s", path, diff)
	}
}

// unsafeData returns the address of a string's bytes, to tell shared strings.
func unsafeData(s string) *byte { return unsafe.StringData(s) }
