package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// jsonArray returns a JSON array of n one-metric events (about 62 bytes
// each) spread over 100 machines, timestamps from now back.
func jsonArray(n int, prefix string) []byte {
	var b bytes.Buffer
	b.Grow(n * 64)
	now := time.Now().UnixMilli()
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"machineId":"%s-%02d","timestamp":%d,"temp":%d.%d}`, prefix, i%100, now-int64(n-i), 60+i%20, i%10)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// procStatus reads a field of /proc/PID/status in bytes (VmRSS, VmHWM).
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// postConcurrently posts each body at once and checks every answer is 2xx,
// or 503 with Retry-After, and that the server stays ready meanwhile.
func postConcurrently(t *testing.T, s *server, bodies [][]byte) (ok int) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for _, b := range bodies {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", s.url+"/api/v1/events", bytes.NewReader(b))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("posting: %v", err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			statuses[resp.StatusCode]++
			switch {
			case resp.StatusCode/100 == 2:
				ok++
			case resp.StatusCode == 503 && resp.Header.Get("Retry-After") != "":
			default:
				t.Errorf("got %d %s; want 2xx, or 503 with Retry-After", resp.StatusCode, body)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			t.Logf("answers: %v", statuses)
			return ok
		case <-time.After(200 * time.Millisecond):
			if r := s.get("/readyz"); r.status != 200 {
				t.Errorf("/readyz = %d %s during the load", r.status, r.body)
			}
		}
	}
}

// TestMemoryConcurrentLargeBodies: 8 concurrent 25 MB JSON arrays grow the
// server's peak RSS by less than 512 MB, and every request is answered.
func TestMemoryConcurrentLargeBodies(t *testing.T) {
	s := start(t, "", "--log-capacity", "8000000")
	pid := s.cmd.Process.Pid
	bodies := make([][]byte, 8)
	for i := range bodies {
		bodies[i] = jsonArray(400_000, fmt.Sprintf("big%d", i))
	}
	base := procStatus(t, pid, "VmRSS")
	ok := postConcurrently(t, s, bodies)
	peak := procStatus(t, pid, "VmHWM")
	growth := peak - base
	t.Logf("body %d bytes; RSS %d MB → peak %d MB: growth %d MB for %d concurrent bodies (%.1f× one body), %d stored",
		len(bodies[0]), base>>20, peak>>20, growth>>20, len(bodies), float64(growth)/float64(len(bodies[0])), ok)
	if growth >= 512<<20 {
		t.Errorf("peak RSS grew by %d MB, want < 512 MB", growth>>20)
	}
	if ok == 0 {
		t.Errorf("no request was stored")
	}
}

// TestMemoryCgroupLimit: without GOMEMLIMIT, the binary takes its memory
// limit from the cgroup (a fixture of 1 GiB) and stays under it.
func TestMemoryCgroupLimit(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "memory.max"), []byte("1073741824\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TWINLINE_CGROUP_ROOT", root)
	t.Setenv("GOMEMLIMIT", "")
	s := start(t, "", "--log-capacity", "8000000")
	if !strings.Contains(s.logs.String(), `"source":"cgroup"`) || !strings.Contains(s.logs.String(), `"go_limit_bytes":966367641`) {
		t.Fatalf("no memory limit from the cgroup logged:\n%s", s.logs.String())
	}
	bodies := make([][]byte, 8)
	for i := range bodies {
		bodies[i] = jsonArray(400_000, fmt.Sprintf("cg%d", i))
	}
	postConcurrently(t, s, bodies)
	peak := procStatus(t, s.cmd.Process.Pid, "VmHWM")
	t.Logf("peak RSS %d MB under a 1024 MB cgroup limit", peak>>20)
	if peak >= 1<<30 {
		t.Errorf("peak RSS %d MB, want under the 1 GiB limit", peak>>20)
	}
}

// TestMemoryStalledBodies: 200 connections announce a body and stall; a
// normal client's ingest is answered at once, and the stalled ones get
// 408 after --read-idle-timeout.
func TestMemoryStalledBodies(t *testing.T) {
	s := start(t, "", "--read-idle-timeout", "2s", "--max-inflight-ingest", "64")
	addr := strings.TrimPrefix(s.url, "http://")
	const stalled = 200
	conns := make([]net.Conn, stalled)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "POST /api/v1/events HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[{\"machineId\":\"slow\",", addr)
		conns[i] = c
	}
	opened := time.Now()
	// Every stalled request reached the server when its metrics say so.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := s.get("/metrics")
		if strings.Contains(string(r.body), "twinline_ingest_memory_bytes") && !strings.Contains(string(r.body), "twinline_ingest_memory_bytes 0\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stalled requests never reached the server")
		}
	}
	for i := range 3 {
		begin := time.Now()
		body := fmt.Sprintf(`{"machineId":"fast","timestamp":%d,"temp":%d}`, time.Now().UnixMilli(), i)
		r := s.do("POST", "/api/v1/events", "application/json", []byte(body))
		if took := time.Since(begin); r.status != 202 || took > time.Second {
			t.Fatalf("normal ingest with %d stalled bodies: %d %s in %s; want 202 within 1s", stalled, r.status, r.body, took)
		}
		r = s.do("POST", "/write?precision=ms", "", fmt.Appendf(nil, "m,host=fast t=%d %d\n", i, time.Now().UnixMilli()))
		if r.status != 204 {
			t.Fatalf("line protocol with %d stalled bodies: %d %s", stalled, r.status, r.body)
		}
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Errorf("reading the stalled request's answer: %v", err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 408 || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("stalled request: %d %s %s; want 408 problem+json", resp.StatusCode, resp.Header.Get("Content-Type"), b)
			}
		})
	}
	wg.Wait()
	if took := time.Since(opened); took < 2*time.Second || took > 10*time.Second {
		t.Errorf("stalled requests answered after %s; want about --read-idle-timeout (2s)", took)
	}
}
