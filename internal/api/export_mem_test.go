package api

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/telemetry"
)

// The export's memory is measured on a server process of its own (this
// test binary re-run as TestExportServerProcess over a store the test
// filled), so that the RSS measured is the server's only: its growth from
// before the export to the highest value seen while the client downloads
// (read every 1 MiB of the body).
//
// TestExportMemory exports 1 M samples in CI; make export-soak exports
// 10 M (TWINLINE_EXPORT_SAMPLES=10000000). The bound is the issue's:
// RSS growth under 100 MB.

const (
	exportMemMachines = 100
	exportMemMetrics  = 2
)

// openExportMemStore opens the store of TestExportMemory: the embedded
// store in dir, or, when schema is set, the PostgreSQL store in that
// schema.
func openExportMemStore(dir, schema string) (store.Store, error) {
	if schema != "" {
		return postgres.Open(context.Background(), oeePGURL(), postgres.Options{Schema: schema, Retention: -1, MaxFuture: -1},
			slog.New(slog.DiscardHandler), nil)
	}
	return embedded.Open(dir, embedded.Options{}, nil, nil)
}

// TestExportServerProcess is the server of TestExportMemory: it opens the
// store in TWINLINE_EXPORT_DIR (or the PostgreSQL schema
// TWINLINE_EXPORT_SCHEMA) and serves the API on a loopback port, which it
// prints, until its stdin closes.
func TestExportServerProcess(t *testing.T) {
	dir, schema := os.Getenv("TWINLINE_EXPORT_DIR"), os.Getenv("TWINLINE_EXPORT_SCHEMA")
	if dir == "" {
		t.Skip("the server process of TestExportMemory")
	}
	st, err := openExportMemStore(dir, schema)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg, live := openTwins(t, time.Minute, time.Now)
	a := New(Options{MaxInflightIngest: 1}, Deps{Registry: reg, Live: live, Store: st, Logger: slog.New(slog.DiscardHandler),
		Ready: func() error { return nil }})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a}
	go srv.Serve(ln)
	// The baseline: what opening the store took, given back.
	runtime.GC()
	debug.FreeOSMemory()
	fmt.Printf("listening %s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	srv.Close()
}

// exportMemValue is a plausible sensor reading: a slow wave per machine
// and metric plus deterministic noise (so Parquet's compression is not
// flattered by constant values).
func exportMemValue(i, m, k int) float64 {
	x := uint64(i)*0x9e3779b97f4a7c15 ^ uint64(m)<<32 ^ uint64(k)
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 29
	noise := float64(x%10_000) / 10_000
	return math.Round((50+20*math.Sin(float64(i)/600+float64(m))+float64(10*k)+noise)*1000) / 1000
}

// rssOf returns a process's resident set (VmRSS) and its anonymous part
// (RssAnon: the heap, not the store's memory-mapped files), in bytes.
func rssOf(pid int) (rss, anon int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	field := func(name string) int64 {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, name+":"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				return kb << 10
			}
		}
		return 0
	}
	rss, anon = field("VmRSS"), field("RssAnon")
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return rss, anon, nil
}

func TestExportMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a store with 1 M samples")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc to read a process's RSS")
	}
	samples := 1_000_000
	if s := os.Getenv("TWINLINE_EXPORT_SAMPLES"); s != "" {
		var err error
		if samples, err = strconv.Atoi(s); err != nil {
			t.Fatalf("TWINLINE_EXPORT_SAMPLES: %v", err)
		}
	}
	perSeries := samples / (exportMemMachines * exportMemMetrics)
	samples = perSeries * exportMemMachines * exportMemMetrics

	// TWINLINE_EXPORT_STORE=postgres measures the PostgreSQL store (in a
	// schema of its own) instead of the embedded one.
	dir, schema := t.TempDir(), ""
	if os.Getenv("TWINLINE_EXPORT_STORE") == "postgres" {
		schema = openOEEPostgresSchema(t)
	}
	start := time.Now()
	st, err := openExportMemStore(dir, schema)
	if err != nil {
		t.Fatal(err)
	}
	// Time-major, as machines send: every series advances together, one
	// sample a second from t0.
	batch := make([]telemetry.Sample, 0, 100_000)
	for i := range perSeries {
		for m := range exportMemMachines {
			for k := range exportMemMetrics {
				batch = append(batch, telemetry.Sample{Machine: "m" + strconv.Itoa(m), Metric: "metric" + strconv.Itoa(k),
					Time: t0 + int64(i)*1000, Value: exportMemValue(i, m, k)})
			}
		}
		if len(batch) >= 100_000 || i == perSeries-1 {
			if err := st.Append(context.Background(), batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stored %d samples in %v", samples, time.Since(start).Round(time.Millisecond))

	cmd := exec.Command(os.Args[0], "-test.run=^TestExportServerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TWINLINE_EXPORT_DIR="+dir, "TWINLINE_EXPORT_SCHEMA="+schema)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		t.Fatalf("server process: %q %v\n%s", line, err, stderr.Bytes())
	}
	pid := cmd.Process.Pid

	for _, format := range []string{"csv", "parquet"} {
		base, baseAnon, err := rssOf(pid)
		if err != nil {
			t.Fatal(err)
		}
		url := fmt.Sprintf("http://%s/api/v1/export?from=%d&to=%d&format=%s", addr, t0, t0+int64(perSeries)*1000, format)
		start := time.Now()
		res, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		peak, peakAnon, size := base, baseAnon, int64(0)
		buf := make([]byte, 1<<20)
		for {
			n, err := io.ReadFull(res.Body, buf)
			size += int64(n)
			if rss, anon, rerr := rssOf(pid); rerr == nil {
				peak, peakAnon = max(peak, rss), max(peakAnon, anon)
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: reading the export: %v", format, err)
			}
		}
		res.Body.Close()
		elapsed := time.Since(start)
		if got := res.Trailer.Get("Twinline-Export-Rows"); res.StatusCode != 200 || got != strconv.Itoa(samples) {
			t.Fatalf("%s: status %d, %q rows; want 200 and %d", format, res.StatusCode, got, samples)
		}
		growth := peak - base
		t.Logf("%s: %d samples, %.1f MB, in %v: %.0f samples/s; server RSS %.1f MB before, +%.1f MB at most during the export (anonymous: +%.1f MB)",
			format, samples, float64(size)/1e6, elapsed.Round(time.Millisecond), float64(samples)/elapsed.Seconds(),
			float64(base)/1e6, float64(growth)/1e6, float64(peakAnon-baseAnon)/1e6)
		if growth > 100e6 {
			t.Errorf("%s: the server's RSS grew by %.1f MB during the export, more than 100 MB", format, float64(growth)/1e6)
		}
	}
}
