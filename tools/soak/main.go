// Command soak runs the real twinline binary under a steady load for a
// long time (soak) or under faults (chaos), and checks that every event
// the server acknowledged is stored; or runs its roles as separate
// processes and benchmarks them (scale, scale.go).
//
//	go run ./tools/soak soak --duration 30m --rate 20000   # make soak
//	go run ./tools/soak chaos --duration 5m                 # make chaos
//	go run ./tools/soak chaos --duration 1m --faults kill --kills 3
//	go run ./tools/soak scale -- --scenario latency         # make bench-scale
//
// The load: an open-loop sender at --rate events/s (each event with its
// own id, so retries are idempotent; counted acknowledged only on a 2xx;
// 503s retried after Retry-After, broken connections after a backoff),
// and WebSocket stream clients — one machine each (?machine=ID), the
// whole fleet (?all=1) and the whole fleet conflated (?all=1&conflate=,
// when the server supports it) — that measure sensor → client latency
// from each sample's event time.
//
// Every --interval it records the server's RSS, Go heap in use,
// goroutines and open files, the acknowledged rate and the interval's
// stream latency p50/p99 per client group (CSV, and a PNG plot at the
// end). At the end every acknowledged event is counted back through the
// series API (count per machine, metric and 10 s bucket), and the verdict
// printed: soak — RSS drift, goroutines and open files flat, 0 lost;
// chaos — kills, restarts, outages, acknowledged, found, lost, duplicates.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// config is the run's configuration, from the flags.
type config struct {
	mode     string // soak or chaos
	duration time.Duration
	interval time.Duration
	rate     float64
	machines int
	metrics  int
	batch    int
	workers  int

	machineClients, fleetClients, conflateClients int
	conflate                                      time.Duration

	bin        string
	store      string
	pgAdminURL string
	redisAddr  string
	kafka      bool
	serverArgs []string

	faults      []string
	seed        uint64
	kills       int
	pgOutage    time.Duration
	redisOutage time.Duration
	kafkaDown   time.Duration
	stalled     int
	stallHold   time.Duration
	slowReaders int
	slowFor     time.Duration

	csvPath, pngPath string
	maxRSSDrift      float64
	settle           time.Duration
	keep             bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "scale" {
		sc, err := parseScaleFlags(os.Args[2:])
		if err == nil {
			err = runScale(ctx, sc, os.Stdout)
		}
		if err != nil {
			if !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintln(os.Stderr, "soak scale:", err)
			}
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:])
	if err == nil {
		err = run(ctx, cfg, os.Stdout)
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "soak:", err)
		}
		os.Exit(1)
	}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func parseFlags(args []string) (config, error) {
	var c config
	if len(args) == 0 || (args[0] != "soak" && args[0] != "chaos") {
		fmt.Fprintln(os.Stderr, "usage: soak soak|chaos|scale [flags]   (soak soak -h for the flags)")
		return c, errors.New("want a mode: soak, chaos or scale")
	}
	c.mode = args[0]
	chaos := c.mode == "chaos"
	fs := flag.NewFlagSet(c.mode, flag.ContinueOnError)
	dur := 30 * time.Minute
	if chaos {
		dur = 5 * time.Minute
	}
	fs.DurationVar(&c.duration, "duration", dur, "how long the load runs")
	fs.DurationVar(&c.interval, "interval", 10*time.Second, "how often the server's resources and the stream lag are recorded")
	fs.Float64Var(&c.rate, "rate", 20_000, "events per second sent")
	fs.IntVar(&c.machines, "machines", 100, "machines the events are spread over (at most 500 events/s each, so each one's event times stay distinct)")
	fs.IntVar(&c.metrics, "metrics", 2, "metrics per event")
	fs.IntVar(&c.batch, "batch", 200, "most events per request")
	fs.IntVar(&c.workers, "workers", 8, "concurrent HTTP senders")
	fs.IntVar(&c.machineClients, "machine-clients", 50, "stream clients subscribed to one machine each (?machine=ID)")
	fs.IntVar(&c.fleetClients, "fleet-clients", 2, "stream clients subscribed to every machine (?all=1)")
	fs.IntVar(&c.conflateClients, "conflate-clients", 2, "stream clients subscribed to every machine, conflated (?all=1&conflate=); plain ?all=1 when the server does not conflate")
	fs.DurationVar(&c.conflate, "conflate", 250*time.Millisecond, "the conflated clients' interval")
	fs.StringVar(&c.bin, "bin", "", "the twinline binary (default: go build ./cmd/twinline into the run's directory)")
	fs.StringVar(&c.store, "store", "embedded", "the server's store: embedded or postgres (a database of the run's own, created and dropped)")
	fs.StringVar(&c.pgAdminURL, "postgres-admin-url", "postgres://postgres@127.0.0.1:5432/postgres", "PostgreSQL where the run creates (and drops) its database")
	fs.StringVar(&c.redisAddr, "redis", "", "Redis address for the server's --redis-url (a key prefix of the run's own, deleted at the end); empty: none, unless the redis fault is chosen (then 127.0.0.1:6379)")
	fs.BoolVar(&c.kafka, "kafka", false, "run the event log on Kafka (kfake, in this process; needs --store postgres); implied by the kafka fault")
	fs.Var((*listFlag)(&c.serverArgs), "server-arg", "extra flag for twinline serve (repeatable), e.g. --server-arg=--stream-queue=64")
	defFaults := ""
	if chaos {
		defFaults = strings.Join(faults, ",")
	}
	fl := fs.String("faults", defFaults, "chaos scenarios, comma-separated: "+strings.Join(faults, ", ")+" (postgres and kafka need --store postgres, which they imply)")
	fs.Uint64Var(&c.seed, "seed", uint64(time.Now().UnixNano()), "random seed of the fault schedule (printed, to repeat a run)")
	fs.IntVar(&c.kills, "kills", 10, "kill -9 of the server (restarted on the same data directory), at random moments")
	fs.DurationVar(&c.pgOutage, "postgres-outage", 60*time.Second, "how long PostgreSQL is cut off")
	fs.DurationVar(&c.redisOutage, "redis-outage", 30*time.Second, "how long Redis is cut off")
	fs.DurationVar(&c.kafkaDown, "kafka-down", 5*time.Second, "how long the Kafka broker stays down when restarted")
	fs.IntVar(&c.stalled, "stalled", 200, "stalled sockets in the burst (a partial request body, then nothing)")
	fs.DurationVar(&c.stallHold, "stall-hold", 90*time.Second, "how long the stalled sockets are held open at most")
	fs.IntVar(&c.slowReaders, "slow-readers", 20, "stream clients reading one message every 2 s, for --slow-for")
	fs.DurationVar(&c.slowFor, "slow-for", 60*time.Second, "how long the slow readers stay")
	csvDef, pngDef := "", ""
	if !chaos {
		csvDef, pngDef = "docs/img/soak.csv", "docs/img/soak.png"
	}
	fs.StringVar(&c.csvPath, "csv", csvDef, "CSV file of the record (empty: none)")
	fs.StringVar(&c.pngPath, "png", pngDef, "PNG plot of the record (empty: none)")
	fs.Float64Var(&c.maxRSSDrift, "max-rss-drift", 10, "soak: most RSS drift after warm-up, in percent")
	fs.DurationVar(&c.settle, "settle", 2*time.Minute, "after the load: how long requests are still retried, and the store given to catch up, before the count")
	fs.BoolVar(&c.keep, "keep", false, "keep the run's directory (data, server log)")
	if err := fs.Parse(args[1:]); err != nil {
		return c, err
	}
	if *fl != "" {
		c.faults = strings.Split(*fl, ",")
	}
	var problems []error
	for _, f := range c.faults {
		switch f {
		case "kill", "stalled", "slow":
		case "postgres", "kafka":
			c.store = "postgres"
			c.kafka = c.kafka || f == "kafka"
		case "redis":
			if c.redisAddr == "" {
				c.redisAddr = "127.0.0.1:6379"
			}
		default:
			problems = append(problems, fmt.Errorf("unknown fault %q (want %s)", f, strings.Join(faults, ", ")))
		}
	}
	if !chaos && len(c.faults) > 0 {
		problems = append(problems, errors.New("--faults is for chaos runs"))
	}
	if c.store != "embedded" && c.store != "postgres" {
		problems = append(problems, fmt.Errorf("--store %q: want embedded or postgres", c.store))
	}
	if c.kafka && c.store != "postgres" {
		problems = append(problems, errors.New("--kafka needs --store postgres"))
	}
	if c.rate <= 0 || c.machines < 1 || c.metrics < 1 || c.batch < 1 || c.workers < 1 {
		problems = append(problems, errors.New("--rate, --machines, --metrics, --batch and --workers must be positive"))
	} else if c.rate/float64(c.machines) > 500 {
		problems = append(problems, fmt.Errorf("--rate %.0f over %d machines is more than 500 events/s per machine: raise --machines to at least %.0f", c.rate, c.machines, c.rate/500))
	}
	if c.machineClients > c.machines {
		problems = append(problems, fmt.Errorf("--machine-clients %d: at most one per machine (%d)", c.machineClients, c.machines))
	}
	if c.interval <= 0 || c.duration < c.interval {
		problems = append(problems, errors.New("--interval must be positive and at most --duration"))
	}
	return c, errors.Join(problems...)
}
