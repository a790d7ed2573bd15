package api

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestIngestAcceptsAnyAgeWithinRetention: every ingest format takes an
// event of any age within --retention (an old one is backfill, which the
// processor routes; ADR 0033) and refuses, naming the item and field, one
// older than the retention or too far in the future.
func TestIngestAcceptsAnyAgeWithinRetention(t *testing.T) {
	const retention = 30 * 24 * time.Hour
	now := time.Now()
	ms := func(d time.Duration) int64 { return now.Add(-d).UnixMilli() }
	ns := func(d time.Duration) int64 { return now.Add(-d).UnixNano() }
	tests := []struct {
		name, path, ct, body string
		status               int
		contains             string
	}{
		{"json, 20 days old", "/api/v1/events", "application/json",
			fmt.Sprintf(`{"machineId":"m","timestamp":%d,"temp":1}`, ms(20*24*time.Hour)), 202, `"accepted":1`},
		{"ndjson, 29 days old", "/api/v1/events", "application/x-ndjson",
			fmt.Sprintf("{\"machineId\":\"m\",\"timestamp\":%d,\"temp\":1}\n{\"machineId\":\"m\",\"timestamp\":%d,\"temp\":2}\n", ms(29*24*time.Hour), ms(time.Second)), 202, `"accepted":2`},
		{"line protocol v1, 20 days old", "/write", "", fmt.Sprintf("readings,name=truck_1,fleet=East velocity=3 %d", ns(20*24*time.Hour)), 204, ""},
		{"line protocol v2, 25 days old", "/api/v2/write?precision=ms", "", fmt.Sprintf("readings,name=truck_1 velocity=3 %d", ms(25*24*time.Hour)), 204, ""},
		{"json, older than the retention", "/api/v1/events", "application/json",
			fmt.Sprintf(`[{"machineId":"m","timestamp":%d,"temp":1},{"machineId":"m","timestamp":%d,"temp":1}]`, ms(time.Minute), ms(31*24*time.Hour)), 400, `"field":"timestamp","reason":"`},
		{"line protocol, older than the retention", "/write", "", fmt.Sprintf("readings,name=truck_1 velocity=3 %d", ns(31*24*time.Hour)), 400, "older than the accepted range"},
		{"json, too far ahead", "/api/v1/events", "application/json",
			fmt.Sprintf(`{"machineId":"m","timestamp":%d,"temp":1}`, ms(-time.Hour)), 400, "in the future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := &fakeLog{real: eventlog.New(1000, nil)}
			a := newRetentionAPI(t, log, retention)
			rec := post(a, tt.path, tt.ct, tt.body)
			if rec.Code != tt.status {
				t.Fatalf("status = %d (%s), want %d", rec.Code, rec.Body, tt.status)
			}
			if !strings.Contains(rec.Body.String(), tt.contains) {
				t.Errorf("body %s does not contain %q", rec.Body, tt.contains)
			}
			if tt.status >= 400 && strings.Contains(tt.name, "older") && !strings.Contains(rec.Body.String(), "older than the accepted range") {
				t.Errorf("body %s does not say the event is too old", rec.Body)
			}
			if tt.status < 300 && len(log.got) != 1 {
				t.Errorf("batches logged = %d, want 1", len(log.got))
			}
		})
	}
}

func newRetentionAPI(t testing.TB, l submitter, retention time.Duration) *API {
	t.Helper()
	reg, live := openTwins(t, time.Minute, time.Now)
	return New(Options{
		MaxBodyBytes: 1 << 20, MaxDecompressedBytes: 4 << 20, MaxLineBytes: 1024,
		Limits:            telemetry.DefaultLimits(),
		MachineTags:       []string{"machineId", "name"},
		Retention:         retention,
		MaxFuture:         time.Minute,
		MaxInflightIngest: 4,
		ReadTimeout:       time.Minute,
	}, Deps{
		Submit: l.Submit, Registry: reg, Live: live,
		Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
		Ready:  func() error { return nil },
		Logger: slog.New(slog.DiscardHandler),
	})
}
