package main

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestBroker starts the broker on a free port, produces a record to the
// topic it created and reads it back, then stops it.
func TestBroker(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--port", "0", "--topic", "t1,t2", "--partitions", "3"}, pw, io.Discard)
		pw.Close()
	}()
	addr, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the address: %v", err)
	}
	go io.Copy(io.Discard, pr)
	addr = strings.TrimSpace(addr)

	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics("t2"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	if err := cl.ProduceSync(rctx, &kgo.Record{Topic: "t2", Key: []byte("m"), Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatalf("producing: %v", err)
	}
	var got []string
	for len(got) == 0 {
		fs := cl.PollFetches(rctx)
		if err := rctx.Err(); err != nil {
			t.Fatalf("reading back: %v", err)
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	if got[0] != "v" {
		t.Errorf("read %q, want v", got)
	}
	topics, err := kadm.NewClient(cl).ListTopics(rctx, "t1")
	if err != nil || len(topics["t1"].Partitions) != 3 {
		t.Errorf("t1: %+v (%v), want 3 partitions", topics["t1"], err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestFlags(t *testing.T) {
	// Cancelled: a broker that starts anyway stops at once, and the test
	// fails rather than waits.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, args := range [][]string{{"--partitions", "0"}, {"--sync-writes"}, {"--port", "-1"}} {
		if err := run(ctx, append([]string{"--port", "0"}, args...), io.Discard, io.Discard); err == nil {
			t.Errorf("run %v: no error", args)
		}
	}
}
