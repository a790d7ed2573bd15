// Package e2e tests the real twinline binary: each test starts it on a
// random port with a temporary data directory and talks to it over HTTP,
// WebSocket and SSE like a user would.
package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "twinline-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "twinline")
	build := exec.Command("go", "build", "-o", binary, "../cmd/twinline")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building twinline:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is one running twinline process.
type server struct {
	t   *testing.T
	url string
	// http is the client of do (http.DefaultClient when nil), e.g. one
	// trusting a test CA.
	http    *http.Client
	dataDir string
	cmd     *exec.Cmd
	exited  chan struct{}
	logs    *lockedBuffer
}

// start runs twinline serve on a random loopback port with dataDir (a new
// temporary directory when ""), and waits until it listens.
func start(t *testing.T, dataDir string, args ...string) *server {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	cmd := exec.Command(binary, append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir}, args...)...)
	cmd.Env = append(os.Environ(), "TWINLINE_LOG_LEVEL=info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, dataDir: dataDir, cmd: cmd, exited: make(chan struct{}), logs: &lockedBuffer{}}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			s.logs.Write(append(append([]byte{}, line...), '\n'))
			var rec struct {
				Msg string `json:"msg"`
				URL string `json:"url"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" {
				addr <- strings.TrimSuffix(rec.URL, "/")
			}
		}
	}()
	go func() { cmd.Wait(); close(s.exited) }()
	select {
	case u := <-addr:
		s.url = u
	case <-s.exited:
		t.Fatalf("twinline exited before listening:\n%s", s.logs.String())
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("twinline did not listen within 60s:\n%s", s.logs.String())
	}
	t.Cleanup(func() { s.stop() })
	return s
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if code := s.cmd.ProcessState.ExitCode(); code != 0 {
			s.t.Errorf("twinline exited with %d after SIGTERM:\n%s", code, s.logs.String())
		}
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		s.t.Errorf("twinline did not stop within 30s of SIGTERM:\n%s", s.logs.String())
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (s *server) kill() {
	s.cmd.Process.Kill()
	<-s.exited
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func (s *server) do(method, path, contentType string, body []byte, header ...string) response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, bytes.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := s.client().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

func (s *server) get(path string) response { return s.do("GET", path, "", nil) }

func (s *server) client() *http.Client {
	if s.http != nil {
		return s.http
	}
	return http.DefaultClient
}

type series struct {
	T []int64   `json:"t"`
	V []float64 `json:"v"`
}

// series returns the raw samples of one metric over a wide range.
func (s *server) series(machine, metric string) series {
	s.t.Helper()
	r := s.get(fmt.Sprintf("/api/v1/machines/%s/series?metric=%s&from=0&to=%d", machine, metric, time.Now().Add(time.Hour).UnixMilli()))
	if r.status != 200 {
		s.t.Fatalf("series %s/%s: %d %s", machine, metric, r.status, r.body)
	}
	var got series
	r.json(s.t, &got)
	return got
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ctx returns a context that ends with the test or after d.
func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}
