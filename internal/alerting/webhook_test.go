package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/tcpproxy"
	"github.com/twinline/twinline/internal/twin"
)

var secret = []byte("s3cr3t-do-not-log")

func TestSignVerify(t *testing.T) {
	body := []byte(`{"id":"alarm-1-raised"}`)
	now := time.Unix(1_700_000_000, 0)
	sig := Sign(secret, now.Unix(), body)
	if !strings.HasPrefix(sig, "sha256=") || len(sig) != len("sha256=")+64 {
		t.Fatalf("signature %q", sig)
	}
	ts := "1700000000"
	if err := Verify(secret, sig, ts, body, now.Add(time.Minute), 5*time.Minute); err != nil {
		t.Errorf("verify: %v", err)
	}
	for name, tc := range map[string]struct {
		secret    []byte
		sig, ts   string
		body      []byte
		now       time.Time
		wantError bool
	}{
		"other body":   {secret, sig, ts, []byte(`{"id":"alarm-2-raised"}`), now, true},
		"other secret": {[]byte("x"), sig, ts, body, now, true},
		"other time":   {secret, sig, "1700000001", body, now, true},
		"too old":      {secret, sig, ts, body, now.Add(time.Hour), true},
		"good":         {secret, sig, ts, body, now, false},
	} {
		err := Verify(tc.secret, tc.sig, tc.ts, tc.body, tc.now, 5*time.Minute)
		if (err != nil) != tc.wantError {
			t.Errorf("%s: verify error %v, want error %v", name, err, tc.wantError)
		}
	}
}

// hookReceiver records the deliveries it accepts, checking signatures.
type hookReceiver struct {
	t      *testing.T
	clock  *clock
	mu     sync.Mutex
	status int
	got    []Event // accepted, in order
	ids    map[string]int
	tries  int
}

func (r *hookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries++
	if r.status != 0 {
		http.Error(w, "down", r.status)
		return
	}
	if err := Verify(secret, req.Header.Get(HeaderSignature), req.Header.Get(HeaderTimestamp), body, r.clock.Now(), 5*time.Minute); err != nil {
		r.t.Errorf("delivery %s: %v", req.Header.Get(HeaderDelivery), err)
	}
	var ev Event
	if err := json.Unmarshal(body, &ev); err != nil {
		r.t.Errorf("decoding delivery: %v", err)
	}
	if ev.ID != req.Header.Get(HeaderDelivery) || ev.Type != req.Header.Get(HeaderEvent) {
		r.t.Errorf("headers %v for event %s %s", req.Header, ev.ID, ev.Type)
	}
	if r.ids == nil {
		r.ids = map[string]int{}
	}
	r.ids[ev.ID]++
	r.got = append(r.got, ev)
	w.WriteHeader(http.StatusNoContent)
}

func (r *hookReceiver) setStatus(s int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = s
}

func (r *hookReceiver) deliveries() ([]Event, map[string]int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got), r.ids, r.tries
}

// drain steps the webhook, moving the clock to each next retry, until
// nothing is pending or steps run out; it returns the steps taken.
func drain(t *testing.T, w *Webhook, clk *clock, steps int) int {
	t.Helper()
	for i := range steps {
		next, err := w.Step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if next.IsZero() {
			return i
		}
		clk.Set(next)
	}
	return steps
}

type hookSetup struct {
	clock   *clock
	fix     *fixture
	rcv     *hookReceiver
	proxy   *tcpproxy.Proxy
	path    string
	logs    *bytes.Buffer
	metrics *Metrics
	reg     *prometheus.Registry
}

func newHookSetup(t *testing.T) *hookSetup {
	clk := newClock()
	s := &hookSetup{clock: clk, fix: newFixture(t, clk), rcv: &hookReceiver{t: t, clock: clk},
		path: filepath.Join(t.TempDir(), "outbox.jsonl"), logs: &bytes.Buffer{}, reg: prometheus.NewRegistry()}
	srv := httptest.NewServer(s.rcv)
	t.Cleanup(srv.Close)
	s.proxy = tcpproxy.New(t, strings.TrimPrefix(srv.URL, "http://"))
	s.metrics = NewMetrics(s.reg)
	return s
}

