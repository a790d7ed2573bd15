package main

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/bench"
)

// scaleConfig is a scale run's configuration (soak scale), from the flags.
type scaleConfig struct {
	bin, kfakeBin string
	gateways      int
	processors    []int
	apis          int
	partitions    int
	pgAdminURL    string
	redisAddr     string
	serverArgs    []string
	settle        time.Duration
	// drain, when positive, measures the processors alone: Kafka is
	// filled for this long with the processors stopped, then they are
	// started and timed until they stored it all.
	drain    time.Duration
	keep     bool
	jsonPath string
	// benchArgs are the flags of `twinline bench`, after --.
	benchArgs []string
}

// defaultScaleBench is the bench of a scale run without flags after --.
var defaultScaleBench = []string{"--scenario", "latency", "--duration", "10s"}

func parseScaleFlags(args []string) (scaleConfig, error) {
	c := scaleConfig{}
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: soak scale [flags] [-- twinline bench flags]

Runs twinline's roles as separate processes — a kfake broker
(tools/kfakebroker), gateways, processors sharing the partitions of one
consumer group, api replicas — on a PostgreSQL database and a Redis key
prefix of the run's own (created, and dropped or deleted, at the end), then
twinline bench against them: ingest to the gateways (--target), stream
clients on the api replicas (--stream-target), the processors' /metrics
read for the legs (--metrics-target). Prints the bench's table and each
process's CPU over the bench. With several --processors counts, one
setup each, in turn, and the stored throughput's ratio between them.

  go run ./tools/soak scale -- --scenario latency --duration 10s --rate 2000 --clients 50
  go run ./tools/soak scale --processors 1,2 -- --scenario ingest-json --duration 20s
  go run ./tools/soak scale --processors 1,2 --drain 20s      # the processors alone

With --drain, the processors settle (each owns partitions), stop, Kafka
is filled for --drain with ingest-json through the gateways (plus the
bench flags after --), and the processors start again: as static group
members they get their partitions back at once, so keep --drain well
under --kafka-session-timeout (45 s; --server-arg=--kafka-session-timeout=5m).

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.bin, "bin", "", "the twinline binary (default: go build ./cmd/twinline into the run's directory)")
	fs.StringVar(&c.kfakeBin, "kfake-bin", "", "the kfakebroker binary (default: go build ./tools/kfakebroker into the run's directory)")
	fs.IntVar(&c.gateways, "gateways", 1, "gateway processes (--role gateway); the bench sends to them in turn")
	procs := fs.String("processors", "2", "processor processes (--role processor), or several counts, comma-separated, one setup each in turn (e.g. 1,2)")
	fs.IntVar(&c.apis, "apis", 1, "api replicas (--role api); the bench's stream clients connect to them in turn")
	fs.IntVar(&c.partitions, "partitions", 8, "partitions of the topic")
	fs.StringVar(&c.pgAdminURL, "postgres-admin-url", "postgres://postgres@127.0.0.1:5432/postgres", "PostgreSQL where the run creates (and drops) its database")
	fs.StringVar(&c.redisAddr, "redis", "127.0.0.1:6379", "Redis address (a key prefix of the run's own, deleted at the end)")
	fs.Var((*listFlag)(&c.serverArgs), "server-arg", "extra flag for every twinline serve (repeatable), e.g. --server-arg=--kafka-linger=5ms")
	fs.DurationVar(&c.settle, "settle", time.Minute, "longest wait, after start, for every processor to own partitions (warm-up events until each has consumed some)")
	fs.DurationVar(&c.drain, "drain", 0, "measure the processors alone: fill Kafka through the gateways for this long (twinline bench --scenario ingest-json, plus the bench flags after --, e.g. --workers 2) with the processors stopped, then time them storing it all")
	fs.BoolVar(&c.keep, "keep", false, "keep the run's directory (the processes' logs)")
	fs.StringVar(&c.jsonPath, "json", "", "write every setup's figures (and the bench results) to this file as JSON")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.benchArgs = fs.Args()
	var problems []error
	for p := range strings.SplitSeq(*procs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 {
			problems = append(problems, fmt.Errorf("--processors: %q is not a count of at least 1", p))
			continue
		}
		c.processors = append(c.processors, n)
	}
	if c.gateways < 1 || c.apis < 0 || c.partitions < 1 {
		problems = append(problems, errors.New("--gateways and --partitions must be at least 1, --apis at least 0"))
	}
	if c.drain > 0 && slices.ContainsFunc(c.benchArgs, func(a string) bool {
		return strings.HasPrefix(strings.TrimLeft(a, "-"), "scenario") || strings.HasPrefix(strings.TrimLeft(a, "-"), "duration")
	}) {
		problems = append(problems, errors.New("--drain fills Kafka with ingest-json for --drain: no --scenario or --duration after --"))
	}
	if c.drain == 0 && len(c.benchArgs) == 0 {
		c.benchArgs = defaultScaleBench
	}
	if c.drain == 0 && c.apis == 0 && streamScenario(c.benchArgs) {
		problems = append(problems, errors.New("--apis 0: a stream scenario needs an api replica for its clients"))
	}
	return c, errors.Join(problems...)
}

