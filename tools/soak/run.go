package main

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// env is what a run sets up around the server and takes down after it.
type env struct{ cleanups []func() }

func (e *env) defer1(f func()) { e.cleanups = append(e.cleanups, f) }

func (e *env) close() {
	for _, f := range slices.Backward(e.cleanups) {
		f()
	}
}

func run(ctx context.Context, c config, out io.Writer) (err error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dir, err := os.MkdirTemp("", "twinline-soak-")
	if err != nil {
		return fmt.Errorf("creating the run's directory: %w", err)
	}
	var e env
	defer e.close()
	if !c.keep {
		e.defer1(func() { os.RemoveAll(dir) })
	}
	fmt.Fprintf(out, "twinline %s: %s at %.0f events/s over %d machines, %d metrics; run directory %s\n",
		c.mode, c.duration, c.rate, c.machines, c.metrics, dir)

	bin := c.bin
	if bin == "" {
		bin = filepath.Join(dir, "twinline")
		fmt.Fprintln(out, "building ./cmd/twinline")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/twinline")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building twinline (run from the repository root, or pass --bin): %w", err)
		}
	}

	has := func(f string) bool { return slices.Contains(c.faults, f) }
	tb := &proxyTB{}
	e.defer1(tb.close)
	var serverArgs []string
	var pgOut, redisOut, kafkaRestarts atomic.Int64
	var schedule []fault

	// PostgreSQL: a database of the run's own, through a proxy when it is
	// to be cut.
	if c.store == "postgres" {
		dbURL, drop, err := createDatabase(ctx, c.pgAdminURL, "twinline_soak")
		if err != nil {
			return err
		}
		e.defer1(drop)
		if has("postgres") {
			u, _ := url.Parse(dbURL)
			p, err := newProxy(tb, u.Host)
			if err != nil {
				return err
			}
			u.Host = p.Addr()
			dbURL = u.String()
			schedule = append(schedule, fault{name: fmt.Sprintf("PostgreSQL cut for %s", c.pgOutage), do: outage(p, c.pgOutage, &pgOut)})
		}
		serverArgs = append(serverArgs, "--store", "postgres", "--postgres-url", dbURL)
	}
	if c.redisAddr != "" {
		prefix := "twinline-soak:" + crand.Text()[:10] + ":"
		e.defer1(func() { deleteRedisPrefix(c.redisAddr, prefix) })
		addr := c.redisAddr
		if has("redis") {
			p, err := newProxy(tb, c.redisAddr)
			if err != nil {
				return err
			}
			addr = p.Addr()
			schedule = append(schedule, fault{name: fmt.Sprintf("Redis cut for %s", c.redisOutage), do: outage(p, c.redisOutage, &redisOut)})
		}
		serverArgs = append(serverArgs, "--redis-url", "redis://"+addr+"/0", "--redis-prefix", prefix)
	}
	if c.kafka {
		k, err := startKafka(filepath.Join(dir, "kafka"), "twinline.telemetry")
		if err != nil {
			return err
		}
		e.defer1(k.close)
		serverArgs = append(serverArgs, "--kafka-brokers", k.addr())
		if has("kafka") {
			schedule = append(schedule, fault{name: fmt.Sprintf("Kafka broker restarted (down %s)", c.kafkaDown), do: k.restart(c.kafkaDown, &kafkaRestarts)})
		}
	}
	serverArgs = append(serverArgs, c.serverArgs...)

	srv, err := newServer(bin, filepath.Join(dir, "data"), filepath.Join(dir, "server.log"), serverArgs)
	if err != nil {
		return err
	}
	e.defer1(func() { srv.stop(30 * time.Second) })
	if err := srv.start(ctx, 2*time.Minute); err != nil {
		return err
	}
	fmt.Fprintf(out, "server %s (pid %d): serve %v\n", srv.url, srv.pid(), srv.args)

	// Stream clients.
	names := make([]string, c.machines)
	for i := range names {
		names[i] = fmt.Sprintf("soak-%05d", i)
	}
	metrics := []string{"temp", "rpm", "vibration", "pressure", "power", "current", "voltage", "flow"}
	for len(metrics) < c.metrics {
		metrics = append(metrics, "m"+strconv.Itoa(len(metrics)))
	}
	metrics = metrics[:c.metrics]
	st := newStreams(srv.url)
	clientsCtx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	conflateQ := "all=1&conflate=" + c.conflate.String()
	if c.conflateClients > 0 {
		if ok, why := st.conflateSupported(ctx, conflateQ); !ok {
			fmt.Fprintf(out, "conflation unsupported: %s; the %d conflated clients subscribe with all=1\n", why, c.conflateClients)
			conflateQ = "all=1"
		}
	}
	var clients sync.WaitGroup
	for i := range c.machineClients {
		clients.Go(func() { st.subscribe(clientsCtx, "machine="+names[i], groupMachine) })
	}
	for range c.fleetClients {
		clients.Go(func() { st.subscribe(clientsCtx, "all=1", groupFleet) })
	}
	for range c.conflateClients {
		clients.Go(func() { st.subscribe(clientsCtx, conflateQ, groupConflate) })
	}
	fmt.Fprintf(out, "stream clients: %d machine, %d fleet (all=1), %d fleet (%s)\n", c.machineClients, c.fleetClients, c.conflateClients, conflateQ)

	// Faults: kills spread over the run, the others at random moments.
	r := rand.New(rand.NewPCG(c.seed, c.seed>>1|1))
	var stalledOpen, stalledClosed atomic.Int64
	if has("stalled") {
		schedule = append(schedule, fault{name: fmt.Sprintf("%d stalled sockets", c.stalled), do: stalledBurst(srv.url[len("http://"):], c.stalled, c.stallHold, &stalledClosed, &stalledOpen)})
	}
	if has("slow") {
		schedule = append(schedule, fault{name: fmt.Sprintf("%d slow stream readers for %s", c.slowReaders, c.slowFor), do: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, c.slowFor)
			defer cancel()
			var wg sync.WaitGroup
			for range c.slowReaders {
				wg.Go(func() { st.slowReader(ctx, 2*time.Second) })
			}
			wg.Wait()
			return nil
		}})
	}
	for i := range schedule {
		// Anywhere in the middle 60 % of the run.
		schedule[i].at = c.duration/5 + time.Duration(r.Int64N(int64(c.duration*3/5)+1))
	}
	var killMarks []time.Duration
	var killMu sync.Mutex
	if has("kill") {
		for _, at := range killTimes(r, c.kills, c.duration/10, c.duration*9/10, 3*time.Second) {
			schedule = append(schedule, fault{at: at, name: "kill -9 and restart", do: func(ctx context.Context) error {
				srv.kill9()
				killMu.Lock()
				killMarks = append(killMarks, at)
				killMu.Unlock()
				return srv.start(ctx, 2*time.Minute)
			}})
		}
	}
	slices.SortFunc(schedule, func(a, b fault) int { return int(a.at - b.at) })
	if len(schedule) > 0 {
		fmt.Fprintf(out, "fault schedule (--seed %d):\n", c.seed)
		for _, f := range schedule {
			fmt.Fprintf(out, "  %7.1fs  %s\n", f.at.Seconds(), f.name)
		}
	}

	// The load, the record and the faults.
	l := newLedger(c.machines)
	runID := crand.Text()[:8]
	snd := newSender(srv.url, c.rate, c.batch, c.workers, names, metrics, runID, l, log)
	loadCtx, endLoad := context.WithTimeout(ctx, c.duration)
	defer endLoad()
	drainCtx, endDrain := context.WithTimeout(ctx, c.duration+c.settle)
	defer endDrain()
	start := time.Now()
	var sendDone = make(chan struct{})
	go func() {
		snd.run(loadCtx, drainCtx)
		close(sendDone)
	}()

	faultCtx, stopFaults := context.WithCancel(ctx)
	defer stopFaults()
	var faultsWG sync.WaitGroup
	var faultErrs []error
	var faultMu sync.Mutex
	for _, f := range schedule {
		faultsWG.Go(func() {
			select {
			case <-faultCtx.Done():
				return
			case <-time.After(time.Until(start.Add(f.at))):
			}
			logTo(os.Stderr, start, "%s", f.name)
			if err := f.do(faultCtx); err != nil && !errors.Is(err, context.Canceled) {
				faultMu.Lock()
				faultErrs = append(faultErrs, fmt.Errorf("%s at %.0fs: %w", f.name, f.at.Seconds(), err))
				faultMu.Unlock()
				logTo(os.Stderr, start, "%s: %v", f.name, err)
			}
		})
	}

	var cw *csvWriter
	if c.csvPath != "" {
		f, err := os.Create(c.csvPath)
		if err != nil {
			return fmt.Errorf("creating csv: %w", err)
		}
		defer f.Close()
		if cw, err = newCSVWriter(f); err != nil {
			return err
		}
	}
	var record []sample
	tick := time.NewTicker(c.interval)
	var prevAcked int64
	prevAt := start
