package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestKill9KeepsAcknowledged: every sample answered 2xx survives kill -9,
// even when the kill lands right after the answer.
func TestKill9KeepsAcknowledged(t *testing.T) { kill9KeepsAcknowledged(t) }

// kill9KeepsAcknowledged runs the kill -9 test on a server started with
// args (the store selection).
func kill9KeepsAcknowledged(t *testing.T, args ...string) {
	dir := t.TempDir()
	s := start(t, dir, args...)
	base := time.Now().Add(-time.Minute).UnixMilli()

	// Writers post concurrently; the kill comes right after the 20th ack.
	var (
		mu    sync.Mutex
		acked = map[string][]int64{} // machine → acknowledged event times
		wg    sync.WaitGroup
		killd = make(chan struct{})
		once  sync.Once
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			machine := fmt.Sprintf("k-%d", w)
			client := &http.Client{Timeout: 10 * time.Second}
			for i := 0; ; i++ {
				var body bytes.Buffer
				for j := range 50 {
					fmt.Fprintf(&body, "{\"machineId\":%q,\"timestamp\":%d,\"v\":%d}\n", machine, base+int64(i*50+j), i*50+j)
				}
				resp, err := client.Post(s.url+"/api/v1/events", "application/x-ndjson", &body)
				if err != nil {
					return // killed
				}
				resp.Body.Close()
				if resp.StatusCode != 202 {
					continue
				}
				mu.Lock()
				for j := range 50 {
					acked[machine] = append(acked[machine], base+int64(i*50+j))
				}
				n := len(acked)
				total := 0
				for _, v := range acked {
					total += len(v)
				}
				mu.Unlock()
				if n == 4 && total >= 20*50 {
					once.Do(func() { s.kill(); close(killd) })
				}
				select {
				case <-killd:
					return
				default:
				}
			}
		}()
	}
	wg.Wait()

	s2 := start(t, dir, args...)
	for machine, times := range acked {
		got := s2.series(machine, "v")
		have := map[int64]bool{}
		for _, ts := range got.T {
			have[ts] = true
		}
		missing := 0
		for _, ts := range times {
			if !have[ts] {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%s: %d of %d acknowledged samples lost after kill -9", machine, missing, len(times))
		}
	}
}

// TestLogFullAnswers503: when the event log is full, ingest answers 503 with
// Retry-After and stores nothing from that request; everything answered 202
// is stored.
func TestLogFullAnswers503(t *testing.T) {
	s := start(t, "", "--log-capacity", "1000")
	base := time.Now().Add(-time.Minute).UnixMilli()
	var (
		mu       sync.Mutex
		accepted int
		shed     int
		retry    string
	)
	// Requests of 600 samples: two cannot be in the log at once, so
	// concurrent requests find it full while one is being stored.
	for round := 0; round < 200 && shed == 0; round++ {
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var body bytes.Buffer
				for j := range 600 {
					fmt.Fprintf(&body, "{\"machineId\":\"bp\",\"timestamp\":%d,\"v\":1}\n", base+int64((round*8+w)*600+j))
				}
				resp, err := http.Post(s.url+"/api/v1/events", "application/x-ndjson", &body)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				defer mu.Unlock()
				switch resp.StatusCode {
				case 202:
					accepted += 600
				case 503:
					shed++
					retry = resp.Header.Get("Retry-After")
				default:
					t.Errorf("status %d", resp.StatusCode)
				}
			}()
		}
		wg.Wait()
	}
	if shed == 0 {
		t.Fatal("no request was shed with a 1000-sample log")
	}
	if retry == "" {
		t.Error("503 without Retry-After")
	}
	if got := len(s.series("bp", "v").T); got != accepted {
		t.Errorf("stored %d samples, want exactly the %d accepted", got, accepted)
	}
}

