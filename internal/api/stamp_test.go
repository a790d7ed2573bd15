package api

import (
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestIngestStampsPerMachine: requests without timestamps that arrive in
// the same millisecond, over JSON, NDJSON and line protocol, and another
// ingest path sharing the Stamper, give every event its own time, in
// arrival order.
func TestIngestStampsPerMachine(t *testing.T) {
	now := time.UnixMilli(1_796_018_400_000)
	reg, live := openTwins(t, time.Minute, time.Now)
	stamper := ingest.NewStamper()
	log := &fakeLog{real: eventlog.New(1000, nil)}
	a := New(Options{
		MaxBodyBytes: 1 << 20, MaxDecompressedBytes: 4 << 20, MaxLineBytes: 1024,
		Limits: telemetry.DefaultLimits(), MachineTags: []string{"host"},
		Retention: time.Hour, MaxFuture: time.Minute, MaxInflightIngest: 4, ReadTimeout: time.Minute,
	}, Deps{
		Submit: log.Submit, Registry: reg, Live: live, Stamper: stamper,
		Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
		Ready: func() error { return nil }, Clock: func() time.Time { return now },
		Logger: slog.New(slog.DiscardHandler),
	})
	posts := []struct{ path, ct, body string }{
		{"/api/v1/events", "application/x-ndjson", "{\"machineId\":\"oven-02\",\"temp\":181.2}\n{\"machineId\":\"oven-02\",\"temp\":181.9}\n"},
		{"/api/v1/events", "application/json", `{"machineId":"oven-02","temp":182.0}`},
		{"/write", "", "oven,host=oven-02 temp=182.5"},
	}
	for _, p := range posts {
		if rec := post(a, p.path, p.ct, p.body); rec.Code/100 != 2 {
			t.Fatalf("POST %s: %d %s", p.path, rec.Code, rec.Body)
		}
	}
	// Another ingest path (MQTT) stamps from the same Stamper.
	if got, _ := stamper.Stamp("oven-02", now.UnixMilli(), 0); got != now.UnixMilli()+4 {
		t.Errorf("next stamp of another path = %d, want %d", got, now.UnixMilli()+4)
	}
	var got []int64
	for _, b := range log.got {
		for _, e := range b.Events {
			got = append(got, e.Time-now.UnixMilli())
		}
	}
	if diff := cmp.Diff(got, []int64{0, 1, 2, 3}); diff != "" {
		t.Errorf("event times after now (-got +want):\n%s", diff)
	}
}