// streamScenario reports whether bench flags name a stream scenario (the
// default, latency, is one).
func streamScenario(args []string) bool {
	scenario := "latency"
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--scenario="); ok {
			scenario = v
		} else if (a == "--scenario" || a == "-scenario") && i+1 < len(args) {
			scenario = args[i+1]
		}
	}
	return scenario == "latency" || scenario == "fanout" || scenario == "dashboard"
}

// scaleOutcome is one setup's figures.
type scaleOutcome struct {
	Gateways   int `json:"gateways"`
	Processors int `json:"processors"`
	APIs       int `json:"apis"`
	Partitions int `json:"partitions"`
	// CPU is each process's CPU seconds over the bench (or the drain).
	CPU []roleCPU `json:"cpu"`
	// Footprint is what PostgreSQL holds at the end.
	Footprint *pgFootprint `json:"postgres,omitempty"`
	// Bench is the bench's result (nil in a drain run).
	Bench *bench.Result `json:"bench,omitempty"`
	// Drain: samples stored by the processors, over how long, from their
	// first stored sample to the last.
	DrainSamples      float64 `json:"drainSamples,omitempty"`
	DrainSeconds      float64 `json:"drainSeconds,omitempty"`
	DrainSamplesPerS  float64 `json:"drainSamplesPerS,omitempty"`
	StoredSamplesPerS float64 `json:"storedSamplesPerS"`
}

// roleCPU is one process's CPU over the measured phase.
type roleCPU struct {
	Name       string  `json:"name"`
	PID        int     `json:"pid,omitempty"`
	CPUSeconds float64 `json:"cpuSeconds"`
	Cores      float64 `json:"cores"`
	RSS        int64   `json:"rssBytes,omitempty"`
}