recording:
	for last := false; !last; {
		select {
		case <-tick.C:
		case <-loadCtx.Done():
			if ctx.Err() != nil {
				break recording
			}
			last = true // the load's end: one last sample, unless one was just taken
		}
		now := time.Now()
		if last && now.Sub(prevAt) < c.interval/2 {
			break
		}
		p := srv.probe(ctx)
		acked := snd.acked.Load()
		s := sample{
			Elapsed: now.Sub(start), RSS: p.rss, RSSAnon: p.anon, HeapInuse: p.heap, HeapLive: p.live, Goroutines: p.goroutines, OpenFDs: p.fds,
			Sent: snd.sent.Load(), Acked: acked, AckedPerS: float64(acked-prevAcked) / now.Sub(prevAt).Seconds(),
			Received: st.received.Load(), Reconnects: st.reconn.Load(), Restarts: srv.starts.Load() - 1,
			Unanswered: snd.unanswered.Load(), Retries: snd.retries.Load(), SenderBehind: snd.behind.Load(),
		}
		for g := range s.Lag {
			s.Lag[g] = st.lag[g].take()
		}
		prevAcked, prevAt = acked, now
		record = append(record, s)
		if cw != nil {
			if err := cw.Write(s); err != nil {
				return err
			}
		}
		fmt.Fprintf(os.Stderr, "[%5.0fs] acked %d (%.0f/s) retried %d | rss %s heap %s live %s goroutines %d fds %d | lag p99 machine %s fleet %s conflate %s | restarts %d\n",
			s.Elapsed.Seconds(), s.Acked, s.AckedPerS, s.Retries, mib(s.RSS), mib(s.HeapInuse), mib(s.HeapLive), s.Goroutines, s.OpenFDs,
			msStr(s.Lag[groupMachine]), msStr(s.Lag[groupFleet]), msStr(s.Lag[groupConflate]), s.Restarts)
	}
	tick.Stop()
	loadEnd := time.Since(start)

	// The faults end (outages restored, the server up), the last requests
	// are answered, then the count.
	stopFaults()
	faultsWG.Wait()
	if srv.pid() == 0 || !srv.ready(ctx) {
		fmt.Fprintln(out, "server down after the faults: starting it for the count")
		if err := srv.start(ctx, 2*time.Minute); err != nil {
			return err
		}
	}
	<-sendDone
	stopClients()
	clients.Wait()
	sendEnd := time.Since(start)

	cq := &countQuery{base: srv.url, client: &http.Client{Timeout: time.Minute}}
	var v verdict
	deadline := time.Now().Add(c.settle)
	for {
		v, err = l.check(ctx, names, metrics, cq.count)
		if err == nil && v.Lost == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(3 * time.Second) // the store catching up (Kafka, spool)
	}
	if err != nil {
		return fmt.Errorf("counting the stored events: %w", err)
	}
	counted := time.Since(start)

	if c.pngPath != "" && len(record) > 0 {
		if err := writePlot(c.pngPath, c, record, killMarks); err != nil {
			return err
		}
	}

	// The verdict.
	fmt.Fprintf(out, "\n== twinline %s: %s of load (%s with the drain, %s with the count) ==\n", c.mode, loadEnd.Round(time.Second), sendEnd.Round(time.Second), counted.Round(time.Second))
	fmt.Fprintf(out, "events sent %d, acknowledged %d (%.0f/s over the load), requests retried %d, refused (4xx) %d, never acknowledged %d\n",
		snd.sent.Load(), v.Acked, float64(v.Acked)/loadEnd.Seconds(), snd.retries.Load(), snd.rejected.Load(), v.Unsure)
	fmt.Fprintf(out, "stream samples received %d, reconnects %d\n", st.received.Load(), st.reconn.Load())
	fail := false
	check := func(ok bool, format string, args ...any) {
		verdict := "PASS"
		if !ok {
			verdict, fail = "FAIL", true
		}
		fmt.Fprintf(out, "%s  %s\n", verdict, fmt.Sprintf(format, args...))
	}
	if c.mode == "soak" {
		warm := warmupFor(loadEnd)
		// The process's own memory (anonymous RSS) must not drift; the
		// file pages it maps (the TSDB's memory-mapped head chunks) grow
		// with the data kept, up to a block's worth, and are reported.
		t, anon := afterWarmup(record, warm, func(s sample) int64 { return s.RSSAnon })
		d, ok := drift(t, anon)
		lo, hi := spread(anon)
		check(ok && d < c.maxRSSDrift, "anonymous RSS drift after warm-up (%s) %+.1f %% (limit %.0f %%; fitted line over %d samples, %s – %s)",
			warm, d, c.maxRSSDrift, len(anon), mib(int64(lo)), mib(int64(hi)))
		t, rss := afterWarmup(record, warm, func(s sample) int64 { return s.RSS })
		if d, ok := drift(t, rss); ok {
			rlo, rhi := spread(rss)
			fmt.Fprintf(out, "INFO  total RSS drift after warm-up %+.1f %% (%s – %s), file pages included\n", d, mib(int64(rlo)), mib(int64(rhi)))
		}
		t, live := afterWarmup(record, warm, func(s sample) int64 { return s.HeapLive })
		if d, ok := drift(t, live); ok {
			llo, lhi := spread(live)
			fmt.Fprintf(out, "INFO  live heap drift after warm-up %+.1f %% (%s – %s): a leak shows here first\n", d, mib(int64(llo)), mib(int64(lhi)))
		}
		_, g := afterWarmup(record, warm, func(s sample) int64 { return s.Goroutines })
		gf := flat("goroutines", g, 50, 0.10)
		check(gf.ok(), "%v", gf)
		_, fd := afterWarmup(record, warm, func(s sample) int64 { return s.OpenFDs })
		ff := flat("open files", fd, 20, 0.10)
		check(ff.ok(), "%v", ff)
		if lagAll := lagSummary(record); lagAll != "" {
			fmt.Fprintf(out, "stream lag after warm-up, worst interval: %s\n", lagAll)
		}
	} else {
		fmt.Fprintf(out, "kills %d, server starts %d (restarts %d), PostgreSQL outages %d, Redis outages %d, Kafka restarts %d, stalled sockets %d (closed by the server %d), slow readers cut off %d\n",
			srv.kills.Load(), srv.starts.Load(), srv.starts.Load()-1, pgOut.Load(), redisOut.Load(), kafkaRestarts.Load(),
			stalledOpen.Load(), stalledClosed.Load(), st.slowCut.Load())
		for _, err := range faultErrs {
			fmt.Fprintf(out, "fault error: %v\n", err)
		}
	}
	fmt.Fprintf(out, "acknowledged %d, found %d (per metric, %d metrics × %d machines counted), stored though never acknowledged %d, duplicates stored %d\n",
		v.Acked, v.Found, len(metrics), len(names), v.StoredUnsure, v.Duplicates)
	for _, w := range v.Worst {
		fmt.Fprintf(out, "  %s\n", w)
	}
	check(v.Lost == 0 && v.Acked > 0, "acknowledged events lost: %d", v.Lost)
	if v.Duplicates > 0 {
		fmt.Fprintf(out, "WARN  %d samples stored more than once\n", v.Duplicates)
	}
	if c.csvPath != "" {
		fmt.Fprintf(out, "record: %s", c.csvPath)
		if c.pngPath != "" {
			fmt.Fprintf(out, ", plot: %s", c.pngPath)
		}
		fmt.Fprintln(out)
	}
	if fail {
		return errors.New("the run failed its criteria")
	}
	return nil
}

