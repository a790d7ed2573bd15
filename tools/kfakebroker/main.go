// Command kfakebroker runs franz-go's kfake — a Kafka broker in memory that
// speaks the real protocol — as a process of its own, so that a
// development machine can run twinline's roles as separate processes
// against one broker (make bench-scale, tools/benchscale). It is a test
// broker: one process, no replication, nothing kept across restarts unless
// --data-dir is given. Never use it in production.
//
//	go run ./tools/kfakebroker --port 9092 --topic twinline.telemetry --partitions 8
//
// It prints the address of each broker, one a line, once they listen, and
// stops on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "kfakebroker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kfakebroker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Int("port", 9092, "port of the first broker on 127.0.0.1 (the others take the next ones); 0: any free port")
	brokers := fs.Int("brokers", 1, "brokers in the cluster")
	topics := fs.String("topic", "twinline.telemetry", "topics to create at start (comma-separated)")
	partitions := fs.Int("partitions", 8, "partitions of each topic created at start")
	dataDir := fs.String("data-dir", "", "keep the log in this directory across restarts (\"\": in memory only)")
	syncWrites := fs.Bool("sync-writes", false, "with --data-dir, fsync every write before acknowledging it (slower; Kafka itself relies on replication instead)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *brokers < 1 || *partitions < 1 || *port < 0 {
		return errors.New("--brokers and --partitions must be at least 1, --port at least 0")
	}
	if *syncWrites && *dataDir == "" {
		return errors.New("--sync-writes needs --data-dir")
	}
	opts := []kfake.Opt{kfake.NumBrokers(*brokers)}
	if *port > 0 {
		ports := make([]int, *brokers)
		for i := range ports {
			ports[i] = *port + i
		}
		opts = append(opts, kfake.Ports(ports...))
	}
	var names []string
	for t := range strings.SplitSeq(*topics, ",") {
		if t = strings.TrimSpace(t); t != "" {
			names = append(names, t)
		}
	}
	if len(names) > 0 {
		opts = append(opts, kfake.SeedTopics(int32(*partitions), names...))
	}
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir))
		if *syncWrites {
			opts = append(opts, kfake.SyncWrites())
		}
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("starting kfake: %w", err)
	}
	defer c.Close()
	for _, addr := range c.ListenAddrs() {
		fmt.Fprintln(stdout, addr)
	}
	<-ctx.Done()
	return nil
}
