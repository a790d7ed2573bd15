package bench

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// fleetMeter records what the clients of conflated fleet streams receive
// (all=1&conflate=D): the interval between two fleet messages of a client,
// how fresh the newest value of a message is, and the messages' size and
// content. Fleet messages are few (clients × 1/D per second), so one lock
// serves all clients.
type fleetMeter struct {
	m *meter

	mu        sync.Mutex
	interval  *Histogram
	freshness *Histogram
	sizes     *hdrhistogram.Histogram // bytes
	messages  int64
	machines  int64
	values    int64
}

func newFleetMeter(m *meter) *fleetMeter {
	return &fleetMeter{
		m:         m,
		interval:  NewHistogram(),
		freshness: NewHistogram(),
		sizes:     hdrhistogram.New(1, 1<<30, 3),
	}
}

// record counts one fleet message of size bytes with machines machines and
// values metric values of event times ts (ms), arrived at arrival; gap is
// the time since the client's previous fleet message (0: none).
func (f *fleetMeter) record(arrival time.Time, gap time.Duration, size, machines int, ts []int64) {
	var newest int64
	for _, t := range ts {
		newest = max(newest, t)
	}
	f.m.fleetMessages.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.messages++
	f.machines += int64(machines)
	f.values += int64(len(ts))
	_ = f.sizes.RecordValue(min(int64(size), 1<<30)) // in range by construction
	if gap > 0 {
		f.interval.Record(gap)
	}
	if newest > 0 {
		f.freshness.Record(arrival.Sub(time.UnixMilli(newest)))
	}
}

// result fills the fleet section; samples is what the server acknowledged
// in the measured phase (about), seconds its length.
func (f *fleetMeter) result(clients int, conflate time.Duration, samples, seconds float64) *FleetResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := &FleetResult{
		Clients:    clients,
		ConflateMs: float64(conflate) / float64(time.Millisecond),
		Messages:   f.messages,
		Interval:   f.interval.Summary(),
		Freshness:  f.freshness.Summary(),
	}
	if seconds > 0 {
		r.MessagesPerS = float64(f.messages) / seconds
	}
	if f.messages > 0 {
		n := float64(f.messages)
		r.Bytes = SizeSummary{
			Mean: f.sizes.Mean(),
			P50:  float64(f.sizes.ValueAtQuantile(50)),
			P99:  float64(f.sizes.ValueAtQuantile(99)),
			Max:  float64(f.sizes.Max()),
		}
		r.MachinesPerMessage = float64(f.machines) / n
		r.ValuesPerMessage = float64(f.values) / n
		// Every fleet client sees every sample, conflated: a message of
		// one client stands for this many acknowledged samples.
		r.SamplesPerMessage = samples * float64(clients) / n
	}
	return r
}
