package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/telemetry"
)

// chunkLog records the batches it is given, from any goroutine.
type chunkLog struct {
	mu      sync.Mutex
	batches []int
}

func (c *chunkLog) Submit(_ context.Context, b *telemetry.Batch) (eventlog.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batches = append(c.batches, len(b.Events))
	return eventlog.Result{Accepted: len(b.Events)}, nil
}

// TestIngestChunked: a large body goes to the log in chunks, and its
// answer still counts every event and names bad lines by their number in
// the whole body.
func TestIngestChunked(t *testing.T) {
	l := &chunkLog{}
	a := newTestAPI(t, l)
	var b strings.Builder
	const lines = 20_000
	for i := 1; i <= lines; i++ {
		if i%5000 == 0 {
			b.WriteString("{bad\n")
			continue
		}
		fmt.Fprintf(&b, `{"machineId":"m%d","temp":%d}`+"\n", i%10, i)
	}
	if b.Len() <= streamMinBody {
		t.Fatalf("body of %d bytes is not over streamMinBody", b.Len())
	}
	rec := post(a, "/api/v1/events", "application/x-ndjson", b.String())
	var p problem.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || rec.Code != http.StatusBadRequest {
		t.Fatalf("got %d %s, want 400 partial", rec.Code, rec.Body)
	}
	if *p.Accepted != lines-4 || len(p.Errors) != 4 || *p.Errors[0].Line != 5000 || *p.Errors[3].Line != 20000 {
		t.Errorf("problem = %s; want %d accepted, lines 5000…20000 named", rec.Body, lines-4)
	}
	total := 0
	for _, n := range l.batches {
		if n > 8192 {
			t.Errorf("a chunk of %d events", n)
		}
		total += n
	}
	if len(l.batches) < 2 || total != lines-4 {
		t.Errorf("batches %v: want several, %d events in all", l.batches, lines-4)
	}
}

// TestIngestMemoryBudget: a request that finds no room in the budget
// waits 1s, then gets 503 + Retry-After; one larger than the whole budget
// gets 413.
func TestIngestMemoryBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAPI(t, &chunkLog{})
		a.mem = newMemBudget(1 << 20)
		if err := a.mem.acquire(context.Background(), 1<<20); err != nil {
			t.Fatal(err)
		}
		rec := post(a, "/api/v1/events", "application/json", `{"machineId":"m","temp":1}`)
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
			t.Errorf("budget full: got %d %s (Retry-After %q), want 503 with Retry-After", rec.Code, rec.Body, rec.Header().Get("Retry-After"))
		}
		a.mem.release(1 << 20)
		rec = post(a, "/api/v1/events", "application/json", `{"machineId":"m","temp":1}`)
		if rec.Code != http.StatusAccepted {
			t.Errorf("budget free: got %d %s, want 202", rec.Code, rec.Body)
		}
		if got := a.mem.used.Load(); got != 0 {
			t.Errorf("budget holds %d bytes after the requests, want 0", got)
		}
		big := `[` + strings.Repeat(`{"machineId":"m","temp":1},`, 20_000) + `{"machineId":"m","temp":1}]`
		rec = post(a, "/api/v1/events", "application/json", big)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("body needing more than the budget: got %d %s, want 413", rec.Code, rec.Body)
		}
	})
}

// TestIngestPerClientSlots: a client with all its slots taken gets 429;
// another client is served.
func TestIngestPerClientSlots(t *testing.T) {
	a := newTestAPI(t, &chunkLog{})
	a.clientSlots.max = 2
	for range 2 {
		a.clientSlots.acquire("ip:192.0.2.1") // httptest's client address
	}
	rec := post(a, "/api/v1/events", "application/json", `{"machineId":"m","temp":1}`)
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Errorf("client at its cap: got %d %s, want 429 with Retry-After", rec.Code, rec.Body)
	}
	a.clientSlots.release("ip:192.0.2.1")
	rec = post(a, "/api/v1/events", "application/json", `{"machineId":"m","temp":1}`)
	if rec.Code != http.StatusAccepted {
		t.Errorf("client under its cap: got %d %s, want 202", rec.Code, rec.Body)
	}
}
