package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgAdminURL is the shared PostgreSQL of the development and CI machines.
const pgAdminURL = "postgres://postgres@127.0.0.1:5432/postgres"

// pgDatabase creates a database of the test's own on the local PostgreSQL
// and returns its URL; it is dropped when the test ends. Without PostgreSQL
// the test fails under CI=true and is skipped elsewhere.
func pgDatabase(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgAdminURL)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required on 127.0.0.1:5432 under CI: %v", err)
		}
		t.Skipf("PostgreSQL not reachable on 127.0.0.1:5432: %v", err)
	}
	defer conn.Close(context.Background())
	name := fmt.Sprintf("twinline_e2e_%d_%d", time.Now().UnixNano(), rand.Uint32())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pgAdminURL)
		if err != nil {
			t.Errorf("dropping %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})
	return "postgres://postgres@127.0.0.1:5432/" + name
}

// TestPostgresKill9KeepsAcknowledged: with --store postgres, every sample
// acknowledged before a kill -9 is there after the restart.
func TestPostgresKill9KeepsAcknowledged(t *testing.T) {
	kill9KeepsAcknowledged(t, "--store", "postgres", "--postgres-url", pgDatabase(t))
}

// TestPostgresAggregatesAfterReplay: the 10 s aggregates read back from
// PostgreSQL equal the distinct events', after a shuffled burst with
// duplicates sent twice.
func TestPostgresAggregatesAfterReplay(t *testing.T) {
	s := start(t, "", "--store", "postgres", "--postgres-url", pgDatabase(t))
	base := time.Now().Add(-5 * time.Minute).Truncate(10 * time.Second).UnixMilli()
	type ev struct {
		t int64
		v float64
	}
	var evs []ev
	for i := range 200 {
		evs = append(evs, ev{base + int64(i)*250, float64(rand.IntN(1000)) / 10})
	}
	want := map[int64]agg{}
	for _, e := range evs {
		b := e.t - e.t%10_000
		a := want[b]
		if a.Count == 0 {
			a.Min, a.Max = e.v, e.v
		}
		a.Count++
		a.Sum += e.v
		a.Min, a.Max = min(a.Min, e.v), max(a.Max, e.v)
		want[b] = a
	}
	for range 2 { // the replay must change nothing
		rand.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
		var body []byte
		for _, e := range evs {
			body = fmt.Appendf(body, "{\"machineId\":\"pg-agg\",\"timestamp\":%d,\"temp\":%g}\n", e.t, e.v)
		}
		if r := s.do("POST", "/api/v1/events", "application/x-ndjson", body); r.status != 202 {
			t.Fatalf("post: %d %s", r.status, r.body)
		}
	}
	got := map[int64]agg{}
	for _, fn := range []string{"count", "sum", "min", "max"} {
		var sr series
		s.get(fmt.Sprintf("/api/v1/machines/pg-agg/series?metric=temp&from=%d&to=%d&step=10s&agg=%s", base, base+60_000, fn)).json(t, &sr)
		for i, ts := range sr.T {
			a := got[ts]
			switch fn {
			case "count":
				a.Count = int64(sr.V[i])
			case "sum":
				a.Sum = sr.V[i]
			case "min":
				a.Min = sr.V[i]
			case "max":
				a.Max = sr.V[i]
			}
			got[ts] = a
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d windows, want %d", len(got), len(want))
	}
	for b, w := range want {
		g := got[b]
		if g.Count != w.Count || g.Min != w.Min || g.Max != w.Max || abs(g.Sum-w.Sum) > 1e-9*max(1, abs(w.Sum)) {
			t.Errorf("window %d: %+v, want %+v", b, g, w)
		}
	}
}

func abs(x float64) float64 { return max(x, -x) }

// TestPostgresReplicasShareRegistryAndNotes: two servers on one
// PostgreSQL (each with its own data directory; A processes, B is an api
// replica): a machine registered on A with thresholds is seen by B, and a
// note posted on A is listed by B.
func TestPostgresReplicasShareRegistryAndNotes(t *testing.T) {
	db := pgDatabase(t)
	a := start(t, "", "--store", "postgres", "--postgres-url", db)
	b := start(t, "", "--role", "api", "--store", "postgres", "--postgres-url", db,
		"--redis-url", "redis://"+redisAddr+"/0", "--redis-prefix", redisPrefix(t))
	if r := a.do("PUT", "/api/v1/machines/shared-1", "application/json", []byte(`{"name":"Press 1","site":"lyon","thresholds":{"temp":{"high":90}}}`)); r.status != 201 {
		t.Fatalf("PUT on A: %d %s", r.status, r.body)
	}
	if r := a.do("POST", "/api/v1/machines/shared-1/notes", "application/json", []byte(`{"text":"valve replaced","author":"ana"}`)); r.status != 201 {
		t.Fatalf("note on A: %d %s", r.status, r.body)
	}
	c := ctx(t, 30*time.Second)
	for {
		if r := b.get("/api/v1/machines/shared-1"); r.status == 200 {
			var m struct {
				Name       string
				Thresholds map[string]struct{ High float64 }
			}
			r.json(t, &m)
			if m.Name == "Press 1" && m.Thresholds["temp"].High == 90 {
				break
			}
		}
		select {
		case <-c.Done():
			t.Fatalf("B never saw A's registry write: %s", b.get("/api/v1/machines/shared-1").body)
		case <-time.After(20 * time.Millisecond):
		}
	}
	var list struct {
		Notes []struct{ Text, Author string }
	}
	b.get("/api/v1/machines/shared-1/notes").json(t, &list)
	if len(list.Notes) != 1 || list.Notes[0].Text != "valve replaced" {
		t.Errorf("notes on B: %+v, want A's note", list.Notes)
	}
}

// TestSeriesTransforms: fn=delta and fn=rolling_avg over raw samples give
// the same answer on the embedded store (computed in Go) and on PostgreSQL
// (SQL window functions).
func TestSeriesTransforms(t *testing.T) {
	stores := map[string][]string{
		"embedded": nil,
		"postgres": {"--store", "postgres", "--postgres-url", pgDatabase(t)},
	}
	for name, args := range stores {
		t.Run(name, func(t *testing.T) {
			s := start(t, "", args...)
			base := time.Now().Add(-time.Minute).UnixMilli()
			var body []byte
			for i, v := range []float64{10, 13, 7, 7, 12} {
				body = fmt.Appendf(body, "{\"machineId\":\"tf-1\",\"timestamp\":%d,\"cycles\":%g}\n", base+int64(i)*1000, v)
			}
			if r := s.do("POST", "/api/v1/events", "application/x-ndjson", body); r.status != 202 {
				t.Fatalf("post: %d %s", r.status, r.body)
			}
			for q, want := range map[string][]float64{
				"fn=delta":                 {3, -6, 0, 5},
				"fn=rolling_avg&window=2":  {10, 11.5, 10, 7, 9.5},
				"fn=rolling_avg&window=10": {10, 11.5, 10, 9.25, 9.8},
			} {
				var sr series
				s.get(fmt.Sprintf("/api/v1/machines/tf-1/series?metric=cycles&from=%d&to=%d&%s", base, base+10_000, q)).json(t, &sr)
				if len(sr.V) != len(want) {
					t.Fatalf("%s: %v, want %v", q, sr.V, want)
				}
				for i := range want {
					if abs(sr.V[i]-want[i]) > 1e-9 {
						t.Errorf("%s: %v, want %v", q, sr.V, want)
						break
					}
				}
			}
			if r := s.get("/api/v1/machines/tf-1/series?metric=cycles&fn=median"); r.status != 400 {
				t.Errorf("fn=median: %d, want 400", r.status)
			}
		})
	}
}
