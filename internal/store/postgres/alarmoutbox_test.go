package postgres

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/alerting"
)

// outboxMsgs returns changes of alarms 1..alarms, n each, interleaved.
func outboxMsgs(alarms, n int, at time.Time) []alerting.Message {
	var out []alerting.Message
	for i := range n {
		for a := 1; a <= alarms; a++ {
			id := "alarm-" + strconv.Itoa(a) + "-" + strconv.Itoa(i)
			out = append(out, alerting.Message{ID: id, Alarm: strconv.Itoa(a), Body: `{"id":"` + id + `"}`, Created: at, NextAt: at})
		}
	}
	return out
}

// Concurrent claimers (replicas) never get one row twice, and only the
// oldest undelivered row of an alarm is claimable.
func TestAlarmOutboxClaims(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ctx := context.Background()
	replicas := []*AlarmOutbox{NewAlarmOutbox(s), NewAlarmOutbox(s)}
	msgs := outboxMsgs(20, 3, testNow)
	if err := replicas[0].Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	// Enqueuing again (another replica, a retry) adds nothing.
	if err := replicas[1].Enqueue(ctx, msgs[:5]); err != nil {
		t.Fatal(err)
	}
	if st, err := replicas[0].Stats(ctx); err != nil || st.Depth != 60 || !st.Oldest.Equal(testNow) || !st.NextDue.Equal(testNow) {
		t.Fatalf("stats %+v, %v", st, err)
	}
	var (
		mu     sync.Mutex
		claims = map[string]int{}
		wg     sync.WaitGroup
	)
	for i := range 8 {
		wg.Go(func() {
			got, err := replicas[i%2].Claim(ctx, testNow, time.Minute, 4)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, m := range got {
				claims[m.ID]++
			}
		})
	}
	wg.Wait()
	if len(claims) != 20 {
		t.Errorf("%d rows claimed, want the 20 heads: %v", len(claims), claims)
	}
	for id, n := range claims {
		if n != 1 || id[len(id)-2:] != "-0" {
			t.Errorf("%s claimed %d times", id, n)
		}
	}
	// Leased: nobody else gets them, nor the rows behind them, until the
	// lease ends.
	if got, _ := replicas[1].Claim(ctx, testNow.Add(30*time.Second), time.Minute, 100); len(got) != 0 {
		t.Errorf("claimed while leased: %v", got)
	}
	if got, _ := replicas[1].Claim(ctx, testNow.Add(2*time.Minute), time.Minute, 100); len(got) != 20 {
		t.Errorf("%d claimed after the leases ended, want 20", len(got))
	}
}

// Enqueuing again what was partly delivered (a retried Sync whose first
// transaction committed after all) neither sends the delivered change
// again nor leaves the next one waiting.
func TestAlarmOutboxEnqueueAgain(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ctx := context.Background()
	ob := NewAlarmOutbox(s)
	msgs := outboxMsgs(1, 3, testNow)
	if err := ob.Enqueue(ctx, msgs[:1]); err != nil {
		t.Fatal(err)
	}
	got, err := ob.Claim(ctx, testNow, time.Minute, 10)
	if err != nil || len(got) != 1 || got[0].ID != "alarm-1-0" {
		t.Fatalf("claimed %v, %v", got, err)
	}
	if err := ob.Settle(ctx, got[0], alerting.Outcome{State: alerting.StateDelivered, At: testNow}); err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"alarm-1-1", "alarm-1-2"} {
		got, err := ob.Claim(ctx, testNow, time.Minute, 10)
		if err != nil || len(got) != 1 || got[0].ID != want {
			t.Fatalf("claimed %v (%v), want %s alone", got, err, want)
		}
		if err := ob.Settle(ctx, got[0], alerting.Outcome{State: alerting.StateDelivered, At: testNow}); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := ob.Stats(ctx); st.Depth != 0 {
		t.Errorf("depth %d", st.Depth)
	}
}

func TestAlarmOutboxEraseBy(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ctx := context.Background()
	ob := NewAlarmOutbox(s)
	body := func(by string) string {
		return `{"id":"x","alarm":{"id":"1","acknowledged":true,"acknowledgedBy":"` + by + `"}}`
	}
	msgs := []alerting.Message{
		{ID: "a", Alarm: "1", Body: body("ana"), Created: testNow, NextAt: testNow},
		{ID: "b", Alarm: "2", Body: body("bo"), Created: testNow, NextAt: testNow},
	}
	if err := ob.Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	if n, err := ob.EraseBy(ctx, "ana", "erased-1"); err != nil || n != 1 {
		t.Fatalf("EraseBy: %d, %v", n, err)
	}
	got, err := ob.Claim(ctx, testNow, time.Minute, 10)
	if err != nil || len(got) != 2 {
		t.Fatal(got, err)
	}
	for _, m := range got {
		var ev struct {
			Alarm struct{ AcknowledgedBy string }
		}
		if err := json.Unmarshal([]byte(m.Body), &ev); err != nil {
			t.Fatal(err)
		}
		if want := map[string]string{"a": "erased-1", "b": "bo"}[m.ID]; ev.Alarm.AcknowledgedBy != want {
			t.Errorf("%s acknowledged by %q, want %q", m.ID, ev.Alarm.AcknowledgedBy, want)
		}
	}
}

