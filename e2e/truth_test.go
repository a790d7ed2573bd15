package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestAllReplicasOneTruth: two --role all replicas on Kafka (kfake, in this
// test process), PostgreSQL and Redis, events of each machine ingested
// through both. Each machine's partition is processed by one replica, so a
// window's final value and a metric's median are computed once: the
// streams of both replicas carry the same finals and medians, equal to
// PostgreSQL's aggregates and to the median of the samples it holds, and
// /latest answers the same median on both.
func TestAllReplicasOneTruth(t *testing.T) {
	const partitions, machines, perMachine, medianWindow = 4, 8, 12, 5
	dbURL := pgDatabase(t)
	prefix := redisPrefix(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, "twinline.telemetry"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close) // registered first: runs after the servers stopped
	// The rows layout: the test reads the samples and sample_aggs tables.
	args := []string{"--role", "all", "--store", "postgres", "--postgres-url", dbURL, "--postgres-layout", "rows",
		"--redis-url", "redis://" + redisAddr + "/0", "--redis-prefix", prefix,
		"--kafka-brokers", cluster.ListenAddrs()[0], "--kafka-session-timeout", "6s",
		"--median-window", fmt.Sprint(medianWindow)}
	// Two replicas on one host: each its own static member id (the
	// default, the hostname, would make the second fence the first).
	a := start(t, "", append(slices.Clone(args), "--kafka-instance-id", "all-a")...)
	b := start(t, "", append(slices.Clone(args), "--kafka-instance-id", "all-b")...)
	c := ctx(t, 120*time.Second)
	awaitReady(t, c, a)
	awaitReady(t, c, b)
	awaitBalanced(t, c, partitions, a, b)

	streamA := subscribe(t, c, a, "all=1", false)
	streamB := subscribe(t, c, b, "all=1", true)

	// Integral values: a sum does not depend on the order of addition.
	base := time.Now().Add(-5 * time.Minute).Truncate(10 * time.Second).UnixMilli()
	values := map[string][]float64{}
	for m := range machines {
		id := fmt.Sprintf("one-%d", m)
		for range perMachine {
			values[id] = append(values[id], float64(rand.IntN(100)))
		}
	}
	post := func(s *server, id string, from, to int) {
		t.Helper()
		var body bytes.Buffer
		for i := from; i < min(to, perMachine); i++ {
			fmt.Fprintf(&body, "{\"machineId\":%q,\"timestamp\":%d,\"temp\":%g}\n", id, base+int64(i)*700, values[id][i])
		}
		if to > perMachine { // a sample far ahead moves the watermark past the rest
			fmt.Fprintf(&body, "{\"machineId\":%q,\"timestamp\":%d,\"temp\":1000}\n", id, base+60_000)
		}
		if r := s.do("POST", "/api/v1/events", "application/x-ndjson", body.Bytes()); r.status != 202 {
			t.Fatalf("post to %s: %d %s", s.url, r.status, r.body)
		}
	}
	for id := range values { // half through each replica, in order
		post(a, id, 0, perMachine/2)
		post(b, id, perMachine/2, perMachine+1)
	}

	// The finals and the last median of every machine, on each stream.
	type window struct {
		Metric        string
		Start         int64
		Kind          string
		Count         int64
		Sum, Min, Max float64
	}
	type view struct {
		finals  map[string][]window // by machine
		medians map[string]float64  // the median covering the newest released sample
	}
	read := func(name string, ch <-chan message) view {
		v := view{finals: map[string][]window{}, medians: map[string]float64{}}
		last := base + int64(perMachine-1)*700
		done := func() bool {
			if len(v.medians) < machines {
				return false
			}
			for id := range values {
				if len(v.finals[id]) < windowsOf(base, perMachine) {
					return false
				}
			}
			return true
		}
		covered := map[string]bool{}
		for !done() || len(covered) < machines {
			m := nextData(t, c, ch, "windows", "median")
			if !strings.HasPrefix(m.Machine, "one-") {
				continue
			}
			switch m.Type {
			case "windows":
				for _, raw := range m.Windows {
					var w window
					if err := json.Unmarshal(raw, &w); err != nil {
						t.Fatal(err)
					}
					if w.Kind == "final" && w.Metric == "temp" {
						v.finals[m.Machine] = append(v.finals[m.Machine], w)
					}
				}
			case "median":
				var med struct {
					Metrics map[string]struct {
						Median float64 `json:"median"`
						T      int64   `json:"t"`
					} `json:"metrics"`
				}
				if err := json.Unmarshal(m.Data, &med); err != nil {
					t.Fatal(err)
				}
				if x, ok := med.Metrics["temp"]; ok {
					v.medians[m.Machine] = x.Median
					if x.T >= last {
						covered[m.Machine] = true
					}
				}
			}
		}
		return v
	}
	gotA, gotB := read("A", streamA), read("B", streamB)
	if diff := cmp.Diff(gotA.finals, gotB.finals); diff != "" {
		t.Errorf("final windows, stream of A vs B (-A +B):\n%s", diff)
	}
	if diff := cmp.Diff(gotA.medians, gotB.medians); diff != "" {
		t.Errorf("medians, stream of A vs B (-A +B):\n%s", diff)
	}

	conn, err := pgx.Connect(c, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for id := range values {
		// Each final appeared once per stream, and equals PostgreSQL's.
		var want []window
		rows, err := conn.Query(c, `SELECT (extract(epoch FROM bucket) * 1000)::bigint, count, sum, min, max
			FROM sample_aggs WHERE machine = $1 AND metric = 'temp' AND bucket < to_timestamp($2 / 1000.0) ORDER BY bucket`, id, base+60_000)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			w := window{Metric: "temp", Kind: "final"}
			if err := rows.Scan(&w.Start, &w.Count, &w.Sum, &w.Min, &w.Max); err != nil {
				t.Fatal(err)
			}
			want = append(want, w)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		got := slices.Clone(gotA.finals[id])
		slices.SortFunc(got, func(x, y window) int { return int(x.Start - y.Start) })
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("%s: final windows on the streams vs PostgreSQL's aggregates (-stream +postgres):\n%s", id, diff)
		}

		// The median equals that of the last samples PostgreSQL holds
		// before the one far ahead (not released yet), and /latest
		// answers it on both replicas.
		var held []float64
		rows, err = conn.Query(c, `SELECT value FROM samples WHERE machine = $1 AND metric = 'temp' AND time < to_timestamp($2 / 1000.0)
			ORDER BY time DESC LIMIT $3`, id, base+60_000, medianWindow)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var v float64
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
			held = append(held, v)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		want2 := median(held)
		if got := gotA.medians[id]; got != want2 {
			t.Errorf("%s: median on the streams %v, want %v (of %v held in PostgreSQL)", id, got, want2, held)
		}
		for _, s := range []*server{a, b} {
			var latest struct {
				Metrics map[string]struct {
					Median *float64 `json:"median"`
				} `json:"metrics"`
			}
			s.get("/api/v1/machines/"+id+"/latest").json(t, &latest)
			if m := latest.Metrics["temp"].Median; m == nil || *m != want2 {
				t.Errorf("%s: /latest median on %s = %v, want %v", id, s.url, m, want2)
			}
		}
	}
}

// windowsOf is the number of 10 s windows n samples 700 ms apart from base
// (a multiple of 10 s) fall in.
func windowsOf(base int64, n int) int {
	return int((int64(n-1)*700)/10_000) + 1
}

// median is the median of vs.
func median(vs []float64) float64 {
	s := slices.Sorted(slices.Values(vs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// awaitBalanced waits until the replicas' Kafka processors, as their logs
// tell, own all partitions between them, each some and none twice: the
// group is stable, and no partition moves while the test sends.
func awaitBalanced(t *testing.T, c context.Context, partitions int, servers ...*server) {
	t.Helper()
	for {
		owned := map[int32]int{}
		each := true
		for _, s := range servers {
			mine := assignedPartitions(s.logs.String())
			each = each && len(mine) > 0
			for p := range mine {
				owned[p]++
			}
		}
		balanced := each && len(owned) == partitions
		for _, n := range owned {
			balanced = balanced && n == 1
		}
		if balanced {
			return
		}
		select {
		case <-c.Done():
			t.Fatalf("the processors never shared the %d partitions; owners %v", partitions, owned)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// assignedPartitions replays a server's log of assigned and revoked
// partitions.
func assignedPartitions(logs string) map[int32]bool {
	mine := map[int32]bool{}
	for _, line := range strings.Split(logs, "\n") {
		var rec struct {
			Msg        string  `json:"msg"`
			Partitions []int32 `json:"partitions"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		switch rec.Msg {
		case "partitions assigned":
			for _, p := range rec.Partitions {
				mine[p] = true
			}
		case "partitions revoked":
			for _, p := range rec.Partitions {
				delete(mine, p)
			}
		}
	}
	return mine
}

// TestSecondAllReplicaRefused: a second --role all replica without Kafka on
// the same PostgreSQL store would compute partial windows and medians of
// the same machines: it refuses to start, naming the replica that
// processes and saying to use Kafka.
func TestSecondAllReplicaRefused(t *testing.T) {
	db := pgDatabase(t)
	args := []string{"--store", "postgres", "--postgres-url", db}
	start(t, "", args...)
	c := ctx(t, 60*time.Second)
	cmd := exec.CommandContext(c, binary, append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir()}, args...)...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("second replica: %v, want a non-zero exit:\n%s", err, out)
	}
	for _, want := range []string{"another replica processes the events of this PostgreSQL store", "--kafka-brokers", `"twinline all host=`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
}