func runScale(ctx context.Context, c scaleConfig, out io.Writer) error {
	dir, err := os.MkdirTemp("", "twinline-scale-")
	if err != nil {
		return fmt.Errorf("creating the run's directory: %w", err)
	}
	if c.keep {
		fmt.Fprintf(out, "run directory (kept): %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	build := func(bin *string, pkg, name string) error {
		if *bin != "" {
			return nil
		}
		*bin = filepath.Join(dir, name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", *bin, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building %s (run from the repository root, or pass the binary): %w", pkg, err)
		}
		return nil
	}
	if err := build(&c.bin, "./cmd/twinline", "twinline"); err != nil {
		return err
	}
	if err := build(&c.kfakeBin, "./tools/kfakebroker", "kfakebroker"); err != nil {
		return err
	}
	var outcomes []scaleOutcome
	for i, p := range c.processors {
		o, err := scaleOnce(ctx, c, filepath.Join(dir, fmt.Sprintf("setup%d", i+1)), p, out)
		if err != nil {
			return fmt.Errorf("setup with %d processors: %w", p, err)
		}
		outcomes = append(outcomes, o)
	}
	if len(outcomes) > 1 {
		writeScaleSummary(out, outcomes)
	}
	if c.jsonPath != "" {
		b, err := json.MarshalIndent(outcomes, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(c.jsonPath, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", c.jsonPath, err)
		}
	}
	return nil
}

// scaleOnce sets up kfake, the database, the key prefix and the roles,
// runs the bench (or the drain) and takes everything down again.
func scaleOnce(ctx context.Context, c scaleConfig, dir string, processors int, out io.Writer) (o scaleOutcome, err error) {
	o = scaleOutcome{Gateways: c.gateways, Processors: processors, APIs: c.apis, Partitions: c.partitions}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return o, err
	}
	var e env
	defer e.close()
	dbURL, drop, err := createDatabase(ctx, c.pgAdminURL, "twinline_scale")
	if err != nil {
		return o, err
	}
	e.defer1(drop)
	prefix := "twinline-scale:" + crand.Text()[:10] + ":"
	e.defer1(func() { deleteRedisPrefix(c.redisAddr, prefix) })
	k, err := startKfake(ctx, c.kfakeBin, c.partitions, filepath.Join(dir, "kfake.log"))
	if err != nil {
		return o, err
	}
	e.defer1(k.stop)
	common := []string{
		"--store", "postgres", "--postgres-url", dbURL,
		"--redis-url", "redis://" + c.redisAddr + "/0", "--redis-prefix", prefix,
		"--kafka-brokers", k.addr,
	}
	fmt.Fprintf(out, "\n== %d gateway(s), %d processor(s), %d api replica(s); kfake %s (pid %d, %d partitions); PostgreSQL %s; Redis prefix %s\n",
		c.gateways, processors, c.apis, k.addr, k.cmd.Process.Pid, c.partitions, dbURL, prefix)

	type proc struct {
		name string
		srv  *server
	}
	var gateways, procs, apis []proc
	newRole := func(name, role string, extra ...string) (proc, error) {
		args := append(append(append([]string{"--role", role}, common...), extra...), c.serverArgs...)
		s, err := newServer(c.bin, filepath.Join(dir, name), filepath.Join(dir, name+".log"), args)
		if err != nil {
			return proc{}, err
		}
		return proc{name, s}, nil
	}
	start := func(p proc) error {
		e.defer1(func() { p.srv.stop(30 * time.Second) })
		if err := p.srv.start(ctx, 2*time.Minute); err != nil {
			return fmt.Errorf("starting %s: %w", p.name, err)
		}
		fmt.Fprintf(out, "  %-12s %s  pid %-7d %s serve %s\n", p.name, p.srv.url, p.srv.pid(), c.bin, strings.Join(p.srv.args, " "))
		return nil
	}
	for i := range c.gateways {
		p, err := newRole(fmt.Sprintf("gateway-%d", i+1), "gateway")
		if err != nil {
			return o, err
		}
		gateways = append(gateways, p)
	}
	for i := range processors {
		p, err := newRole(fmt.Sprintf("processor-%d", i+1), "processor", "--kafka-instance-id", fmt.Sprintf("scale-processor-%d", i+1))
		if err != nil {
			return o, err
		}
		procs = append(procs, p)
	}
	for i := range c.apis {
		p, err := newRole(fmt.Sprintf("api-%d", i+1), "api")
		if err != nil {
			return o, err
		}
		apis = append(apis, p)
	}
	// One at a time: the first creates the schema.
	for _, p := range slices.Concat(gateways, apis) {
		if err := start(p); err != nil {
			return o, err
		}
	}
	urls := func(ps []proc) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.srv.url)
		}
		return out
	}
	procURLs := func() []string { return urls(procs) }

	// The processes whose CPU the run reports.
	watched := func() []roleCPU {
		ws := []roleCPU{{Name: "kfake", PID: k.cmd.Process.Pid}}
		for _, p := range slices.Concat(gateways, procs, apis) {
			ws = append(ws, roleCPU{Name: p.name, PID: p.srv.pid()})
		}
		return ws
	}

	startProcs := func() error {
		for _, p := range procs {
			if err := start(p); err != nil {
				return err
			}
		}
		return nil
	}
	if err := startProcs(); err != nil {
		return o, err
	}
	if err := settle(ctx, urls(gateways)[0], procURLs(), c.settle, out); err != nil {
		return o, err
	}
	if c.drain > 0 {
		// Static members of the group: stopped, their partitions wait for
		// them (for the session timeout), and they get them back at once
		// when they come back: no rebalance inside the measurement.
		for _, p := range procs {
			p.srv.stop(30 * time.Second)
		}
		return drainRun(ctx, c, o, out, dbURL, urls(gateways), startProcs, procURLs, watched)
	}
	args := append([]string{"bench",
		"--target", strings.Join(urls(gateways), ","),
		"--metrics-target", strings.Join(procURLs(), ","),
		"--json",
	}, c.benchArgs...)
	if len(apis) > 0 {
		args = append(args, "--stream-target", strings.Join(urls(apis), ","))
	}
	fmt.Fprintf(out, "  bench        %s %s\n", c.bin, strings.Join(args, " "))
	ws := watched()
	res, cpu, wall, err := runBenchProcess(ctx, c.bin, args, ws)
	if err != nil {
		return o, err
	}
	o.Bench = res
	o.CPU = cpu
	if res.Pipeline != nil {
		o.StoredSamplesPerS = res.Pipeline.StoredSamplesPerS
	}
	fmt.Fprintln(out)
	if err := bench.WriteTable(out, res); err != nil {
		return o, err
	}
	writeCPU(out, cpu, wall)
	o.Footprint = footprint(ctx, dbURL, out)
	return o, nil
}

