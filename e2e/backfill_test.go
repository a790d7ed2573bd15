package e2e

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestBackfillInfluxClientEmbedded: see backfillInfluxClient.
func TestBackfillInfluxClientEmbedded(t *testing.T) {
	backfillInfluxClient(t, start(t, "", "--lateness", "0s"), 8)
}

// TestBackfillInfluxClientPostgres: see backfillInfluxClient.
func TestBackfillInfluxClientPostgres(t *testing.T) {
	backfillInfluxClient(t, start(t, "", "--lateness", "0s", "--store", "postgres", "--postgres-url", pgDatabase(t)), 8)
}

// TestBackfillInfluxClientKafka: see backfillInfluxClient; Kafka (kfake)
// as the event log, PostgreSQL as the store, one process.
func TestBackfillInfluxClientKafka(t *testing.T) {
	dbURL := pgDatabase(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "twinline.telemetry"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close) // after the server stopped
	backfillInfluxClient(t, start(t, "", "--lateness", "0s", "--store", "postgres", "--postgres-url", dbURL,
		"--kafka-brokers", cluster.ListenAddrs()[0], "--kafka-session-timeout", "6s"), 4)
}

// tsbsFile is a TSBS-iot-shaped line-protocol file: trucks with eight
// tags, a readings line (7 fields) and a diagnostics line (3, one an
// integer) every 10 s for an hour from start, as tsbs_generate_data
// writes it (nanosecond timestamps). want holds every point it carries,
// by machine and metric.
type tsbsFile struct {
	lines []string
	want  map[string]map[string]series
}

func newTSBSFile(trucks int, start time.Time) tsbsFile {
	f := tsbsFile{want: map[string]map[string]series{}}
	r := rand.New(rand.NewPCG(18, 33))
	fleets, models := []string{"East", "West", "North", "South"}, []string{"F-150", "G-2000", "H-2"}
	num := func(lo, hi float64) float64 { return math.Round((lo+r.Float64()*(hi-lo))*100) / 100 }
	for i := range trucks {
		name := fmt.Sprintf("truck_%d", i)
		tags := fmt.Sprintf("name=%s,fleet=%s,driver=Driver\\ %d,model=%s,device_version=v1.%d,load_capacity=1500,fuel_capacity=150,nominal_fuel_consumption=12",
			name, fleets[i%len(fleets)], i, models[i%len(models)], i%5)
		f.want[name] = map[string]series{}
		add := func(metric string, ts int64, v float64) {
			s := f.want[name][metric]
			s.T, s.V = append(s.T, ts), append(s.V, v)
			f.want[name][metric] = s
		}
		for k := range 360 {
			at := start.Add(time.Duration(k) * 10 * time.Second)
			var fields []string
			for _, m := range []struct {
				name   string
				lo, hi float64
			}{{"latitude", -90, 90}, {"longitude", -180, 180}, {"elevation", 0, 5000}, {"velocity", 0, 100}, {"heading", 0, 360}, {"grade", 0, 100}, {"fuel_consumption", 0, 50}} {
				v := num(m.lo, m.hi)
				fields = append(fields, m.name+"="+strconv.FormatFloat(v, 'f', -1, 64))
				add("readings_"+m.name, at.UnixMilli(), v)
			}
			f.lines = append(f.lines, fmt.Sprintf("readings,%s %s %d", tags, strings.Join(fields, ","), at.UnixNano()))
			fuel, load, status := num(0, 1), num(0, 5000), r.IntN(5)
			add("diagnostics_fuel_state", at.UnixMilli(), fuel)
			add("diagnostics_current_load", at.UnixMilli(), load)
			add("diagnostics_status", at.UnixMilli(), float64(status))
			f.lines = append(f.lines, fmt.Sprintf("diagnostics,%s fuel_state=%s,current_load=%s,status=%di %d", tags,
				strconv.FormatFloat(fuel, 'f', -1, 64), strconv.FormatFloat(load, 'f', -1, 64), status, at.UnixNano()))
		}
	}
	return f
}

