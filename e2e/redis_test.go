package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/redistest"
	"github.com/twinline/twinline/internal/tcpproxy"
)

var redisAddr = redistest.Addr()

// redisPrefix returns a key prefix of the test's own on the local Redis,
// whose keys are deleted when the test ends. Without Redis the test fails
// under CI=true and is skipped elsewhere.
func redisPrefix(t *testing.T) string {
	_, prefix := redistest.Client(t)
	return prefix
}

// nextData returns the next message of one of the types on ch.
func nextData(t *testing.T, c context.Context, ch <-chan message, types ...string) message {
	t.Helper()
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("stream ended")
			}
			for _, typ := range types {
				if m.Type == typ {
					return m
				}
			}
		case <-c.Done():
			t.Fatalf("no %v message arrived", types)
		}
	}
}

// awaitReady waits until /readyz says ready (not degraded).
func awaitReady(t *testing.T, c context.Context, s *server) {
	t.Helper()
	for {
		var st struct{ Status string }
		if r := s.get("/readyz"); r.status == 200 {
			r.json(t, &st)
			if st.Status == "ready" {
				return
			}
		}
		select {
		case <-c.Done():
			t.Fatalf("/readyz never said ready: %s", s.get("/readyz").body)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestRedisFanoutAcrossReplicas: two servers sharing Redis; an event
// ingested on A arrives once on a stream client of B (and of A), and a
// client of B resumes with a cursor it got from A.
func TestRedisFanoutAcrossReplicas(t *testing.T) {
	prefix := redisPrefix(t)
	args := []string{"--redis-url", "redis://" + redisAddr + "/0", "--redis-prefix", prefix}
	a, b := start(t, "", args...), start(t, "", args...)
	c := ctx(t, 30*time.Second)
	// A replica takes part in the fan-out once subscribed to Redis: until
	// then /readyz says degraded.
	awaitReady(t, c, a)
	awaitReady(t, c, b)
	onB := subscribe(t, c, b, "machine=rf-1", false)
	onA := subscribe(t, c, a, "machine=rf-1", true)
	nextData(t, c, onB, "hello")
	nextData(t, c, onA, "hello")

	base := time.Now().UnixMilli()
	post := func(s *server, v int) {
		t.Helper()
		// Distinct event times: two samples in one millisecond are one.
		body := fmt.Sprintf(`{"machineId":"rf-1","timestamp":%d,"temp":%d}`, base+int64(v), v)
		if r := s.do("POST", "/api/v1/events", "application/json", []byte(body)); r.status != 202 {
			t.Fatalf("post: %d %s", r.status, r.body)
		}
	}
	post(a, 1)
	post(a, 2) // a duplicate delivery of 1 would come before 2
	var cursor uint64
	for name, ch := range map[string]<-chan message{"B": onB, "A": onA} {
		for _, want := range []float64{1, 2} {
			m := nextData(t, c, ch, "samples")
			if len(m.Samples) != 1 || m.Samples[0].Value != want {
				t.Fatalf("replica %s: samples %+v, want one of value %v", name, m.Samples, want)
			}
			if name == "A" && want == 1 {
				cursor = m.Seq
			}
		}
	}
	// Resume on B from A's cursor: exactly the message after it.
	resumed := subscribe(t, c, b, fmt.Sprintf("machine=rf-1&cursor=%d", cursor), false)
	if m := nextData(t, c, resumed, "samples", "reset"); m.Type != "samples" || m.Samples[0].Value != 2 {
		t.Errorf("resumed on B from A's cursor: %+v, want the sample of value 2", m)
	}
}

// TestRedisRateLimitAcrossReplicas: one client's ingest budget is shared
// by two replicas: the burst is spent across both, then 429 + Retry-After.
func TestRedisRateLimitAcrossReplicas(t *testing.T) {
	prefix := redisPrefix(t)
	args := []string{"--redis-url", "redis://" + redisAddr + "/0", "--redis-prefix", prefix,
		"--rate-limit", "on", "--ingest-rate", "0.01", "--ingest-burst", "3"}
	a, b := start(t, "", args...), start(t, "", args...)
	c := ctx(t, 30*time.Second)
	awaitReady(t, c, a) // the limiters reach Redis (they fail open until then)
	awaitReady(t, c, b)
	body := []byte(`{"machineId":"rl-1","temp":1}`)
	var got []int
	for _, s := range []*server{a, b, a, b} {
		got = append(got, s.do("POST", "/api/v1/events", "application/json", body).status)
	}
	if fmt.Sprint(got) != "[202 202 202 429]" {
		t.Fatalf("statuses %v, want [202 202 202 429]", got)
	}
	r := b.do("POST", "/api/v1/events", "application/json", body)
	if r.status != 429 || r.header.Get("Retry-After") == "" || r.header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("over the limit: %d, Retry-After %q, %s", r.status, r.header.Get("Retry-After"), r.header.Get("Content-Type"))
	}
}

// proxy is a TCP proxy whose connections the test can cut.
type proxy = tcpproxy.Proxy

func newProxy(t testing.TB, target string) *proxy { return tcpproxy.New(t, target) }

// TestRedisOutage: Redis unreachable while events flow: ingest goes on,
// local stream clients still get everything, /readyz says degraded; when
// Redis is back, twinline recovers by itself.
func TestRedisOutage(t *testing.T) {
	prefix := redisPrefix(t)
	px := newProxy(t, redisAddr)
	s := start(t, "", "--redis-url", "redis://"+px.Addr()+"/0", "--redis-prefix", prefix)
	c := ctx(t, 60*time.Second)
	live := subscribe(t, c, s, "machine=ro-1", false)
	nextData(t, c, live, "hello")
	readyz := func() string {
		var st struct{ Status string }
		r := s.get("/readyz")
		if r.status != 200 {
			t.Fatalf("/readyz: %d %s", r.status, r.body)
		}
		r.json(t, &st)
		return st.Status
	}
	await := func(want string) {
		t.Helper()
		for readyz() != want {
			select {
			case <-c.Done():
				t.Fatalf("/readyz never said %q", want)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	base := time.Now().UnixMilli()
	post := func(v int) {
		t.Helper()
		body := fmt.Sprintf(`{"machineId":"ro-1","timestamp":%d,"temp":%d}`, base+int64(v), v)
		if r := s.do("POST", "/api/v1/events", "application/json", []byte(body)); r.status != 202 {
			t.Fatalf("post %d: %d %s", v, r.status, r.body)
		}
	}
	awaitReady(t, c, s) // /readyz answers 503 until every part has started
	post(1)
	if m := nextData(t, c, live, "samples"); m.Samples[0].Value != 1 {
		t.Fatalf("before the outage: %+v", m)
	}

	px.Cut()
	post(2) // acknowledged while Redis is down
	for {   // delivered locally (after a reset if the subscription noticed first)
		m := nextData(t, c, live, "samples", "reset")
		if m.Type == "samples" {
			if m.Samples[0].Value != 2 {
				t.Fatalf("during the outage: %+v", m)
			}
			break
		}
	}
	await("degraded")

	px.Restore()
	await("ready")
	post(3)
	for {
		m := nextData(t, c, live, "samples", "reset")
		if m.Type == "samples" && m.Samples[0].Value == 3 {
			break
		}
		if m.Type == "samples" && m.Samples[0].Value != 2 {
			t.Fatalf("after the outage: %+v", m)
		}
	}
	if got := s.series("ro-1", "temp"); len(got.V) != 3 {
		t.Errorf("stored %v, want the 3 acknowledged samples", got.V)
	}
}

// TestLatestAcrossReplicas: two servers sharing PostgreSQL and Redis; a
// sample ingested and processed on A is the latest value on B (from the hot
// window in Redis), and B's raw series reads of the last minutes see it.
func TestLatestAcrossReplicas(t *testing.T) {
	prefix := redisPrefix(t)
	db := pgDatabase(t)
	args := []string{"--store", "postgres", "--postgres-url", db, "--redis-url", "redis://" + redisAddr + "/0", "--redis-prefix", prefix}
	// One replica processes a PostgreSQL store without Kafka: B is an api
	// replica.
	a, b := start(t, "", args...), start(t, "", append(args, "--role", "api")...)
	c := ctx(t, 30*time.Second)
	awaitReady(t, c, a)
	awaitReady(t, c, b)
	if r := a.do("PUT", "/api/v1/machines/hl-1", "application/json", []byte(`{"name":"Hot 1"}`)); r.status != 201 {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	ts := time.Now().Add(-time.Second).UnixMilli()
	if r := a.do("POST", "/api/v1/events", "application/json", []byte(fmt.Sprintf(`{"machineId":"hl-1","timestamp":%d,"temp":61.5}`, ts))); r.status != 202 {
		t.Fatalf("post: %d %s", r.status, r.body)
	}
	for {
		var latest struct {
			Metrics map[string]struct {
				Value float64
				TS    int64 `json:"ts"`
			}
		}
		if r := b.get("/api/v1/machines/hl-1/latest"); r.status == 200 {
			r.json(t, &latest)
			if v, ok := latest.Metrics["temp"]; ok {
				if v.Value != 61.5 || v.TS != ts {
					t.Fatalf("latest on B: %+v, want 61.5 at %d", v, ts)
				}
				break
			}
		}
		select {
		case <-c.Done():
			t.Fatalf("B never showed A's sample: %s", b.get("/api/v1/machines/hl-1/latest").body)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if got := b.series("hl-1", "temp"); len(got.V) != 1 || got.V[0] != 61.5 {
		t.Errorf("series on B: %v, want [61.5]", got.V)
	}
}

// TestAlarmsAcrossReplicas: two replicas sharing PostgreSQL and Redis; an
// alarm raised on A is in B's list, B acknowledges it, and A's list shows
// the acknowledgement.
func TestAlarmsAcrossReplicas(t *testing.T) {
	prefix := redisPrefix(t)
	db := pgDatabase(t)
	args := []string{"--store", "postgres", "--postgres-url", db, "--redis-url", "redis://" + redisAddr + "/0", "--redis-prefix", prefix, "--lateness", "0s"}
	// One replica processes a PostgreSQL store without Kafka: B is an api
	// replica.
	a, b := start(t, "", args...), start(t, "", append(args, "--role", "api")...)
	c := ctx(t, 60*time.Second)
	awaitReady(t, c, a)
	awaitReady(t, c, b)
	if r := a.do("PUT", "/api/v1/machines/ar-1", "application/json", []byte(`{"thresholds":{"temp":{"high":90}}}`)); r.status != 201 {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	ts := time.Now().Add(-time.Minute).UnixMilli()
	for i, v := range []float64{95, 96} { // the second releases the first
		if r := a.do("POST", "/api/v1/events", "application/json", []byte(fmt.Sprintf(`{"machineId":"ar-1","timestamp":%d,"temp":%g}`, ts+int64(i)*1000, v))); r.status != 202 {
			t.Fatalf("post: %d %s", r.status, r.body)
		}
	}
	type list struct {
		Alarms []alarm `json:"alarms"`
	}
	await := func(s *server, ok func(list) bool, what string) list {
		t.Helper()
		for {
			var l list
			s.get("/api/v1/alarms?state=all&machine=ar-1").json(t, &l)
			if ok(l) {
				return l
			}
			select {
			case <-c.Done():
				t.Fatalf("%s: %+v", what, l)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	onB := await(b, func(l list) bool { return len(l.Alarms) == 1 }, "B never listed A's alarm")
	id := onB.Alarms[0].ID
	if r := b.do("POST", "/api/v1/alarms/"+id+"/ack", "application/json", []byte(`{"by":"ana","note":"seen on B"}`)); r.status != 200 {
		t.Fatalf("ack on B: %d %s", r.status, r.body)
	}
	await(a, func(l list) bool { return len(l.Alarms) == 1 && l.Alarms[0].Acked }, "A never saw B's acknowledgement")
}