func writePlot(path string, c config, record []sample, marks []time.Duration) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating plot: %w", err)
	}
	x := make([]time.Duration, len(record))
	for i, s := range record {
		x[i] = s.Elapsed
	}
	title := fmt.Sprintf("twinline %s, %s, %.0f events/s, %d machines", c.mode, c.duration, c.rate, c.machines)
	if err := renderPlot(f, title, x, soakPanels(record), marks, 1200); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing plot: %w", err)
	}
	return nil
}

func lagSummary(record []sample) string {
	warm := warmupFor(record[len(record)-1].Elapsed)
	out := ""
	for g := range numGroups {
		var worst, p50 time.Duration
		for _, s := range record {
			if s.Elapsed >= warm && s.Lag[g].N > 0 && s.Lag[g].P99 > worst {
				worst, p50 = s.Lag[g].P99, s.Lag[g].P50
			}
		}
		if worst > 0 {
			out += fmt.Sprintf("%s p50 %s p99 %s; ", groupNames[g], p50.Round(100*time.Microsecond), worst.Round(100*time.Microsecond))
		}
	}
	return out
}

func mib(v int64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.0fMiB", float64(v)/(1<<20))
}

func msStr(l lagStat) string {
	if l.N == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0fms", float64(l.P99)/float64(time.Millisecond))
}

