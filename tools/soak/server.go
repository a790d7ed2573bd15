package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twinline/twinline/internal/bench"
)

// server is the twinline binary under test, started (and restarted, after
// kill -9) on one data directory and one loopback port.
type server struct {
	bin  string
	args []string // after "serve"
	url  string
	log  *os.File // the server's stdout and stderr, every run appended

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}

	starts, kills atomic.Int64
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func newServer(bin, dataDir, logPath string, extra []string) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening server log: %w", err)
	}
	args := append([]string{
		"--listen", addr, "--data-dir", dataDir, "--log-level", "warn",
		// One loopback identity holds every client of the run.
		"--max-streams-per-client", "100000",
	}, extra...)
	return &server{bin: bin, args: args, url: "http://" + addr, log: f}, nil
}

// start runs the server and waits until /readyz answers 200; a server
// that exits before (PostgreSQL unreachable at start, say) is started
// again until timeout.
func (s *server) start(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		cmd := exec.Command(s.bin, append([]string{"serve"}, s.args...)...)
		cmd.Stdout, cmd.Stderr = s.log, s.log
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", s.bin, err)
		}
		s.starts.Add(1)
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		s.mu.Lock()
		s.cmd, s.exited = cmd, exited
		s.mu.Unlock()
		for {
			if s.ready(ctx) {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-exited:
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				s.kill9()
				return fmt.Errorf("waiting for the server to be ready: not within %s (see %s)", timeout, s.log.Name())
			}
			select {
			case <-exited:
			default:
				continue
			}
			break // exited: start it again
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (s *server) ready(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// kill9 kills the server with SIGKILL and waits for it to be gone.
func (s *server) kill9() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	s.kills.Add(1)
}

// stop asks the server to shut down (SIGTERM) and kills it after timeout.
func (s *server) stop(timeout time.Duration) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(timeout):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
}

func (s *server) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	select {
	case <-s.exited:
		return 0
	default:
		return s.cmd.Process.Pid
	}
}

// probe is one reading of the server's resources: RSS from /proc, the
// rest from /metrics; -1 for what could not be read.
type probe struct{ rss, anon, heap, live, goroutines, fds int64 }

// metricNames are the /metrics series the soak reads.
var probeMetrics = map[string]func(*probe, int64){
	"go_memstats_heap_inuse_bytes":  func(p *probe, v int64) { p.heap = v },
	"go_gc_heap_live_bytes":         func(p *probe, v int64) { p.live = v },
	"go_goroutines":                 func(p *probe, v int64) { p.goroutines = v },
	"process_open_fds":              func(p *probe, v int64) { p.fds = v },
	"process_resident_memory_bytes": func(p *probe, v int64) { p.rss = v },
}

func (s *server) probe(ctx context.Context) probe {
	p := probe{-1, -1, -1, -1, -1, -1}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/metrics", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		if resp.StatusCode == http.StatusOK {
			_ = parseMetrics(bufio.NewScanner(resp.Body), &p)
		}
		resp.Body.Close()
	}
	// /proc is exact at this moment; process_resident_memory_bytes only
	// stands in when /proc cannot be read.
	if pid := s.pid(); pid > 0 {
		if rss, err := (bench.Process{PID: pid}).RSS(); err == nil {
			p.rss = rss
		}
		p.anon = rssAnon(pid)
	}
	return p
}

// parseMetrics reads the probe's series from a Prometheus text exposition.
func parseMetrics(sc *bufio.Scanner, p *probe) error {
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		set, ok := probeMetrics[name]
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.Fields(val)[0], 64)
		if err != nil {
			return fmt.Errorf("parsing %s: %w", name, err)
		}
		set(p, int64(f))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading metrics: %w", err)
	}
	return nil
}

// rssAnon reads a process's anonymous resident memory (RssAnon, bytes), -1
// when it cannot: the part of RSS that is the process's own heap and
// stacks, not the file pages it maps (the TSDB's memory-mapped chunks,
// which grow with the data kept and which the kernel reclaims at will).
func rssAnon(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}
