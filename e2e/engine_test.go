package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type agg struct {
	Count         int64
	Sum, Min, Max float64
}

// TestShuffledDuplicatedBurst: events shuffled and sent with duplicates, in
// one request and across many; the responses count the duplicates, the
// 10 s aggregates read back over HTTP and the live window messages equal
// the aggregates of the distinct events.
func TestShuffledDuplicatedBurst(t *testing.T) {
	s := start(t, "")
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Now().Add(-10 * time.Minute).Truncate(10 * time.Second).UnixMilli()

	for _, tc := range []struct {
		machine  string
		requests int
	}{{"burst-one", 1}, {"burst-many", 17}} {
		t.Run(tc.machine, func(t *testing.T) {
			c := ctx(t, 60*time.Second)
			live := subscribe(t, c, s, "machine="+tc.machine, true)
			// 150 distinct events, one a second over 150 s, then 60 resent.
			type event struct {
				ID    string  `json:"id"`
				M     string  `json:"machineId"`
				TS    int64   `json:"timestamp"`
				Value float64 `json:"temp"`
			}
			var events []event
			want := map[int64]agg{}
			for i := range 150 {
				ev := event{ID: fmt.Sprintf("%s-%d", tc.machine, i), M: tc.machine, TS: base + int64(i)*1000, Value: float64(rng.IntN(100))}
				events = append(events, ev)
				start := ev.TS - ev.TS%10000
				a, ok := want[start]
				if !ok {
					a = agg{Min: ev.Value, Max: ev.Value}
				}
				a.Count++
				a.Sum += ev.Value
				a.Min, a.Max = min(a.Min, ev.Value), max(a.Max, ev.Value)
				want[start] = a
			}
			sent := append([]event{}, events...)
			for range 60 {
				sent = append(sent, events[rng.IntN(len(events))])
			}
			rng.Shuffle(len(sent), func(i, j int) { sent[i], sent[j] = sent[j], sent[i] })

			var accepted, duplicates int
			for k := range tc.requests {
				lo, hi := k*len(sent)/tc.requests, (k+1)*len(sent)/tc.requests
				var body bytes.Buffer
				for _, ev := range sent[lo:hi] {
					json.NewEncoder(&body).Encode(ev)
				}
				r := s.do("POST", "/api/v1/events", "application/x-ndjson", body.Bytes())
				if r.status != 202 {
					t.Fatalf("post: %d %s", r.status, r.body)
				}
				var res struct{ Accepted, Duplicates int }
				r.json(t, &res)
				accepted += res.Accepted
				duplicates += res.Duplicates
			}
			if accepted != 150 || duplicates != 60 {
				t.Errorf("accepted %d, duplicates %d; want 150, 60", accepted, duplicates)
			}

			// History, aggregated by the store.
			got := map[int64]agg{}
			for _, fn := range []string{"count", "sum", "min", "max"} {
				var sr series
				r := s.get(fmt.Sprintf("/api/v1/machines/%s/series?metric=temp&from=%d&to=%d&step=10s&agg=%s", tc.machine, base, base+200_000, fn))
				if r.status != 200 {
					t.Fatalf("series: %d %s", r.status, r.body)
				}
				r.json(t, &sr)
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
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("stored 10 s aggregates (-got +want):\n%s", diff)
			}

			// Live windows: once the machine is quiet for the lateness, its
			// windows close. Per window, the last final or correction plus
			// every late aggregate must add up to the distinct events' (a
			// window whose samples all came after its grace has only lates).
			finals, lates := map[int64]agg{}, map[int64]agg{}
			merge := func(x, y agg) agg {
				if x.Count == 0 {
					return y
				}
				return agg{x.Count + y.Count, x.Sum + y.Sum, min(x.Min, y.Min), max(x.Max, y.Max)}
			}
			merged := func() map[int64]agg {
				out := map[int64]agg{}
				for k, v := range finals {
					out[k] = v
				}
				for k, v := range lates {
					out[k] = merge(out[k], v)
				}
				return out
			}
			for !cmp.Equal(merged(), want) {
				select {
				case m, ok := <-live:
					if !ok {
						t.Fatal("stream ended")
					}
					if m.Type != "windows" {
						continue
					}
					for _, raw := range m.Windows {
						var w struct {
							Start         int64
							Kind          string
							Count         int64
							Sum, Min, Max float64
						}
						if err := json.Unmarshal(raw, &w); err != nil {
							t.Fatal(err)
						}
						a := agg{w.Count, w.Sum, w.Min, w.Max}
						if w.Kind == "late" {
							lates[w.Start] = merge(lates[w.Start], a)
						} else {
							finals[w.Start] = a
						}
					}
				case <-c.Done():
					t.Fatalf("live windows (-got +want):\n%s", cmp.Diff(merged(), want))
				}
			}
		})
	}
}

