package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/tcpproxy"
	"github.com/twmb/franz-go/pkg/kfake"
)

// faults are the chaos scenarios, in the order of the help text.
var faults = []string{"kill", "postgres", "redis", "kafka", "stalled", "slow"}

// fault is one scheduled action of a chaos run.
type fault struct {
	at   time.Duration // after the load started
	name string
	do   func(ctx context.Context) error
}

// killTimes returns n moments in [lo, hi), random (seeded) but at least
// gap apart, sorted.
func killTimes(r *rand.Rand, n int, lo, hi, gap time.Duration) []time.Duration {
	if n <= 0 || hi <= lo {
		return nil
	}
	slot := (hi - lo) / time.Duration(n)
	out := make([]time.Duration, n)
	for i := range out {
		// One kill per slot, anywhere in it but the last gap.
		span := max(slot-gap, time.Millisecond)
		out[i] = lo + time.Duration(i)*slot + time.Duration(r.Int64N(int64(span)))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// proxyTB lets the soak tool use internal/tcpproxy, whose constructor
// takes a testing.TB for its cleanup and its fatal error: the embedded
// interface is nil, only the three methods New calls are provided.
type proxyTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
}

type proxyFatal struct{ msg string }

func (t *proxyTB) Helper()                           {}
func (t *proxyTB) Fatalf(format string, args ...any) { panic(proxyFatal{fmt.Sprintf(format, args...)}) }
func (t *proxyTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

// close runs the cleanups, last registered first.
func (t *proxyTB) close() {
	t.mu.Lock()
	cs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for _, f := range slices.Backward(cs) {
		f()
	}
}

// newProxy starts a proxy to target, closed by tb.close.
func newProxy(tb *proxyTB, target string) (p *tcpproxy.Proxy, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(proxyFatal)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("starting a proxy to %s: %s", target, f.msg)
		}
	}()
	return tcpproxy.New(tb, target), nil
}

// outage cuts a proxy for d.
func outage(p *tcpproxy.Proxy, d time.Duration, count *atomic.Int64) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		p.Cut()
		count.Add(1)
		defer p.Restore()
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		return nil
	}
}

// kafkaBroker is the in-process Kafka cluster (kfake), persisted to a
// directory so that it can be restarted on the same port with its log.
type kafkaBroker struct {
	dir, topic string
	port       int
	mu         sync.Mutex
	c          *kfake.Cluster
}

func startKafka(dir, topic string) (*kafkaBroker, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, p, _ := net.SplitHostPort(addr)
	var port int
	fmt.Sscan(p, &port)
	k := &kafkaBroker{dir: dir, topic: topic, port: port}
	return k, k.open()
}

func (k *kafkaBroker) open() error {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(k.port), kfake.DataDir(k.dir), kfake.SyncWrites(),
		kfake.SeedTopics(4, k.topic))
	if err != nil {
		return fmt.Errorf("starting kfake: %w", err)
	}
	k.mu.Lock()
	k.c = c
	k.mu.Unlock()
	return nil
}

func (k *kafkaBroker) addr() string { return fmt.Sprintf("127.0.0.1:%d", k.port) }

// restart closes the broker (it saves its state) and opens it again on
// the same port after down.
func (k *kafkaBroker) restart(down time.Duration, count *atomic.Int64) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		k.close()
		count.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(down):
		}
		var err error
		for range 50 { // the port may linger a moment
			if err = k.open(); err == nil {
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return fmt.Errorf("restarting kafka: %w", err)
	}
}

func (k *kafkaBroker) close() {
	k.mu.Lock()
	c := k.c
	k.c = nil
	k.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// stalledBurst opens n connections that each send the headers of an
// ingest request and part of its body, then nothing, and holds them until
// the server closes them or hold passes. It counts those the server
// closed.
func stalledBurst(addr string, n int, hold time.Duration, closedByServer, opened *atomic.Int64) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, hold)
		defer cancel()
		var wg sync.WaitGroup
		for range n {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				continue
			}
			opened.Add(1)
			fmt.Fprintf(c, "POST /api/v1/events HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[{\"machineId\":\"stalled\",", addr)
			stop := context.AfterFunc(ctx, func() { c.Close() })
			wg.Go(func() {
				defer stop()
				defer c.Close()
				_, err := io.Copy(io.Discard, c)
				if ctx.Err() == nil && (err == nil || !strings.Contains(err.Error(), "use of closed")) {
					closedByServer.Add(1)
				}
			})
		}
		wg.Wait()
		return nil
	}
}

// logTo prints a line of the chaos timeline.
func logTo(w io.Writer, start time.Time, format string, args ...any) {
	fmt.Fprintf(w, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}
