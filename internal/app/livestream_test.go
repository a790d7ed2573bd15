package app

import (
	"fmt"
	"testing"

	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/twin"
)

// TestPublishWindowsNoClient: with no stream client to reach, publishing
// a group's windows and medians makes nothing (no copy, no message, no
// encoding): it does not allocate.
func TestPublishWindowsNoClient(t *testing.T) {
	h := hub.New(hub.Options{}, nil, nil)
	var ws []stream.Window
	var us []twin.MedianUpdate
	for m := range 100 {
		for k := range 10 {
			machine, metric := fmt.Sprintf("m-%03d", m), fmt.Sprintf("metric_%d", k)
			ws = append(ws, stream.Window{Machine: machine, Metric: metric, Start: 1764482400000, Size: 10_000, Kind: stream.WindowFinal,
				Agg: stream.Agg{Count: 10, Sum: 712.5, Min: 70, Max: 73}})
			us = append(us, twin.MedianUpdate{Machine: machine, Metric: metric, Time: 1764482409000, Median: 71})
		}
	}
	if got := testing.AllocsPerRun(100, func() {
		publishWindows(h, ws)
		publishMedians(h, us)
	}); got != 0 {
		t.Errorf("allocs per publish with no client = %v, want 0", got)
	}
}