// open opens the outbox file and a webhook on it, as a start does.
func (s *hookSetup) open(t *testing.T) *Webhook {
	t.Helper()
	ob, err := OpenFileOutbox(s.path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWebhook(ob, WebhookOptions{
		URL: "http://user:hunter2@" + s.proxy.Addr() + "/hook?token=tok3n", Secret: secret, Locate: locate,
		ExternalURL: "http://twinline.example.com", Now: s.clock.Now, Metrics: s.metrics,
		Logger: slog.New(slog.NewTextHandler(s.logs, nil)), BackoffBase: time.Second, BackoffMax: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.fix.alarms.SetOutbox(w)
	return w
}

// changes makes six alarm changes on two machines: raise, ack, clear of
// press-1; raise, clear, ack of press-2 (ids 1 and 2).
func (s *hookSetup) changes(t *testing.T) []string {
	f := s.fix
	f.observe("press-1", 95)
	s.clock.Add(time.Second)
	f.observe("press-2", 97)
	s.clock.Add(time.Second)
	if _, err := f.alarms.Ack("1", "ana", "on it", s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	s.clock.Add(time.Second)
	f.observe("press-2", 20)
	s.clock.Add(time.Second)
	f.observe("press-1", 20)
	if _, err := f.alarms.Ack("2", "bo", "", s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	return []string{"alarm-1-raised", "alarm-2-raised", "alarm-1-acknowledged", "alarm-2-cleared", "alarm-1-cleared", "alarm-2-acknowledged"}
}

// The receiver down (connections refused, then 503) gets, once it is up,
// every change once, in order per alarm, signed; the delivery states
// follow; neither the secret nor the URL's credentials reach the logs.
func TestWebhookReceiverDownThenUp(t *testing.T) {
	s := newHookSetup(t)
	w := s.open(t)
	defer w.Close()
	s.proxy.Cut()
	want := s.changes(t)
	st, _ := w.Stats(context.Background())
	if st.Depth != len(want) {
		t.Fatalf("outbox depth %d, want %d: changes are enqueued before the alarm calls return", st.Depth, len(want))
	}
	start := s.clock.Now()
	// Down for 30 s: connections refused, then 503.
	for s.clock.Now().Before(start.Add(15 * time.Second)) {
		drain(t, w, s.clock, 1)
	}
	s.proxy.Restore()
	s.rcv.setStatus(http.StatusServiceUnavailable)
	for s.clock.Now().Before(start.Add(30 * time.Second)) {
		drain(t, w, s.clock, 1)
	}
	states, _ := w.States(context.Background(), []string{"1", "2"})
	if states["1"].State != StateRetrying || states["2"].State != StateRetrying || states["2"].Attempts < 3 || states["2"].LastError == "" {
		t.Errorf("states while down: %+v", states)
	}
	if got, _, _ := s.rcv.deliveries(); len(got) != 0 {
		t.Fatalf("accepted while down: %v", got)
	}
	s.rcv.setStatus(0)
	s.clock.Add(time.Minute)
	if n := drain(t, w, s.clock, 10); n == 10 {
		t.Fatal("still pending after the receiver came back")
	}
	got, ids, tries := s.rcv.deliveries()
	var gotIDs []string
	for _, ev := range got {
		gotIDs = append(gotIDs, ev.ID)
	}
	for _, id := range want {
		if ids[id] != 1 {
			t.Errorf("delivery %s received %d times", id, ids[id])
		}
	}
	for _, alarm := range []string{"1", "2"} {
		var order []string
		for _, id := range gotIDs {
			if strings.HasPrefix(id, "alarm-"+alarm+"-") {
				order = append(order, id)
			}
		}
		var wantOrder []string
		for _, id := range want {
			if strings.HasPrefix(id, "alarm-"+alarm+"-") {
				wantOrder = append(wantOrder, id)
			}
		}
		if diff := cmp.Diff(order, wantOrder); diff != "" {
			t.Errorf("alarm %s deliveries out of order (-got +want):\n%s", alarm, diff)
		}
	}
	if ev := got[0]; ev.Site != "lyon" || ev.Dashboard != "http://twinline.example.com/#/m/press-1" || ev.Alarm.Machine != "press-1" {
		t.Errorf("first event %+v", ev)
	}
	states, _ = w.States(context.Background(), []string{"1", "2"})
	for id, st := range states {
		if st.State != StateDelivered || st.DeliveredAt == nil || st.LastError != "" {
			t.Errorf("alarm %s state %+v", id, st)
		}
	}
	if tries <= len(want) {
		t.Errorf("%d tries reached the receiver: the 503s were not retried", tries)
	}
	if st, _ := w.Stats(context.Background()); st.Depth != 0 {
		t.Errorf("depth %d after delivery", st.Depth)
	}
	if got := testutil.ToFloat64(s.metrics.notifications.WithLabelValues("webhook", "delivered")); got != float64(len(want)) {
		t.Errorf("delivered counter %v", got)
	}
	if testutil.ToFloat64(s.metrics.notifications.WithLabelValues("webhook", "retry")) == 0 {
		t.Error("retry counter 0")
	}
	logs := s.logs.String()
	if !strings.Contains(logs, "alarm webhook delivery failed") {
		t.Errorf("no failure logged:\n%s", logs)
	}
	for _, leak := range []string{string(secret), "hunter2", "tok3n"} {
		if strings.Contains(logs, leak) {
			t.Errorf("logs hold %q:\n%s", leak, logs)
		}
	}
}

// Across restarts of the outbox — after every change and mid-delivery —
// nothing pending is lost and nothing delivered is sent again.
func TestWebhookOutboxRestart(t *testing.T) {
	s := newHookSetup(t)
	w := s.open(t)
	s.proxy.Cut()
	want := s.changes(t)
	drain(t, w, s.clock, 3) // a few failed attempts
	w.Close()

	w = s.open(t)
	st, err := w.Stats(context.Background())
	if err != nil || st.Depth != len(want) {
		t.Fatalf("after a restart: depth %d (%v), want %d", st.Depth, err, len(want))
	}
	states, _ := w.States(context.Background(), []string{"2"})
	if states["2"].State != StateRetrying || states["2"].Attempts == 0 {
		t.Errorf("state of alarm 2 after a restart: %+v", states["2"])
	}
	// Up: deliver only the first message of each alarm, then restart.
	s.proxy.Restore()
	s.clock.Add(time.Hour)
	msgs, _ := w.outbox.Claim(context.Background(), s.clock.Now(), time.Minute, 10)
	for _, m := range msgs {
		if err := w.deliver(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	w = s.open(t)
	defer w.Close()
	drain(t, w, s.clock, 10)
	_, ids, _ := s.rcv.deliveries()
	for _, id := range want {
		if ids[id] != 1 {
			t.Errorf("delivery %s received %d times", id, ids[id])
		}
	}
	if len(ids) != len(want) {
		t.Errorf("received %v", ids)
	}
}

// A torn last line (a crash mid-write) is cut off; a bad line before the
// end is an error.
func TestFileOutboxTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.jsonl")
	ob, err := OpenFileOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := ob.Enqueue(context.Background(), []Message{{ID: "alarm-1-raised", Alarm: "1", Body: "{}", Created: now, NextAt: now}}); err != nil {
		t.Fatal(err)
	}
	ob.Close()
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"add":{"id":"alarm-2-ra`)
	f.Close()
	ob, err = OpenFileOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := ob.Stats(context.Background()); st.Depth != 1 {
		t.Errorf("depth %d after a torn line", st.Depth)
	}
	if err := ob.Enqueue(context.Background(), []Message{{ID: "alarm-2-raised", Alarm: "2", Body: "{}", Created: now, NextAt: now}}); err != nil {
		t.Fatal(err)
	}
	ob.Close()
	ob, err = OpenFileOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := ob.Stats(context.Background()); st.Depth != 2 {
		t.Errorf("depth %d, want 2", st.Depth)
	}
	ob.Close()
	data, _ := os.ReadFile(path)
	os.WriteFile(path, append([]byte("garbage\n"), data...), 0o600)
	if _, err := OpenFileOutbox(path); err == nil {
		t.Error("a bad line before the end opened")
	}
}

// The file is compacted as it grows: it stays small, and what it holds
// survives.
func TestFileOutboxCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.jsonl")
	ob, err := OpenFileOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	ob.slack = 64
	ctx := context.Background()
	now := time.Now().UTC()
	for i := range 300 {
		id := DeliveryID(strings.Repeat("9", 1+i%3)+string(rune('a'+i%26)), twin.OpRaise) + string(rune('0'+i%10))
		m := Message{ID: id + "-" + time.Duration(i).String(), Alarm: "a" + time.Duration(i%50).String(), Body: "{}", Created: now, NextAt: now}
		if err := ob.Enqueue(ctx, []Message{m}); err != nil {
			t.Fatal(err)
		}
		claimed, _ := ob.Claim(ctx, now, time.Minute, 100)
		for _, c := range claimed {
			if err := ob.Settle(ctx, c, Outcome{State: StateDelivered, At: now}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := ob.Enqueue(ctx, []Message{{ID: "last", Alarm: "z", Body: "{}", Created: now, NextAt: now.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	ob.Close()
	data, _ := os.ReadFile(path)
	if lines := bytes.Count(data, []byte("\n")); lines > 300 {
		t.Errorf("%d lines after 600 changes: not compacted", lines)
	}
	ob, err = OpenFileOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	st, _ := ob.Stats(ctx)
	states, _ := ob.States(ctx, []string{"a7ns", "z"})
	if st.Depth != 1 || states["a7ns"].State != StateDelivered || states["z"].State != StatePending {
		t.Errorf("after compaction: %+v, states %+v", st, states)
	}
}

// A full outbox drops the change, counts and logs it; a 400 fails a
// delivery for good and the alarm's next change goes on.
func TestWebhookFullAndRefused(t *testing.T) {
	s := newHookSetup(t)
	ob, err := OpenFileOutbox(s.path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWebhook(ob, WebhookOptions{URL: "http://" + s.proxy.Addr(), Secret: secret, Now: s.clock.Now,
		Metrics: s.metrics, Logger: slog.New(slog.NewTextHandler(s.logs, nil)), MaxPending: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	s.fix.alarms.SetOutbox(w)
	s.rcv.setStatus(http.StatusBadRequest)
	s.fix.observe("m1", 95)                         // alarm-1-raised
	s.fix.alarms.Ack("1", "ana", "", s.clock.Now()) // alarm-1-acknowledged
	s.fix.observe("m1", 10)                         // dropped: full
	if got := testutil.ToFloat64(s.metrics.notifications.WithLabelValues("webhook", "dropped")); got != 1 {
		t.Errorf("dropped counter %v", got)
	}
	if !strings.Contains(s.logs.String(), "outbox full") {
		t.Errorf("no log of the full outbox:\n%s", s.logs)
	}
	drain(t, w, s.clock, 5)
	states, _ := w.States(context.Background(), []string{"1"})
	if st := states["1"]; st.State != StateFailed || !strings.Contains(st.LastError, "400") || st.Attempts != 1 {
		t.Errorf("state %+v", st)
	}
	_, _, tries := s.rcv.deliveries()
	if tries != 2 {
		t.Errorf("%d tries, want 2 (each refused once, not retried)", tries)
	}
}

func TestNewWebhookRejectsBadURL(t *testing.T) {
	ob, err := OpenFileOutbox(filepath.Join(t.TempDir(), "o"))
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	for _, u := range []string{"", "ftp://x", "http://", "://bad"} {
		if _, err := NewWebhook(ob, WebhookOptions{URL: u}); err == nil {
			t.Errorf("URL %q accepted", u)
		}
	}
}

// Erasing a person's name rewrites the changes still to deliver and
// leaves it in no line of the file.
func TestFileOutboxEraseBy(t *testing.T) {
	s := newHookSetup(t)
	w := s.open(t)
	s.proxy.Cut()
	s.changes(t) // alarm 1 acknowledged by ana (then cleared), 2 by bo
	n, err := w.outbox.(*FileOutbox).EraseBy(context.Background(), "ana", "erased-1")
	if err != nil || n != 2 {
		t.Fatalf("EraseBy: %d, %v", n, err)
	}
	w.Close()
	data, _ := os.ReadFile(s.path)
	if bytes.Contains(data, []byte(`"ana"`)) || !bytes.Contains(data, []byte("erased-1")) || !bytes.Contains(data, []byte(`\"bo\"`)) {
		t.Errorf("outbox file after erasing ana:\n%s", data)
	}
	w = s.open(t)
	defer w.Close()
	s.proxy.Restore()
	s.clock.Add(time.Hour)
	drain(t, w, s.clock, 10)
	got, _, _ := s.rcv.deliveries()
	if len(got) != 6 {
		t.Fatalf("%d deliveries after erasing", len(got))
	}
	for _, ev := range got {
		if ev.Alarm.AckedBy == "ana" {
			t.Errorf("delivery %s names ana", ev.ID)
		}
	}
}