// pgFootprint is the size of what the run stored in PostgreSQL.
type pgFootprint struct {
	Samples        int64   `json:"samples"`
	SampleBytes    int64   `json:"sampleBytes"`
	AggregateRows  int64   `json:"aggregateRows"`
	AggregateBytes int64   `json:"aggregateBytes"`
	BytesPerSample float64 `json:"bytesPerSample"`
}

// footprint reads the rows and on-disk size (heap, indexes, TOAST) of
// what the store keeps: on the rows layout the samples and sample_aggs
// partitions; on the packed layout (ADR 0030) the head rows and hourly
// chunks (samples: each row of the head and each element of a chunk;
// bytes: both tables and the series ids) and the 10 s, 1 min and 1 h
// aggregates. nil (and a line saying why) when it cannot.
func footprint(ctx context.Context, dbURL string, out io.Writer) *pgFootprint {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		fmt.Fprintf(out, "PostgreSQL footprint not read: %v\n", err)
		return nil
	}
	defer conn.Close(context.Background())
	layout := "rows"
	if err := conn.QueryRow(ctx, `SELECT value FROM settings WHERE name = 'layout'`).Scan(&layout); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		fmt.Fprintf(out, "PostgreSQL footprint not read: %v\n", err)
		return nil
	}
	var f pgFootprint
	q := `SELECT (SELECT count(*) FROM samples),
		(SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'samples'::regclass),
		(SELECT count(*) FROM sample_aggs),
		(SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'sample_aggs'::regclass)`
	if layout == "packed" {
		q = `SELECT (SELECT count(*) FROM sample_head) + (SELECT coalesce(sum(cardinality(offsets)), 0) FROM sample_chunks),
		(SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent IN ('sample_head'::regclass, 'sample_chunks'::regclass))
			+ pg_total_relation_size('series'),
		(SELECT count(*) FROM agg_window) + (SELECT count(*) FROM agg_1m) + (SELECT count(*) FROM agg_1h),
		(SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent IN ('agg_window'::regclass, 'agg_1m'::regclass, 'agg_1h'::regclass))`
	}
	if err := conn.QueryRow(ctx, q).Scan(&f.Samples, &f.SampleBytes, &f.AggregateRows, &f.AggregateBytes); err != nil {
		fmt.Fprintf(out, "PostgreSQL footprint not read: %v\n", err)
		return nil
	}
	if f.Samples > 0 {
		f.BytesPerSample = float64(f.SampleBytes) / float64(f.Samples)
	}
	fmt.Fprintf(out, "\nPostgreSQL: %s samples in %s (%.0f bytes per sample, indexes included); %s aggregate rows in %s\n",
		bench.FormatCount(float64(f.Samples)), bench.FormatBytes(float64(f.SampleBytes)), f.BytesPerSample,
		bench.FormatCount(float64(f.AggregateRows)), bench.FormatBytes(float64(f.AggregateBytes)))
	return &f
}