// Two replicas deliver from the shared outbox through a receiver down
// then up: every change arrives once, in order per alarm; a reopened
// store finds what is pending; the states follow.
func TestAlarmOutboxWebhookReplicas(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	s := openTest(t, "", Options{Schema: schema})
	ctx := context.Background()
	var (
		mu     sync.Mutex
		status = http.StatusServiceUnavailable
		got    []string
		now    = testNow
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		var ev struct{ ID string }
		json.Unmarshal(body, &ev)
		if ev.ID != r.Header.Get(alerting.HeaderDelivery) {
			t.Errorf("body %s, delivery header %s", body, r.Header.Get(alerting.HeaderDelivery))
		}
		got = append(got, ev.ID)
	}))
	defer srv.Close()
	newHook := func(ob alerting.Outbox) *alerting.Webhook {
		w, err := alerting.NewWebhook(ob, alerting.WebhookOptions{URL: srv.URL, Secret: []byte("k"), Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	msgs := outboxMsgs(5, 3, testNow)
	if err := NewAlarmOutbox(s).Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	hooks := []*alerting.Webhook{newHook(NewAlarmOutbox(s)), newHook(NewAlarmOutbox(s))}
	step := func(h *alerting.Webhook) time.Time {
		next, err := h.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return next
	}
	for range 4 {
		for _, h := range hooks {
			if next := step(h); next.After(clock()) {
				mu.Lock()
				now = next
				mu.Unlock()
			}
		}
	}
	states, err := NewAlarmOutbox(s).States(ctx, []string{"1", "9"})
	if err != nil || states["1"].State != alerting.StateRetrying || states["1"].Attempts < 2 || states["1"].LastError == "" {
		t.Errorf("states while down: %+v, %v", states, err)
	}
	if _, ok := states["9"]; ok {
		t.Error("a state for an alarm without deliveries")
	}
	// A restart: the store reopened finds every change pending.
	s.Close()
	s = openTest(t, "", Options{Schema: schema})
	if st, err := NewAlarmOutbox(s).Stats(ctx); err != nil || st.Depth != len(msgs) {
		t.Fatalf("after reopening: %+v, %v", st, err)
	}
	hooks = []*alerting.Webhook{newHook(NewAlarmOutbox(s)), newHook(NewAlarmOutbox(s))}
	mu.Lock()
	status, now = 0, now.Add(time.Hour)
	mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range hooks {
		wg.Go(func() {
			for range 10 {
				if _, err := h.Step(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	perAlarm := map[string][]string{}
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
		a := id[len("alarm-") : len(id)-2]
		perAlarm[a] = append(perAlarm[a], id)
	}
	for _, m := range msgs {
		if seen[m.ID] != 1 {
			t.Errorf("%s delivered %d times", m.ID, seen[m.ID])
		}
	}
	for a, ids := range perAlarm {
		want := []string{"alarm-" + a + "-0", "alarm-" + a + "-1", "alarm-" + a + "-2"}
		if diff := cmp.Diff(ids, want); diff != "" {
			t.Errorf("alarm %s out of order (-got +want):\n%s", a, diff)
		}
	}
	states, _ = NewAlarmOutbox(s).States(ctx, []string{"1"})
	if st := states["1"]; st.State != alerting.StateDelivered || st.DeliveredAt == nil || st.LastError != "" {
		t.Errorf("state after delivery: %+v", st)
	}
	if st, _ := NewAlarmOutbox(s).Stats(ctx); st.Depth != 0 || !st.NextDue.IsZero() {
		t.Errorf("stats after delivery: %+v", st)
	}
}

// BenchmarkAlarmOutboxChange is the PostgreSQL outbox's cost of one alarm
// change: enqueued, claimed (SKIP LOCKED), settled delivered, with a
// backlog of other alarms' changes waiting behind a lease (a receiver
// outage): the cost should not grow with it.
func BenchmarkAlarmOutboxChange(b *testing.B) {
	for _, backlog := range []int{1000, 20000} {
		b.Run("backlog="+strconv.Itoa(backlog), func(b *testing.B) { benchmarkAlarmOutboxChange(b, backlog) })
	}
}

func benchmarkAlarmOutboxChange(b *testing.B, backlog int) {
	s := openTest(b, "", Options{})
	ob := NewAlarmOutbox(s)
	ctx := context.Background()
	if err := ob.Enqueue(ctx, outboxMsgs(backlog, 1, testNow)); err != nil {
		b.Fatal(err)
	}
	if _, err := ob.Claim(ctx, testNow, time.Hour, backlog); err != nil { // leased away
		b.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE "+ob.table); err != nil { // as autovacuum would
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		i++
		id := "b" + strconv.Itoa(i)
		if err := ob.Enqueue(ctx, []alerting.Message{{ID: "alarm-" + id, Alarm: id, Body: `{}`, Created: testNow, NextAt: testNow}}); err != nil {
			b.Fatal(err)
		}
		ms, err := ob.Claim(ctx, testNow, time.Minute, 1)
		if err != nil || len(ms) != 1 {
			b.Fatal(ms, err)
		}
		if err := ob.Settle(ctx, ms[0], alerting.Outcome{State: alerting.StateDelivered, At: testNow}); err != nil {
			b.Fatal(err)
		}
	}
}
