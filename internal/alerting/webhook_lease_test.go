package alerting

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/twin"
)

// TestWebhookLeaseEndsMidBatch: two replicas share one outbox (FileOutbox stands in for the PostgreSQL
// table: same Claim/lease contract). Replica 1 claims a batch of 32 and
// its receiver is slow: the batch outlives the lease, replica 2 claims the
// same rows, delivers X raised then X cleared; replica 1 then posts X
// raised again, after the clear.
func TestWebhookLeaseEndsMidBatch(t *testing.T) {
	clk := newClock()
	ob, err := OpenFileOutbox(filepath.Join(t.TempDir(), "o.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var log []string
	record := func(who string, r *http.Request) {
		var ev Event
		_ = json.NewDecoder(r.Body).Decode(&ev)
		if ev.Alarm.ID == "X" {
			mu.Lock()
			log = append(log, who+":"+ev.Type)
			mu.Unlock()
		}
	}
	var w2 *Webhook
	first := true
	s1 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record("r1", r)
		if first { // slow receiver: this attempt takes longer than the lease
			first = false
			clk.Add(time.Minute)
			if _, err := w2.Step(context.Background()); err != nil {
				t.Error(err)
			}
		}
	}))
	defer s1.Close()
	s2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { record("r2", r) }))
	defer s2.Close()
	w1, _ := NewWebhook(ob, WebhookOptions{URL: s1.URL, Now: clk.Now, Timeout: 10 * time.Second})
	w2, _ = NewWebhook(ob, WebhookOptions{URL: s2.URL, Now: clk.Now, Timeout: 10 * time.Second})
	now := clk.Now()
	for i := 0; i < 31; i++ {
		w1.Add(twin.AlarmEntry{Op: twin.OpRaise, At: now, Alarm: twin.Alarm{ID: fmt.Sprint("f", i), Machine: "m"}})
	}
	w1.Add(twin.AlarmEntry{Op: twin.OpRaise, At: now, Alarm: twin.Alarm{ID: "X", Machine: "m"}})
	w1.Add(twin.AlarmEntry{Op: twin.OpClear, At: now, Alarm: twin.Alarm{ID: "X", Machine: "m"}})
	if err := w1.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := w1.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("receiver log for alarm X: %v", log)
	if n := len(log); n == 0 || log[n-1] != "r2:alarm.cleared" {
		t.Fatalf("alarm X: last event delivered is %q, after its clear: %v", log[n-1], log)
	}
}
