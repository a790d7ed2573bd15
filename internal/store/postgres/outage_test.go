package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// batchN is batch i of a test writer: 20 samples of two series, at times
// no other batch uses.
func batchN(i int) []telemetry.Sample {
	var out []telemetry.Sample
	for j := range 10 {
		tm := storetest.Base + int64(i*10+j)*sec
		out = append(out,
			telemetry.Sample{Machine: "m1", Metric: "x", Time: tm, Value: float64(i*10 + j)},
			telemetry.Sample{Machine: "m2", Metric: "y", Time: tm, Value: -float64(i*10 + j)})
	}
	return out
}

// checkExactlyOnce checks that the store holds exactly the samples of the
// acknowledged batches, each once, and that the aggregates match them.
func checkExactlyOnce(t *testing.T, s *Store, acked []int) {
	t.Helper()
	want := storetest.NewMemory()
	for _, i := range acked {
		_ = want.Append(context.Background(), batchN(i))
	}
	for _, key := range []store.SeriesKey{{Machine: "m1", Metric: "x"}, {Machine: "m2", Metric: "y"}} {
		got := storetest.SelectAll(t, s, key, math.MinInt64, math.MaxInt64)
		if diff := cmp.Diff(got, storetest.SelectAll(t, want, key, math.MinInt64, math.MaxInt64)); diff != "" {
			t.Errorf("series %v after recovery (-got +want):\n%s", key, diff)
		}
	}
	q := "SELECT count(*) FROM samples"
	if s.packed {
		q = "SELECT (SELECT count(*) FROM sample_head) + (SELECT coalesce(sum(cardinality(offsets)), 0) FROM sample_chunks)"
	}
	var rows int
	if err := s.pool.QueryRow(context.Background(), q).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 20*len(acked) {
		t.Errorf("the store holds %d samples, want %d", rows, 20*len(acked))
	}
	if s.packed {
		checkTiers(t, s, "")
	} else {
		checkAggregates(t, s, "")
	}
}

// TestOutageSpoolsAndRecovers cuts the connection to PostgreSQL while a
// writer appends: every Append returns nil (committed or spooled), Ready
// reports the outage, and after recovery every acknowledged sample is
// stored exactly once.
func TestOutageSpoolsAndRecovers(t *testing.T) {
	t.Parallel()
	for _, layout := range []string{LayoutRows, LayoutPacked} {
		t.Run(layout, func(t *testing.T) { t.Parallel(); testOutageSpoolsAndRecovers(t, layout) })
	}
}

func testOutageSpoolsAndRecovers(t *testing.T, layout string) {
	p := newProxy(t, targetAddr(t))
	s := openTest(t, proxyURL(p), Options{SpoolDir: t.TempDir(), WriteTimeout: 3 * time.Second, ReplayInterval: time.Nanosecond, Layout: layout})
	ctx := context.Background()

	var acked []int
	next := 0
	appendBatches := func(n int) {
		t.Helper()
		for range n {
			if err := s.Append(ctx, batchN(next)); err != nil {
				t.Fatalf("Append batch %d: %v", next, err)
			}
			acked = append(acked, next)
			next++
		}
	}
	appendBatches(5)
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready before the outage: %v", err)
	}

	p.Cut() // connections in the pool die, new ones are refused
	appendBatches(5)
	err := s.Ready()
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "bytes spooled") {
		t.Errorf("Ready during the outage = %v, want postgres unreachable, N bytes spooled", err)
	}
	if s.spool.size() == 0 {
		t.Errorf("nothing spooled during the outage")
	}

	p.Restore()
	appendBatches(5) // the first of them replays the spool before writing
	if n := s.spool.size(); n != 0 {
		t.Errorf("spool holds %d bytes after recovery", n)
	}
	if err := s.Ready(); err != nil {
		t.Errorf("Ready after recovery: %v", err)
	}
	if n, err := s.ReplaySpool(ctx); err != nil || n != 0 {
		t.Errorf("ReplaySpool after recovery = %d, %v; want 0, nil", n, err)
	}
	checkExactlyOnce(t, s, acked)
}

