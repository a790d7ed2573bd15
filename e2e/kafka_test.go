package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestKafkaExactlyOnce: a gateway and two processors, separate twinline
// processes, on a Kafka cluster (kfake, in this test process: the real
// protocol) and PostgreSQL. Events go in shuffled, with duplicates, while
// one processor is killed with kill -9 and restarted. Afterwards every
// distinct sample is in PostgreSQL exactly once and the 10 s aggregates
// equal the oracle's.
func TestKafkaExactlyOnce(t *testing.T) {
	dbURL := pgDatabase(t)
	prefix := redisPrefix(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "twinline.telemetry"))
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the servers start, so it runs after they stopped.
	t.Cleanup(cluster.Close)
	brokers := cluster.ListenAddrs()[0]
	common := []string{"--kafka-brokers", brokers, "--kafka-session-timeout", "6s"}
	// The rows layout: the test reads the samples and sample_aggs tables.
	processor := append([]string{"--role", "processor", "--store", "postgres", "--postgres-url", dbURL, "--postgres-layout", "rows",
		"--redis-url", "redis://" + redisAddr + "/0", "--redis-prefix", prefix}, common...)
	gw := start(t, "", append([]string{"--role", "gateway"}, common...)...)
	// Two processors on one host: each needs an instance id of its own (the
	// default, the host name, would make them fence each other); p1 comes
	// back under its own after the kill, and takes its partitions back at
	// once (static membership).
	p1args := append(slices.Clone(processor), "--kafka-instance-id", "p1")
	p1dir := t.TempDir()
	p1 := start(t, p1dir, p1args...)
	start(t, "", append(slices.Clone(processor), "--kafka-instance-id", "p2")...)

	// The oracle: distinct events (machine, time) with one value each,
	// then an arrival order with about a third sent twice.
	type ev struct {
		machine string
		t       int64
		v       float64
	}
	base := time.Now().Add(-20 * time.Minute).Truncate(10 * time.Second).UnixMilli()
	var events []ev
	for m := range 6 {
		for i := range 300 {
			events = append(events, ev{fmt.Sprintf("kx-%d", m), base + int64(i)*1000, float64(rand.IntN(10_000)) / 100})
		}
	}
	arrival := append([]ev(nil), events...)
	for _, e := range events {
		if rand.IntN(3) == 0 {
			arrival = append(arrival, e)
		}
	}
	rand.Shuffle(len(arrival), func(i, j int) { arrival[i], arrival[j] = arrival[j], arrival[i] })

	const batch = 100
	killAt, restartAt := len(arrival)/3/batch, 2*len(arrival)/3/batch
	for b := 0; b*batch < len(arrival); b++ {
		switch b {
		case killAt:
			p1.kill()
		case restartAt:
			p1 = start(t, p1dir, p1args...)
		}
		var body bytes.Buffer
		for _, e := range arrival[b*batch : min((b+1)*batch, len(arrival))] {
			fmt.Fprintf(&body, "{\"machineId\":%q,\"timestamp\":%d,\"temp\":%g}\n", e.machine, e.t, e.v)
		}
		if r := gw.do("POST", "/api/v1/events", "application/x-ndjson", body.Bytes()); r.status != 202 {
			t.Fatalf("batch %d: %d %s", b, r.status, r.body)
		}
	}

	type key struct {
		machine string
		bucket  int64
	}
	want := map[key]agg{}
	for _, e := range events {
		k := key{e.machine, e.t - e.t%10_000}
		a := want[k]
		if a.Count == 0 {
			a.Min, a.Max = e.v, e.v
		}
		a.Count++
		a.Sum += e.v
		a.Min, a.Max = min(a.Min, e.v), max(a.Max, e.v)
		want[k] = a
	}

	c := ctx(t, 120*time.Second)
	conn, err := pgx.Connect(c, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// Wait until the processors caught up with every distinct sample.
	for {
		var n int
		if err := conn.QueryRow(c, `SELECT count(*) FROM samples WHERE machine LIKE 'kx-%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == len(events) {
			break
		}
		if n > len(events) {
			t.Fatalf("%d raw samples stored, more than the %d distinct ones", n, len(events))
		}
		select {
		case <-c.Done():
			t.Fatalf("only %d of %d samples stored", n, len(events))
		case <-time.After(100 * time.Millisecond):
		}
	}
	var doubled int
	if err := conn.QueryRow(c, `SELECT count(*) FROM (SELECT 1 FROM samples GROUP BY machine, metric, time HAVING count(*) > 1) d`).Scan(&doubled); err != nil {
		t.Fatal(err)
	}
	if doubled != 0 {
		t.Errorf("%d samples stored more than once", doubled)
	}
	rows, err := conn.Query(c, `SELECT machine, (extract(epoch FROM bucket) * 1000)::bigint, count, sum, min, max FROM sample_aggs WHERE machine LIKE 'kx-%' AND metric = 'temp'`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[key]agg{}
	for rows.Next() {
		var k key
		var a agg
		if err := rows.Scan(&k.machine, &k.bucket, &a.Count, &a.Sum, &a.Min, &a.Max); err != nil {
			t.Fatal(err)
		}
		got[k] = a
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("%d aggregate rows, want %d", len(got), len(want))
	}
	for k, w := range want {
		g := got[k]
		if g.Count != w.Count || g.Min != w.Min || g.Max != w.Max || abs(g.Sum-w.Sum) > 1e-6 {
			t.Errorf("%s @ %d: %+v, want %+v", k.machine, k.bucket, g, w)
		}
	}
}