// runBenchProcess runs `twinline bench … --json` and returns its result
// and the CPU of the watched processes (and of the bench itself, and of
// PostgreSQL's and Redis's processes) over its run.
func runBenchProcess(ctx context.Context, bin string, args []string, ws []roleCPU) (*bench.Result, []roleCPU, time.Duration, error) {
	before := readCPU(ws)
	shared0 := sharedCPU()
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	t0 := time.Now()
	runErr := cmd.Run()
	wall := time.Since(t0)
	after := readCPU(ws)
	shared1 := sharedCPU()
	var res bench.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return nil, nil, 0, errors.Join(fmt.Errorf("twinline bench: %w", runErr), fmt.Errorf("reading its result: %w", err))
	}
	cpu := cpuDelta(ws, before, after, wall)
	if st := cmd.ProcessState; st != nil {
		s := (st.UserTime() + st.SystemTime()).Seconds()
		cpu = append(cpu, roleCPU{Name: "bench", CPUSeconds: s, Cores: s / wall.Seconds()})
	}
	for _, name := range []string{"postgres", "redis-server"} {
		s := (shared1[name] - shared0[name]).Seconds()
		cpu = append(cpu, roleCPU{Name: name + " (all)", CPUSeconds: s, Cores: s / wall.Seconds()})
	}
	if runErr != nil {
		return &res, cpu, wall, fmt.Errorf("twinline bench: %w", runErr)
	}
	return &res, cpu, wall, nil
}

func readCPU(ws []roleCPU) []time.Duration {
	out := make([]time.Duration, len(ws))
	for i, w := range ws {
		if w.PID > 0 {
			out[i], _ = bench.Process{PID: w.PID}.CPU()
		}
	}
	return out
}

func cpuDelta(ws []roleCPU, before, after []time.Duration, wall time.Duration) []roleCPU {
	out := slices.Clone(ws)
	for i := range out {
		out[i].CPUSeconds = (after[i] - before[i]).Seconds()
		out[i].Cores = out[i].CPUSeconds / wall.Seconds()
		if out[i].PID > 0 {
			out[i].RSS, _ = bench.Process{PID: out[i].PID}.RSS()
		}
	}
	return out
}

// sharedCPU sums the CPU time of the processes named postgres and
// redis-server: the shared servers, whose CPU the run cannot tell from
// other users' (on a quiet machine it is the run's).
func sharedCPU() map[string]time.Duration {
	out := map[string]time.Duration{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		if name != "postgres" && name != "redis-server" {
			continue
		}
		if d, err := (bench.Process{PID: pid}).CPU(); err == nil {
			out[name] += d
		}
	}
	return out
}

func writeCPU(out io.Writer, cpu []roleCPU, wall time.Duration) {
	fmt.Fprintf(out, "\nCPU over %.1f s:\n", wall.Seconds())
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "process\tpid\tCPU s\tcores\tRSS\t")
	for _, c := range cpu {
		pid, rss := "", ""
		if c.PID > 0 {
			pid = strconv.Itoa(c.PID)
		}
		if c.RSS > 0 {
			rss = bench.FormatBytes(float64(c.RSS))
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%s\t\n", c.Name, pid, c.CPUSeconds, c.Cores, rss)
	}
	tw.Flush()
}

