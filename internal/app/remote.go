package app

import (
	"encoding/json"

	"github.com/twinline/twinline/internal/twin"
)

// remoteMedians is the part of a live "median" message a replica needs to
// show another replica's medians in its twins.
type remoteMedians struct {
	Type string `json:"type"`
	Data struct {
		Metrics map[string]struct {
			Median *float64 `json:"median"` // null: not a finite number
			T      int64    `json:"t"`
		} `json:"metrics"`
	} `json:"data"`
}

// observeRemoteMedians records the medians of a live message that another
// replica computed: /latest here then shows the same median as the replica
// that processes the machine, and as its stream does.
func (a *App) observeRemoteMedians(machine string, msg []byte) {
	var m remoteMedians
	if err := json.Unmarshal(msg, &m); err != nil || m.Type != "median" {
		return
	}
	us := make([]twin.MedianUpdate, 0, len(m.Data.Metrics))
	for metric, x := range m.Data.Metrics {
		if x.Median != nil {
			us = append(us, twin.MedianUpdate{Machine: machine, Metric: metric, Median: *x.Median, Time: x.T})
		}
	}
	a.twins.ApplyMedians(us)
}