// TestMedianAfterRestart: a restarted server rebuilds each metric's median
// from the stored samples.
func TestMedianAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	base := time.Now().Add(-30 * time.Second).UnixMilli()
	var body bytes.Buffer
	for i := range 10 {
		fmt.Fprintf(&body, "{\"machineId\":\"med-1\",\"timestamp\":%d,\"temp\":%d}\n", base+int64(i)*1000, i+1)
	}
	if r := s.do("POST", "/api/v1/events", "application/x-ndjson", body.Bytes()); r.status != 202 {
		t.Fatalf("post: %d %s", r.status, r.body)
	}
	s.stop()
	s2 := start(t, dir)
	var latest struct {
		Metrics map[string]struct {
			Value  float64  `json:"value"`
			Median *float64 `json:"median"`
		} `json:"metrics"`
	}
	s2.get("/api/v1/machines/med-1/latest").json(t, &latest)
	temp := latest.Metrics["temp"]
	if temp.Value != 10 || temp.Median == nil || *temp.Median != 5.5 {
		t.Errorf("after restart: temp %+v (median %v), want value 10, median 5.5", temp, temp.Median)
	}
}

// TestMedianOnStream: the sliding median goes out on the stream as samples
// are released in event-time order, equal to the median of the sorted
// samples it covers, whatever their arrival order.
func TestMedianOnStream(t *testing.T) {
	s := start(t, t.TempDir(), "--median-window", "5")
	c := ctx(t, 30*time.Second)
	live := subscribe(t, c, s, "machine=med-2", false)

	base := time.Now().Add(-time.Minute).UnixMilli()
	values := []float64{9, 1, 7, 3, 5, 8, 2} // event time i s
	order := []int{3, 0, 6, 1, 5, 2, 4}      // arrival order
	var body bytes.Buffer
	for _, i := range order {
		fmt.Fprintf(&body, "{\"machineId\":\"med-2\",\"timestamp\":%d,\"temp\":%g}\n", base+int64(i)*1000, values[i])
	}
	// A sample far ahead moves the watermark past all of them.
	fmt.Fprintf(&body, "{\"machineId\":\"med-2\",\"timestamp\":%d,\"temp\":100}\n", base+30_000)
	if r := s.do("POST", "/api/v1/events", "application/x-ndjson", body.Bytes()); r.status != 202 {
		t.Fatalf("post: %d %s", r.status, r.body)
	}
	// Oracle: the median of the last 5 samples in event-time order up to t.
	oracle := func(t int64) float64 {
		var w []float64
		for i, v := range values {
			if base+int64(i)*1000 <= t {
				w = append(w, v)
			}
		}
		if t >= base+30_000 {
			w = append(w, 100)
		}
		w = w[max(len(w)-5, 0):]
		slices.Sort(w)
		if len(w)%2 == 1 {
			return w[len(w)/2]
		}
		return (w[len(w)/2-1] + w[len(w)/2]) / 2
	}
	last := base + 6000
	for {
		select {
		case m := <-live:
			if m.Type != "median" {
				continue
			}
			var med struct {
				Metrics map[string]struct {
					Median float64 `json:"median"`
					T      int64   `json:"t"`
				} `json:"metrics"`
			}
			if err := json.Unmarshal(m.Data, &med); err != nil {
				t.Fatal(err)
			}
			temp, ok := med.Metrics["temp"]
			if !ok {
				t.Fatalf("median message without temp: %s", m.Data)
			}
			if want := oracle(temp.T); temp.Median != want {
				t.Errorf("median at t=%d: %v, want %v", temp.T-base, temp.Median, want)
			}
			if temp.T >= last {
				return
			}
		case <-c.Done():
			t.Fatal("no median covering every sample arrived")
		}
	}
}