// TestOutageMidBatch cuts the connection in the middle of write
// transactions, many times, with concurrent writers.
func TestOutageMidBatch(t *testing.T) {
	t.Parallel()
	p := newProxy(t, targetAddr(t))
	s := openTest(t, proxyURL(p), Options{SpoolDir: t.TempDir(), WriteTimeout: 3 * time.Second, ReplayInterval: time.Nanosecond})
	ctx := context.Background()
	const writers, per = 3, 30
	progress := make(chan int, writers*per)
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := range per {
				b := w*per + i
				if err := s.Append(ctx, batchN(b)); err != nil {
					errs <- fmt.Errorf("writer %d batch %d: %w", w, b, err)
					return
				}
				progress <- b
			}
			errs <- nil
		}()
	}
	var acked []int
	cuts := 0
	for len(acked) < writers*per {
		select {
		case b := <-progress:
			acked = append(acked, b)
			// Cut every 7 acknowledgements, restore at the next one: cuts
			// land while other writers are inside transactions.
			if len(acked)%7 == 0 {
				p.Cut()
				cuts++
			} else if len(acked)%7 == 1 {
				p.Restore()
			}
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	p.Restore()
	if _, err := s.ReplaySpool(ctx); err != nil {
		t.Fatalf("ReplaySpool: %v", err)
	}
	if n := s.spool.size(); n != 0 {
		t.Errorf("spool holds %d bytes after the replay", n)
	}
	t.Logf("%d cuts, %d rows spooled", cuts, int(testCounter(s.metrics.spooledRows)))
	checkExactlyOnce(t, s, acked)
}

func TestSpoolFullIsUnavailable(t *testing.T) {
	t.Parallel()
	p := newProxy(t, targetAddr(t))
	s := openTest(t, proxyURL(p), Options{SpoolDir: t.TempDir(), SpoolBytes: 1500, ReplayInterval: time.Hour})
	ctx := context.Background()
	p.Cut()
	var acked []int
	var err error
	for i := 0; err == nil && i < 100; i++ {
		if err = s.Append(ctx, batchN(i)); err == nil {
			acked = append(acked, i)
		}
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append with a full spool = %v, want ErrUnavailable", err)
	}
	if len(acked) == 0 || s.spool.size() > 1500 {
		t.Fatalf("acked %d batches, spool %d bytes", len(acked), s.spool.size())
	}
	p.Restore()
	n, err := s.ReplaySpool(ctx)
	if err != nil || n != 20*len(acked) {
		t.Fatalf("ReplaySpool = %d, %v; want %d", n, err, 20*len(acked))
	}
	checkExactlyOnce(t, s, acked)

	// Without a spool an outage is ErrUnavailable at once.
	p2 := newProxy(t, targetAddr(t))
	s2 := openTest(t, proxyURL(p2), Options{})
	p2.Cut()
	if err := s2.Append(ctx, batchN(0)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Append without spool during an outage = %v, want ErrUnavailable", err)
	}
}

func TestSpoolReplayAfterReopen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newProxy(t, targetAddr(t))
	s := openTest(t, proxyURL(p), Options{SpoolDir: dir})
	ctx := context.Background()
	mustAppend(t, s, batchN(0))
	p.Cut()
	mustAppend(t, s, batchN(1))
	mustAppend(t, s, batchN(2))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A write torn by a crash never returned: it is not replayed.
	if err := os.WriteFile(filepath.Join(dir, "00000000000000000099.spool.tmp"), []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openTest(t, "", Options{Schema: s.schema, SpoolDir: dir})
	n, err := s2.ReplaySpool(ctx)
	if err != nil || n != 40 {
		t.Fatalf("ReplaySpool after reopen = %d, %v; want 40, nil", n, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("spool dir after replay holds %d files", len(ents))
	}
	checkExactlyOnce(t, s2, []int{0, 1, 2})
}

func TestSpoolCodec(t *testing.T) {
	rows := []row{{ms: 1, machine: "m", metric: "x", value: 1.5}, {ms: -5, machine: "Ä ö", metric: "", value: math.Inf(-1)}}
	b := encodeRows(rows)
	got, err := decodeRows(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, rows, cmp.AllowUnexported(row{})); diff != "" {
		t.Errorf("decodeRows(encodeRows) (-got +want):\n%s", diff)
	}
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x40
		if _, err := decodeRows(c); !errors.Is(err, errCorrupt) {
			t.Fatalf("decodeRows with byte %d flipped = %v, want errCorrupt", i, err)
		}
	}
	if _, err := decodeRows(b[:len(b)-1]); !errors.Is(err, errCorrupt) {
		t.Errorf("decodeRows of a truncated file = %v, want errCorrupt", err)
	}
}

// TestSpoolSurvivesKill9 runs a child process that spools samples during an
// outage, acknowledges them, and is killed with SIGKILL; a new store on the
// same spool directory replays them.
func TestSpoolSurvivesKill9(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	schema := newSchema(t)
	p := newProxy(t, targetAddr(t))
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TWINLINE_KILL9_CHILD=1", "TWINLINE_KILL9_URL="+proxyURL(p),
		"TWINLINE_KILL9_SCHEMA="+schema, "TWINLINE_KILL9_DIR="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(stdout)
	expect := func(prefix string) string {
		t.Helper()
		for lines.Scan() {
			if rest, ok := strings.CutPrefix(lines.Text(), prefix); ok {
				return rest
			}
		}
		t.Fatalf("child ended before printing %q: %v", prefix, lines.Err())
		return ""
	}
	expect("OPEN")
	p.Cut()
	fmt.Fprintln(stdin, "cut")
	n, err := strconv.Atoi(expect("ACKED "))
	if err != nil || n == 0 {
		t.Fatalf("child acknowledged %d batches (%v)", n, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	s := openTest(t, "", Options{Schema: schema, SpoolDir: dir})
	got, err := s.ReplaySpool(context.Background())
	if err != nil || got != 20*(n-1) {
		t.Fatalf("ReplaySpool = %d, %v; want %d", got, err, 20*(n-1))
	}
	acked := make([]int, n)
	for i := range acked {
		acked[i] = i
	}
	checkExactlyOnce(t, s, acked)
}

// TestKill9Child is the child of TestSpoolSurvivesKill9.
func TestKill9Child(t *testing.T) {
	if os.Getenv("TWINLINE_KILL9_CHILD") != "1" {
		t.Skip("run by TestSpoolSurvivesKill9")
	}
	ctx := context.Background()
	s, err := Open(ctx, os.Getenv("TWINLINE_KILL9_URL"), Options{
		Schema: os.Getenv("TWINLINE_KILL9_SCHEMA"), SpoolDir: os.Getenv("TWINLINE_KILL9_DIR"),
		Now: func() time.Time { return testNow }, MaxConns: 2, Layout: LayoutRows,
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, batchN(0)); err != nil { // committed
		t.Fatal(err)
	}
	fmt.Println("OPEN")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	const n = 5
	for i := 1; i < n; i++ { // spooled
		if err := s.Append(ctx, batchN(i)); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Printf("ACKED %d\n", n)
	select {} // until SIGKILL
}

// TestRunReplaysSpool checks that Run replays the spool once the database is
// back, and returns nil when its context ends.
func TestRunReplaysSpool(t *testing.T) {
	t.Parallel()
	p := newProxy(t, targetAddr(t))
	s := openTest(t, proxyURL(p), Options{SpoolDir: t.TempDir(), ReplayInterval: time.Millisecond})
	replayed := make(chan int, 100)
	s.testHookReplayed = func(n int, err error) {
		if err == nil {
			replayed <- n
		}
	}
	p.Cut()
	mustAppend(t, s, batchN(0))
	mustAppend(t, s, batchN(1))
	if s.spool.size() == 0 {
		t.Fatal("nothing spooled")
	}
	p.Restore()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	total := 0
	for total < 40 {
		total += <-replayed
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	if err := s.Ready(); err != nil {
		t.Errorf("Ready after the replay: %v", err)
	}
	checkExactlyOnce(t, s, []int{0, 1})
}