// TestStalledStreamClientIsCutOff: a client that stops reading is cut off
// with a reconnect hint while another client keeps receiving everything.
func TestStalledStreamClientIsCutOff(t *testing.T) {
	s := start(t, "", "--stream-max-queue-bytes", "1048576", "--stream-write-timeout", "3s")
	c := ctx(t, 60*time.Second)
	fast := subscribe(t, c, s, "all=1", true)

	// The stalled client: a tiny receive buffer, and it never reads.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/stream?all=1 HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", conn.RemoteAddr())

	// More than the kernel's socket buffers can hold (4 MiB send buffer at
	// most): 100 batches × 300 machines × ~500-byte messages. After each
	// batch the fast client reads it all, so it keeps up by construction
	// while the stalled client falls further behind.
	const batches, machines, metrics = 100, 300, 10
	now := time.Now().UnixMilli()
	n := 0
	for b := range batches {
		var body bytes.Buffer
		for m := range machines {
			fmt.Fprintf(&body, "{\"machineId\":\"s-%03d\",\"timestamp\":%d", m, now-int64(batches-b)*10)
			for k := range metrics {
				fmt.Fprintf(&body, ",\"metric_%d\":%d.123456", k, 1000000+b)
			}
			body.WriteString("}\n")
		}
		if r := s.do("POST", "/api/v1/events", "application/x-ndjson", body.Bytes()); r.status != 202 {
			t.Fatalf("post: %d %s", r.status, r.body)
		}
		for n < (b+1)*machines*metrics {
			select {
			case m, ok := <-fast:
				if !ok {
					t.Fatalf("fast client cut off after %d samples", n)
				}
				if m.Type == "reconnect" {
					t.Fatalf("fast client told to reconnect: %+v", m)
				}
				n += len(m.Samples)
			case <-c.Done():
				t.Fatalf("fast client got %d samples", n)
			}
		}
	}
	// The stalled client was cut off: by the publish that overflowed its
	// queue (slow_client), or, on a slow machine, by its blocked write
	// timing out first (write_error). Either is counted by now.
	slow := metricValue(t, s, `twinline_stream_clients_dropped_total{reason="slow_client"}`)
	stuck := metricValue(t, s, `twinline_stream_clients_dropped_total{reason="write_error"}`)
	if slow+stuck != 1 {
		t.Errorf("cut-offs: slow_client %v + write_error %v, want 1 in all", slow, stuck)
	}
	// Its connection ends once its blocked write times out
	// (--stream-write-timeout): only the fast client stays.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for metricValue(t, s, `twinline_stream_clients{transport="sse"}`) != 1 {
		select {
		case <-tick.C:
		case <-c.Done():
			t.Fatal("the stalled client's connection was not closed")
		}
	}
}

// metricValue returns the value of one series on /metrics, 0 if absent
// (a counter not yet incremented).
func metricValue(t *testing.T, s *server, series string) float64 {
	t.Helper()
	for _, l := range strings.Split(string(s.get("/metrics").body), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", l, err)
			}
			return f
		}
	}
	return 0
}

// TestGracefulShutdown: on SIGTERM stream clients are told to reconnect
// with a cursor, the process exits 0, and what it learnt (an auto-registered
// machine whose data is too old to be found again at start-up) is kept.
func TestGracefulShutdown(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	c := ctx(t, 60*time.Second)
	sse := subscribe(t, c, s, "all=1", true)
	ws := subscribe(t, c, s, "all=1", false)
	old := time.Now().Add(-time.Hour).UnixMilli()
	if r := s.do("POST", "/api/v1/events", "application/json", []byte(fmt.Sprintf(`{"machineId":"g-1","timestamp":%d,"temp":5}`, old))); r.status != 202 {
		t.Fatalf("post: %d %s", r.status, r.body)
	}
	awaitSamples(t, c, sse, "g-1", 1)
	awaitSamples(t, c, ws, "g-1", 1)

	s.stop() // SIGTERM; fails the test unless the exit code is 0
	for name, ch := range map[string]<-chan message{"sse": sse, "websocket": ws} {
		var last message
		for m := range ch {
			last = m
		}
		if last.Type != "reconnect" || last.Reason != "shutdown" || last.Cursor == 0 {
			t.Errorf("%s: last message %+v, want a shutdown reconnect with a cursor", name, last)
		}
	}

	s2 := start(t, dir)
	if r := s2.get("/api/v1/machines/g-1"); r.status != 200 {
		t.Errorf("auto-registered machine after restart: %d %s", r.status, r.body)
	}
	if got := s2.series("g-1", "temp").V; !cmp.Equal(got, []float64{5}) {
		t.Errorf("stored after restart = %v, want [5]", got)
	}
}

// TestKill9KeepsDedupKeys: events with an id or a seq and no timestamp (so
// the server stamps them) are acknowledged, the server is killed, and their
// retries after the restart — stamped with a new time — are duplicates,
// stored once.
func TestKill9KeepsDedupKeys(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	var body bytes.Buffer
	for i := range 20 {
		if i%2 == 0 {
			fmt.Fprintf(&body, "{\"machineId\":\"keyed-1\",\"id\":\"evt-%d\",\"v%d\":%d}\n", i, i, i)
		} else {
			fmt.Fprintf(&body, "{\"machineId\":\"keyed-1\",\"seq\":%d,\"v%d\":%d}\n", i, i, i)
		}
	}
	var res struct{ Accepted, Duplicates int }
	r := s.do("POST", "/api/v1/events", "application/x-ndjson", body.Bytes())
	if r.status != 202 {
		t.Fatalf("post: %d %s", r.status, r.body)
	}
	r.json(t, &res)
	if res.Accepted != 20 {
		t.Fatalf("first post: %+v, want 20 accepted", res)
	}
	s.kill()

	s2 := start(t, dir)
	r = s2.do("POST", "/api/v1/events", "application/x-ndjson", body.Bytes())
	if r.status != 202 {
		t.Fatalf("retry: %d %s", r.status, r.body)
	}
	r.json(t, &res)
	if res.Accepted != 0 || res.Duplicates != 20 {
		t.Errorf("retry after kill -9: %+v, want 0 accepted, 20 duplicates", res)
	}
	for i := range 20 {
		if got := s2.series("keyed-1", fmt.Sprintf("v%d", i)); len(got.T) != 1 {
			t.Errorf("v%d: stored %d samples, want 1", i, len(got.T))
		}
	}
}