// backfillInfluxClient: a TSBS-style file dated 20 days ago, loaded
// through the unmodified InfluxDB client library into a server that is
// taking live data, is stored whole — every point queryable, exactly —
// and is backfill: nothing of it on the live stream, no alarm for the
// past although its values cross a threshold, no latest value in the
// twin (ADR 0033).
func backfillInfluxClient(t *testing.T, s *server, trucks int) {
	c := ctx(t, 5*time.Minute)
	// Thresholds the backfill crosses on half its readings, and one for
	// the live sentinel below. (A threshold judges samples from its own
	// creation on, so the alarm list stays empty here either way; that the
	// backfill reaches no alarm evaluation at all is TestBackfill's, in
	// internal/pipeline.)
	for _, m := range []string{"truck_0", "truck_1"} {
		if r := s.do("PUT", "/api/v1/machines/"+m, "application/json", []byte(`{"thresholds":{"readings_velocity":{"high":50}}}`)); r.status != 201 {
			t.Fatalf("PUT %s: %d %s", m, r.status, r.body)
		}
	}
	if r := s.do("PUT", "/api/v1/machines/sentinel", "application/json", []byte(`{"thresholds":{"temp":{"high":90}}}`)); r.status != 201 {
		t.Fatalf("PUT sentinel: %d %s", r.status, r.body)
	}
	stream := subscribe(t, c, s, "all=1", false)
	// The server is live: its store's head is at the present.
	if r := s.do("POST", "/api/v1/events", "application/json", []byte(`{"machineId":"warmup","temp":20}`)); r.status != 202 {
		t.Fatalf("live event: %d %s", r.status, r.body)
	}

	start := time.Now().Add(-20 * 24 * time.Hour).Truncate(10 * time.Second)
	file := newTSBSFile(trucks, start)
	client := influxdb2.NewClient(s.url, "any-token")
	defer client.Close()
	w := client.WriteAPIBlocking("acme", "tsbs")
	const batch = 1000 // lines per request, as tsbs_load_influx sends them
	for i := 0; i < len(file.lines); i += batch {
		if err := w.WriteRecord(c, file.lines[i:min(i+batch, len(file.lines))]...); err != nil {
			t.Fatalf("WriteRecord (lines %d…): %v", i, err)
		}
	}

	// Every point, exactly (under Kafka the 204 means durable in Kafka:
	// stored within the consumer's lag).
	from, to := start.Add(-time.Minute).UnixMilli(), start.Add(2*time.Hour).UnixMilli()
	query := func(machine, metric string) series {
		r := s.get(fmt.Sprintf("/api/v1/machines/%s/series?metric=%s&from=%d&to=%d", machine, metric, from, to))
		if r.status == 404 {
			return series{} // under Kafka: not stored yet
		}
		if r.status != 200 {
			t.Fatalf("series %s %s: %d %s", machine, metric, r.status, r.body)
		}
		var got series
		r.json(t, &got)
		return got
	}
	waitFor(t, "the whole backfill stored", time.Minute, func() bool {
		for machine, metrics := range file.want {
			for metric, want := range metrics {
				if len(query(machine, metric).T) < len(want.T) {
					return false
				}
			}
		}
		return true
	})
	points := 0
	for machine, metrics := range file.want {
		for metric, want := range metrics {
			got := query(machine, metric)
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("%s %s (-got +want):\n%s", machine, metric, diff)
			}
			points += len(got.T)
		}
	}
	if want := trucks * 360 * 10; points != want {
		t.Errorf("%d points queried back, want %d", points, want)
	}

	// A live reading over its threshold: its alarm comes after anything
	// the backfill could have pushed (the backfill was stored, so
	// processed, first).
	if r := s.do("POST", "/api/v1/events", "application/json", []byte(`{"machineId":"sentinel","temp":95}`)); r.status != 202 {
		t.Fatalf("sentinel: %d %s", r.status, r.body)
	}
	var pushed []string
	for done := false; !done; {
		select {
		case m, ok := <-stream:
			if !ok {
				t.Fatal("stream ended before the sentinel's alarm")
			}
			if strings.HasPrefix(m.Machine, "truck_") {
				switch m.Type {
				case "samples", "windows", "median", "alarm", "status":
					pushed = append(pushed, m.Type+" "+m.Machine)
				}
			}
			done = m.Type == "alarm" && m.Machine == "sentinel"
		case <-c.Done():
			t.Fatal("no alarm for the sentinel on the stream")
		}
	}
	if len(pushed) > 0 {
		t.Errorf("the backfill was pushed live: %d messages: %q", len(pushed), pushed[:min(len(pushed), 10)])
	}
	for _, m := range []string{"truck_0", "truck_1"} {
		var list struct {
			Alarms []alarm `json:"alarms"`
		}
		s.get("/api/v1/alarms?state=all&machine="+m).json(t, &list)
		if len(list.Alarms) > 0 {
			t.Errorf("alarms of %s for the past: %+v", m, list.Alarms)
		}
	}
	// The machines are registered (listed in the fleet), with nothing
	// live: no latest values.
	for i := range trucks {
		machine := fmt.Sprintf("truck_%d", i)
		r := s.get("/api/v1/machines/" + machine + "/latest")
		if r.status != 200 {
			t.Errorf("%s/latest: %d %s, want the machine registered", machine, r.status, r.body)
			continue
		}
		var latest struct {
			Metrics map[string]struct{ Value float64 }
		}
		r.json(t, &latest)
		if len(latest.Metrics) > 0 {
			t.Errorf("the twin's latest values of %s come from the backfill: %+v", machine, latest.Metrics)
		}
	}

	// Its aggregates are stored too (the windows are stored, not pushed):
	// per-minute maxima and counts equal those of the points sent.
	for _, agg := range []string{"max", "count"} {
		want := series{}
		raw := file.want["truck_0"]["readings_velocity"]
		for i, ts := range raw.T {
			bucket := ts - ts%60_000
			if n := len(want.T); n == 0 || want.T[n-1] != bucket {
				want.T, want.V = append(want.T, bucket), append(want.V, 0)
			}
			if n := len(want.V) - 1; agg == "count" {
				want.V[n]++
			} else if raw.V[i] > want.V[n] || want.V[n] == 0 {
				want.V[n] = raw.V[i]
			}
		}
		var got series
		s.get(fmt.Sprintf("/api/v1/machines/truck_0/series?metric=readings_velocity&from=%d&to=%d&step=60s&agg=%s", from, to, agg)).json(t, &got)
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("truck_0 readings_velocity per-minute %s (-got +want):\n%s", agg, diff)
		}
	}

	// The backfill is counted as such.
	backfilled := -1.0
	for _, line := range strings.Split(string(s.get("/metrics").body), "\n") {
		if rest, ok := strings.CutPrefix(line, "twinline_backfill_samples_total{"); ok {
			_, v, _ := strings.Cut(rest, "} ")
			backfilled, _ = strconv.ParseFloat(v, 64)
		}
	}
	if want := float64(trucks * 360 * 10); backfilled != want {
		t.Errorf("twinline_backfill_samples_total = %g, want %g", backfilled, want)
	}
}