// settle sends warm-up events to a gateway until every processor has
// consumed some: each owns partitions, the group is stable.
func settle(ctx context.Context, gateway string, procs []string, timeout time.Duration, out io.Writer) error {
	deadline := time.Now().Add(timeout)
	body := warmupBody(256)
	for round := 0; ; round++ {
		resp, err := http.Post(gateway+"/api/v1/events", "application/json", bytes.NewReader(body(round)))
		if err == nil {
			resp.Body.Close()
		}
		all := true
		for _, p := range procs {
			v, err := metricValue(ctx, p, "twinline_kafka_consumed_records_total")
			if err != nil || v == 0 {
				all = false
			}
		}
		if all {
			fmt.Fprintf(out, "  settled      every processor consumed warm-up events (round %d)\n", round+1)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not every processor consumed warm-up events within %s (see the processors' logs; --settle)", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// warmupBody returns a JSON array of one event for each of n machines
// (scale-warmup-NNN), at a time of round's own.
func warmupBody(n int) func(round int) []byte {
	return func(round int) []byte {
		ts := time.Now().UnixMilli()
		var b bytes.Buffer
		b.WriteByte('[')
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"machineId":"scale-warmup-%03d","timestamp":%d,"warmup":%d}`, i, ts, round)
		}
		b.WriteByte(']')
		return b.Bytes()
	}
}

// metricValue sums the series of one metric in base's /metrics.
func metricValue(ctx context.Context, base, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s/metrics: %s", base, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sum := 0.0
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
	}
	return sum, sc.Err()
}

// storedSamples sums twinline_processed_samples_total{outcome="stored"}
// over the processors.
func storedSamples(ctx context.Context, procs []string) float64 {
	sum := 0.0
	for _, p := range procs {
		v, err := metricSeries(ctx, p, `twinline_processed_samples_total{log="kafka",outcome="stored"}`)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// metricSeries reads one series (name{labels} exactly as exposed).
func metricSeries(ctx context.Context, base, series string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(strings.Fields(rest)[0], 64)
		}
	}
	return 0, sc.Err()
}

// drainRun fills Kafka through the gateways for c.drain with the
// processors stopped, then starts them and times them storing it all.
func drainRun(ctx context.Context, c scaleConfig, o scaleOutcome, out io.Writer, dbURL string, gateways []string,
	startProcs func() error, procURLs func() []string, watched func() []roleCPU) (scaleOutcome, error) {
	args := append([]string{"bench", "--scenario", "ingest-json", "--target", strings.Join(gateways, ","), "--duration", c.drain.String(), "--json", "--quiet"}, c.benchArgs...)
	fmt.Fprintf(out, "  fill         %s %s\n", c.bin, strings.Join(args, " "))
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return o, fmt.Errorf("filling kafka: %w", err)
	}
	var fill bench.Result
	if err := json.Unmarshal(stdout.Bytes(), &fill); err != nil || fill.Ingest == nil {
		return o, fmt.Errorf("reading the fill's result: %v", err)
	}
	want := float64(fill.Ingest.Samples)
	fmt.Fprintf(out, "  filled       %s samples (%s events/s acknowledged)\n", bench.FormatCount(want), bench.FormatCount(fill.Ingest.EventsPerS))
	if err := startProcs(); err != nil {
		return o, err
	}
	ws := watched()
	before := readCPU(ws)
	shared0 := sharedCPU()
	t0 := time.Now()
	var first time.Time
	var firstN, n float64
	deadline := t0.Add(30 * time.Minute)
	for n < want {
		select {
		case <-ctx.Done():
			return o, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		n = storedSamples(ctx, procURLs())
		if first.IsZero() && n > 0 {
			first, firstN = time.Now(), n
		}
		if time.Now().After(deadline) {
			return o, fmt.Errorf("the processors stored %s of %s samples in 30 minutes", bench.FormatCount(n), bench.FormatCount(want))
		}
	}
	end := time.Now()
	wall := end.Sub(t0)
	o.CPU = cpuDelta(ws, before, readCPU(ws), wall)
	shared1 := sharedCPU()
	for _, name := range []string{"postgres", "redis-server"} {
		s := (shared1[name] - shared0[name]).Seconds()
		o.CPU = append(o.CPU, roleCPU{Name: name + " (all)", CPUSeconds: s, Cores: s / wall.Seconds()})
	}
	o.DrainSamples = n - firstN
	o.DrainSeconds = end.Sub(first).Seconds()
	if o.DrainSeconds > 0 {
		o.DrainSamplesPerS = o.DrainSamples / o.DrainSeconds
	}
	o.StoredSamplesPerS = o.DrainSamplesPerS
	fmt.Fprintf(out, "  drained      %s samples in %.1f s after the first was stored: %s samples/s (%.1f s from the processors' start)\n",
		bench.FormatCount(o.DrainSamples), o.DrainSeconds, bench.FormatCount(o.DrainSamplesPerS), wall.Seconds())
	writeCPU(out, o.CPU, wall)
	o.Footprint = footprint(ctx, dbURL, out)
	return o, nil
}

// writeScaleSummary compares the setups: the stored throughput and its
// ratio to the first.
func writeScaleSummary(out io.Writer, outcomes []scaleOutcome) {
	fmt.Fprintln(out, "\n== scale-out, same run")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "processors\tacknowledged events/s\tstored samples/s\tratio\tkafka lag end (max)\tsensor→client p99\tprocessors' cores\tpostgres cores\t")
	base := outcomes[0].StoredSamplesPerS
	for _, o := range outcomes {
		acked, lag, p99 := "–", "–", "–"
		if r := o.Bench; r != nil {
			if r.Ingest != nil {
				acked = bench.FormatCount(r.Ingest.EventsPerS)
			}
			if r.Pipeline != nil && r.Pipeline.Lag != nil {
				lag = fmt.Sprintf("%s (%s)", bench.FormatCount(r.Pipeline.Lag.End), bench.FormatCount(r.Pipeline.Lag.Max))
			}
			if r.Latency != nil && r.Latency.Count > 0 {
				p99 = fmt.Sprintf("%.0f ms", r.Latency.P99Ms)
			}
		}
		ratio := "–"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f×", o.StoredSamplesPerS/base)
		}
		var procCores, pgCores float64
		for _, c := range o.CPU {
			if strings.HasPrefix(c.Name, "processor-") {
				procCores += c.Cores
			}
			if c.Name == "postgres (all)" {
				pgCores = c.Cores
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t\n", o.Processors, acked, bench.FormatCount(o.StoredSamplesPerS), ratio, lag, p99, procCores, pgCores)
	}
	tw.Flush()
}

// kfakeProc is the kfake broker process.
type kfakeProc struct {
	cmd    *exec.Cmd
	addr   string
	exited chan struct{}
}

// startKfake runs the kfakebroker binary on a free port and waits until
// it prints its address.
func startKfake(ctx context.Context, bin string, partitions int, logPath string) (*kfakeProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating kfake log: %w", err)
	}
	cmd := exec.Command(bin, "--port", "0", "--partitions", strconv.Itoa(partitions), "--topic", "twinline.telemetry")
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	k := &kfakeProc{cmd: cmd, exited: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait()
		logf.Close()
		close(k.exited)
	}()
	select {
	case addr, ok := <-lines:
		if !ok {
			return nil, fmt.Errorf("kfake exited before listening (see %s)", logPath)
		}
		k.addr = addr
		return k, nil
	case <-time.After(30 * time.Second):
		k.stop()
		return nil, fmt.Errorf("kfake did not listen within 30 s (see %s)", logPath)
	case <-ctx.Done():
		k.stop()
		return nil, ctx.Err()
	}
}

func (k *kfakeProc) stop() {
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(10 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.exited
	}
}