// countQuery counts stored samples through the series API: step=10s,
// agg=count.
type countQuery struct {
	base   string
	client *http.Client
}

func (q *countQuery) count(ctx context.Context, machine, metric string, from, to int64) (map[int64]int64, error) {
	u := fmt.Sprintf("%s/api/v1/machines/%s/series?metric=%s&from=%d&to=%d&step=10s&agg=count",
		q.base, url.PathEscape(machine), url.QueryEscape(metric), from, to-1)
	for attempt := 0; ; attempt++ {
		got, err := q.get(ctx, u)
		if err == nil || attempt == 5 {
			return got, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (q *countQuery) get(ctx context.Context, u string) (map[int64]int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return nil, fmt.Errorf("building query: %w", err)
	}
	resp, err := q.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("querying series: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return map[int64]int64{}, nil // a machine never stored
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("querying series: %s: %s", resp.Status, b)
	}
	var body struct {
		T []int64   `json:"t"`
		V []float64 `json:"v"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decoding series: %w", err)
	}
	out := make(map[int64]int64, len(body.T))
	for i, t := range body.T {
		out[t] += int64(body.V[i])
	}
	return out, nil
}

// createDatabase creates a database of the run's own (prefix_<time>) on
// the PostgreSQL of adminURL; drop drops it (WITH (FORCE): the killed
// servers' sessions).
func createDatabase(ctx context.Context, adminURL, prefix string) (dbURL string, drop func(), err error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("connecting to PostgreSQL at %s: %w", adminURL, err)
	}
	defer conn.Close(context.Background())
	name := fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
	if _, err := conn.Exec(cctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("creating database %s: %w", name, err)
	}
	u, _ := url.Parse(adminURL)
	u.Path = "/" + name
	drop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dropping database %s: %v\n", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			fmt.Fprintf(os.Stderr, "dropping database %s: %v\n", name, err)
		}
	}
	return u.String(), drop, nil
}

// deleteRedisPrefix deletes the run's keys.
func deleteRedisPrefix(addr, prefix string) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 1000 {
			rdb.Del(ctx, keys...)
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		rdb.Del(ctx, keys...)
	}
}
