package main

import (
	"path/filepath"

	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/app"
	benchmark "github.com/twinline/twinline/internal/bench"
	"github.com/twinline/twinline/internal/config"
)

const benchUsage = `Usage: twinline bench --scenario NAME [flags]

Measures a twinline server: ingest throughput, sensor-to-client latency,
stream fan-out, a dashboard's mix of streams and query latency. Without --target it starts a server in
this process (every serve flag applies to it, e.g. --log-capacity; its data
goes to a temporary directory unless --data-dir is given).

Scenarios:
  ingest-json  closed loop: --workers post JSON batches of --batch events as fast
               as they are acknowledged (2xx = durable); samples/s, CPU per sample
  ingest-lp    the same with InfluxDB line protocol; data points/s
  latency      an open-loop sender at --rate events/s (each event stamped with its
               intended send time) while --clients stream clients subscribe;
               sample event time → arrival at the client: p50 … max
  fanout       --clients stream clients at once: connect rate, memory per client,
               messages/s delivered under --rate
  query        preload --history of 1 Hz data for --history-machines machines
               (and one event for every other machine), then time history queries
               (points=1000, step=10s&agg=avg) and the fleet list
  dashboard    latency plus --fleet-clients (50) conflated fleet clients
               (all=1&conflate=--conflate): machine clients' latency, the interval
               between fleet updates, their size, and every client dropped

Examples:
  twinline bench --scenario ingest-json --duration 10s
  twinline bench --scenario latency --rate 50000 --clients 1000
  twinline bench --scenario dashboard --duration 10s
  twinline bench --scenario fanout --clients 20000 --target http://127.0.0.1:8080 --target-pid 1234
  twinline bench --scenario latency --target http://127.0.0.1:8080 \
      --stream-target http://127.0.0.1:8083,http://127.0.0.1:8084 \
      --metrics-target http://127.0.0.1:8081,http://127.0.0.1:8082     (gateway, api replicas, processors)

The table and --json break the server's part of the time down by leg
(twinline_leg_seconds and others, read from every process's /metrics
before and after the measured phase) and show whether the store kept up
(Kafka consumer lag or the in-process log's depth over the phase).

Flags:
`

func bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = ""
	cfg.LogLevel = "warn"
	opts := benchmark.Options{Duration: 10 * time.Second, History: 24 * time.Hour, Progress: stderr, Terminal: isTerminal(stderr)}
	var (
		asJSON     bool
		quiet      bool
		cpuProfile string
		memProfile string
		serverLog  string
		targetPID  int
	)
	fs := flag.NewFlagSet("twinline bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), benchUsage)
		fs.PrintDefaults()
	}
	serveFlags(fs, &cfg)
	fs.StringVar(&opts.Scenario, "scenario", "", "`name`: "+strings.Join(benchmark.Scenarios, ", "))
	fs.StringVar(&opts.Target, "target", "", "`URL` of a running server; several, comma-separated, take the events in turn (gateways); empty: start one in this process")
	listVar(fs, &opts.StreamTargets, "stream-target", "`URLs` the stream clients connect to, in turn (api replicas; default: --target)")
	listVar(fs, &opts.MetricsTargets, "metrics-target", "`URLs` of further processes (processors) whose /metrics are read for the per-leg latency and the store's backlog, besides --target and --stream-target")
	fs.IntVar(&targetPID, "target-pid", 0, "process id of the --target server, to report its CPU and memory (same host)")
	durationVar(fs, &opts.Duration, "duration", "length of the measured phase")
	durationVar(fs, &opts.Warmup, "warmup", "start of the measured phase left out of the latency figures (0: 1s for latency and fanout)")
	fs.IntVar(&opts.Workers, "workers", 0, "concurrent HTTP senders (default 4 × GOMAXPROCS)")
	fs.IntVar(&opts.Batch, "batch", 0, "events (or lines) per request (default 1000; 500 for latency and fanout)")
	fs.IntVar(&opts.Machines, "machines", 0, "simulated machines (default 1000)")
	fs.StringVar(&opts.Prefix, "prefix", "bench", "machine id prefix (prefix-00042); distinct prefixes let several bench processes share a server")
	fs.IntVar(&opts.Metrics, "metrics", 0, "metrics per event (default 3)")
	fs.StringVar(&opts.LPShape, "lp-shape", "", "ingest-lp line shape: simple (one measurement, tag machineId, --metrics fields) or tsbs-iot (TSBS iot: readings and diagnostics lines of 7 and 3 fields, 8 tags, 10 s interval, --machines trucks)")
	fs.Float64Var(&opts.Rate, "rate", 0, "events per second of the open-loop sender (default 50000 for latency, 1000 for fanout)")
	durationVar(fs, &opts.Linger, "linger", "longest an event waits in the open-loop sender for its batch to fill (0: 10ms)")
	fs.IntVar(&opts.Clients, "clients", 0, "stream clients (default 1000 for latency, 20000 for fanout)")
	fs.IntVar(&opts.MachinesPerClient, "machines-per-client", 0, "machines each stream client subscribes to (default 1)")
	fs.IntVar(&opts.AllClients, "all-clients", 0, "of --clients, how many subscribe to every machine (?all=1)")
	fs.StringVar(&opts.Transport, "transport", "ws", "stream transport: ws (WebSocket) or sse")
	fs.IntVar(&opts.FleetClients, "fleet-clients", 0, "stream clients of the conflated fleet stream (all=1&conflate=…), besides --clients (default 50 for dashboard, else 0)")
	durationVar(fs, &opts.Conflate, "conflate", "conflation interval of the fleet clients, 50ms to 10s (0: 250ms)")
	fs.IntVar(&opts.ConnectWorkers, "connect-workers", 0, "stream connections opened at once (default 64)")
	fs.IntVar(&opts.HistoryMachines, "history-machines", 0, "query: machines preloaded with history (default 4)")
	durationVar(fs, &opts.History, "history", "query: length of the preloaded 1 Hz history")
	fs.StringVar(&opts.MQTT, "mqtt", "", "twin: the server's MQTT broker, `host:port`, the devices connect to (without --target: the embedded server's broker, on a free port unless --mqtt-listen)")
	fs.StringVar(&opts.Token, "token", "", "API token sent on every request (Authorization: Bearer); without --target, the embedded server is started with auth on and this token as its bootstrap token, so the figures include token checking")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON instead of a table")
	fs.BoolVar(&quiet, "quiet", false, "no progress line")
	fs.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this process (the embedded server and the load generator) during the run to `file`")
	fs.StringVar(&memProfile, "memprofile", "", "write a heap profile of this process to `file` once the stream clients are connected (latency, fanout) or at the end")
	fs.StringVar(&serverLog, "server-log", "", "write the embedded server's JSON log to `file` at --log-level (default: errors only, to stderr)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if quiet {
		opts.Progress = nil
	}
	if opts.Scenario == "" {
		fs.Usage()
		return errors.New("missing --scenario")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if strings.Contains(opts.Target, ",") {
		// Several gateways: the first is the Target (reached first,
		// named in the result), all take events.
		for t := range strings.SplitSeq(opts.Target, ",") {
			if t = strings.TrimSpace(t); t != "" {
				opts.IngestTargets = append(opts.IngestTargets, t)
			}
		}
		opts.Target = ""
		if len(opts.IngestTargets) > 0 {
			opts.Target = opts.IngestTargets[0]
		}
	}
	if opts.Target != "" {
		var serveOnly []string
		serve := flag.NewFlagSet("", flag.ContinueOnError)
		scratch := config.Default()
		serveFlags(serve, &scratch)
		serve.VisitAll(func(f *flag.Flag) {
			if set[f.Name] {
				serveOnly = append(serveOnly, "--"+f.Name)
			}
		})
		if len(serveOnly) > 0 {
			return fmt.Errorf("serve flags (%s) configure the embedded server; they do not apply with --target", strings.Join(serveOnly, ", "))
		}
	} else {
		for _, f := range []string{"target-pid", "stream-target", "metrics-target"} {
			if set[f] {
				return fmt.Errorf("--%s needs --target", f)
			}
		}
	}

	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return fmt.Errorf("creating cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("starting cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	if memProfile != "" {
		written := false
		write := func() {
			if written {
				return
			}
			written = true
			if err := writeHeapProfile(memProfile); err != nil {
				fmt.Fprintln(stderr, "twinline bench:", err)
			}
		}
		opts.Connected = write
		defer write()
	}

	if opts.Target != "" {
		if targetPID != 0 {
			opts.Server = &benchmark.Process{PID: targetPID}
		}
		return runBench(ctx, opts, asJSON, stdout)
	}

	// Embedded server.
	if cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "twinline-bench-")
		if err != nil {
			return fmt.Errorf("creating data directory: %w", err)
		}
		defer os.RemoveAll(dir)
		cfg.DataDir = dir
	}
	if opts.Token != "" && cfg.BootstrapTokenFile == "" {
		// The server checks the token on every request, as in production.
		f := filepath.Join(cfg.DataDir, "bench-token")
		if err := os.WriteFile(f, []byte(opts.Token), 0o600); err != nil {
			return fmt.Errorf("writing the bench token: %w", err)
		}
		cfg.BootstrapTokenFile, cfg.Auth = f, "on"
	}
	if (opts.Scenario == "query" || opts.Scenario == "oee") && !set["out-of-order-window"] {
		// The history is sent now with past event times: let the server
		// take all of it.
		cfg.OutOfOrderWindow = max(cfg.OutOfOrderWindow, opts.History+time.Hour)
	}
	if d := opts.WithDefaults(); !set["max-streams-per-client"] {
		// Every stream client of the bench comes from one IP: let the
		// server take them all (the default caps one client at 100).
		cfg.MaxStreamsPerClient = max(cfg.MaxStreamsPerClient, d.Clients+d.FleetClients)
	}
	if opts.Scenario == "twin" && cfg.MQTTListen == "" {
		cfg.MQTTListen = "127.0.0.1:0"
	}
	var logger *slog.Logger
	if serverLog != "" {
		f, err := os.Create(serverLog)
		if err != nil {
			return fmt.Errorf("creating server log: %w", err)
		}
		defer f.Close()
		logger = newLogger(f, cfg.LogLevel)
	} else {
		logger = newLogger(stderr, "error")
	}
	srvCtx, stopServer := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServer()
	a, err := app.New(srvCtx, cfg, logger, buildVersion())
	if err != nil {
		return fmt.Errorf("starting embedded server: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(srvCtx) }()
	opts.Target = "http://" + a.Addr().String()
	if addr := a.MQTTAddr(); addr != nil && opts.MQTT == "" {
		opts.MQTT = addr.String()
	}
	opts.Server = &benchmark.Process{}
	opts.Embedded = true
	berr := runBench(ctx, opts, asJSON, stdout)
	stopServer()
	if err := <-done; err != nil {
		return errors.Join(berr, fmt.Errorf("embedded server: %w", err))
	}
	return berr
}

// runBench runs the scenario and prints its result, also when it was cut
// short.
func runBench(ctx context.Context, opts benchmark.Options, asJSON bool, stdout io.Writer) error {
	res, err := benchmark.Run(ctx, opts)
	if res == nil {
		return err
	}
	if errors.Is(err, context.Canceled) {
		res.Notes = append(res.Notes, "interrupted: partial figures")
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if werr := enc.Encode(res); werr != nil {
			return errors.Join(err, werr)
		}
	} else if werr := benchmark.WriteTable(stdout, res); werr != nil {
		return errors.Join(err, werr)
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// isTerminal reports whether w is a character device (a terminal), where
// the progress line may overwrite itself.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// writeHeapProfile writes a heap profile (after a GC, so it shows live
// memory) to path.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating heap profile: %w", err)
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("writing heap profile: %w", err)
	}
	return f.Close()
}
