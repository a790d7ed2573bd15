package alerting

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// clock is a manual clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.t) {
		c.t = t
	}
}

func (c *clock) Add(d time.Duration) { c.Set(c.Now().Add(d)) }

// fixture is an Alarms journaling to a temporary file, with one machine
// whose temperature is alarmed above 90.
type fixture struct {
	t      *testing.T
	alarms *twin.Alarms
	clock  *clock
}

func newFixture(t *testing.T, clk *clock) *fixture {
	t.Helper()
	a, err := twin.OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return &fixture{t: t, alarms: a, clock: clk}
}

var high = 90.0

func thresholds(string) map[string]twin.Threshold {
	return map[string]twin.Threshold{"temperature": {High: &high}}
}

// observe feeds machine's temperature at the clock's time.
func (f *fixture) observe(machine string, v float64) []twin.Alarm {
	f.t.Helper()
	out, err := f.alarms.Observe([]telemetry.Sample{{Machine: machine, Metric: "temperature", Time: f.clock.Now().UnixMilli(), Value: v}}, thresholds)
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

func locate(m string) Machine { return Machine{Site: "lyon", Line: "line-" + m} }
