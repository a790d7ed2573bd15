package alerting

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// handlerTransport serves requests with a handler in the caller's
// goroutine: no network, so a synctest bubble sees it blocking.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

// Run posts a change at once, every active alarm again each resend
// interval, and retries a failed post with backoff — on the fake clock.
func TestAlertmanagerRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu     sync.Mutex
			posts  []time.Time
			status = http.StatusOK
		)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			mu.Lock()
			defer mu.Unlock()
			posts = append(posts, time.Now())
			w.WriteHeader(status)
		})
		a, err := twin.OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		n := NewAlertmanager(AlertmanagerOptions{URLs: []string{"http://am"}, Client: &http.Client{Transport: handlerTransport{h}},
			Active: func() []twin.Alarm { return a.List(false, "") }})
		a.OnChange(func(al twin.Alarm, _ bool) { n.Notify(al) })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- n.Run(ctx) }()
		count := func() int { mu.Lock(); defer mu.Unlock(); return len(posts) }

		synctest.Wait()
		if got := count(); got != 0 {
			t.Fatalf("%d posts without alarms", got)
		}
		start := time.Now()
		high := 90.0
		raised, _ := a.Observe([]telemetry.Sample{{Machine: "m", Metric: "temp", Time: start.UnixMilli(), Value: 95}}, func(string) map[string]twin.Threshold { return map[string]twin.Threshold{"temp": {High: &high}} })
		if len(raised) != 1 {
			t.Fatalf("raised %v", raised)
		}
		synctest.Wait()
		if got := count(); got != 1 {
			t.Fatalf("%d posts after a raise, want 1 at once", got)
		}
		time.Sleep(time.Minute) // the fake clock: the resend
		synctest.Wait()
		if got := count(); got != 2 {
			t.Fatalf("%d posts after a minute, want 2", got)
		}
		mu.Lock()
		status = http.StatusServiceUnavailable
		mu.Unlock()
		time.Sleep(time.Minute)
		synctest.Wait()
		failedAt := count()
		time.Sleep(10 * time.Second) // backoff 1 s, 2 s, 4 s: three more tries
		synctest.Wait()
		if got := count() - failedAt; got < 2 || got > 4 {
			t.Errorf("%d retries within 10 s of a failure, want 2–4", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// Run delivers a change as soon as it is enqueued, and retries at the
// backoff — on the fake clock.
func TestWebhookRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu    sync.Mutex
			times []time.Time
			ok    bool
		)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var ev Event
			json.NewDecoder(r.Body).Decode(&ev)
			mu.Lock()
			defer mu.Unlock()
			times = append(times, time.Now())
			if !ok {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		})
		ob, err := OpenFileOutbox(filepath.Join(t.TempDir(), "outbox.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		w, err := NewWebhook(ob, WebhookOptions{URL: "http://hook", Client: &http.Client{Transport: handlerTransport{h}}})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- w.Run(ctx) }()
		synctest.Wait()
		start := time.Now()
		w.Add(twin.AlarmEntry{Op: twin.OpRaise, At: start, Alarm: twin.Alarm{ID: "1", Machine: "m", Kind: twin.AlarmOffline, State: twin.AlarmActive, RaisedAt: start}})
		if err := w.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		mu.Lock()
		if len(times) != 1 || !times[0].Equal(start) {
			t.Errorf("first attempt at %v, want at once (%v)", times, start)
		}
		ok = true
		mu.Unlock()
		time.Sleep(time.Second) // the first backoff is 0.5–1 s
		synctest.Wait()
		mu.Lock()
		if len(times) != 2 || times[1].Sub(start) < 500*time.Millisecond || times[1].Sub(start) > time.Second {
			t.Errorf("attempts at %v, want the second 0.5–1 s after the first", times)
		}
		mu.Unlock()
		if st, _ := w.Stats(ctx); st.Depth != 0 {
			t.Errorf("depth %d after delivery", st.Depth)
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}