// TestBackfillRate measures a TSBS-style load (100 trucks, an hour at
// 10 s: 72 000 lines, 360 000 points) through the InfluxDB client, dated
// 2 h ago (the live path: stream, twin, engine) and 20 days ago
// (backfill), alternating, each on a fresh server that took one live
// event first. It asserts nothing: its
// figures are in docs/benchmarks.md ("Issue 18 — Backfill").
//
//	TWINLINE_E2E_LOAD=1 TWINLINE_BACKFILL_STORE=postgres go test -run TestBackfillRate -v ./e2e
func TestBackfillRate(t *testing.T) {
	if os.Getenv("TWINLINE_E2E_LOAD") == "" {
		t.Skip("a measurement: run with TWINLINE_E2E_LOAD=1")
	}
	const trucks, rounds = 100, 3
	for round := range rounds {
		for _, c := range []struct {
			name string
			age  time.Duration
		}{{"live", 2 * time.Hour}, {"backfill", 20 * 24 * time.Hour}} {
			args := []string{}
			if os.Getenv("TWINLINE_BACKFILL_STORE") == "postgres" {
				args = append(args, "--store", "postgres", "--postgres-url", pgDatabase(t))
			}
			s := start(t, "", args...)
			// A server taking live data: the embedded store's head is at
			// the present, so the backfill is out of order for it.
			if r := s.do("POST", "/api/v1/events", "application/json", []byte(`{"machineId":"warmup","temp":20}`)); r.status != 202 {
				t.Fatalf("live event: %d %s", r.status, r.body)
			}
			file := newTSBSFile(trucks, time.Now().Add(-c.age).Truncate(10*time.Second))
			client := influxdb2.NewClient(s.url, "any-token")
			w := client.WriteAPIBlocking("acme", "tsbs")
			const batch, workers = 5000, 4
			began := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for k := range workers {
				wg.Go(func() {
					for i := k * batch; i < len(file.lines); i += workers * batch {
						if err := w.WriteRecord(ctx(t, time.Minute), file.lines[i:min(i+batch, len(file.lines))]...); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			took := time.Since(began)
			client.Close()
			close(errs)
			if err := <-errs; err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			t.Logf("round %d %-8s %d points in %v: %.0f points/s", round, c.name, trucks*360*10, took.Round(time.Millisecond), float64(trucks*360*10)/took.Seconds())
			s.stop()
		}
	}
}

// TestBackfillMQTT: a message dated 20 days ago, published with QoS 1 to
// the embedded broker, is acknowledged once stored, queryable, and
// counted as backfill; one older than the retention is refused.
func TestBackfillMQTT(t *testing.T) {
	mqttAddr := freeAddr(t)
	s := start(t, "", "--mqtt-listen", mqttAddr)
	c := ctx(t, 30*time.Second)
	conn, err := net.Dial("tcp", mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	client := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "e2e-backfill"})
	if ca, err := client.Connect(c, &paho.Connect{ClientID: "e2e-backfill", KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer client.Disconnect(&paho.Disconnect{})
	publish := func(payload string) byte {
		t.Helper()
		pr, err := client.Publish(c, &paho.Publish{Topic: "twinline/lyon/line-a/mq-old/telemetry", QoS: 1, Payload: []byte(payload)})
		if pr == nil {
			t.Fatalf("publish: %v", err)
		}
		return pr.ReasonCode
	}
	if rc := publish(`{"temp":20}`); rc != 0 { // live: the store's head is now
		t.Fatalf("live publish: reason code %#x", rc)
	}
	old := time.Now().Add(-20 * 24 * time.Hour).Truncate(time.Second)
	var lines []string
	for i := range 3 {
		lines = append(lines, fmt.Sprintf("env temp=%d %d", 60+i, old.Add(time.Duration(i)*10*time.Second).UnixNano()))
	}
	if rc := publish(strings.Join(lines, "\n")); rc != 0 {
		t.Fatalf("backfill publish: reason code %#x", rc)
	}
	if rc := publish(fmt.Sprintf("env temp=1 %d", time.Now().Add(-31*24*time.Hour).UnixNano())); rc < 0x80 {
		t.Errorf("beyond the retention: reason code %#x, want a failure", rc)
	}
	got := s.series("mq-old", "env_temp")
	want := series{T: []int64{old.UnixMilli(), old.UnixMilli() + 10_000, old.UnixMilli() + 20_000}, V: []float64{60, 61, 62}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("backfill after the PUBACK (-got +want):\n%s", diff)
	}
	if !strings.Contains(string(s.get("/metrics").body), `twinline_backfill_samples_total{log="memory"} 3`) {
		t.Error("/metrics does not count 3 backfill samples")
	}
}
