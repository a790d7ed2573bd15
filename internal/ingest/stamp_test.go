package ingest

import (
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/twinline/twinline/internal/telemetry"
)

// TestStamper follows the rule stamp = max(now, previous stamp + 1), per
// machine, through a clock that stands still, moves on and is overtaken.
func TestStamper(t *testing.T) {
	s := NewStamper()
	steps := []struct {
		machine    string
		now, limit int64
		want       int64
		wantOK     bool
	}{
		{"a", 1000, 0, 1000, true},
		{"a", 1000, 0, 1001, true}, // same millisecond: the next one
		{"b", 1000, 0, 1000, true}, // machines are independent
		{"a", 1000, 0, 1002, true},
		{"a", 1001, 0, 1003, true}, // the clock is still behind the stamps
		{"a", 1010, 0, 1010, true}, // the clock has moved past them
		{"a", 1010, 1011, 1011, true},
		{"a", 1010, 1011, 1012, false}, // beyond the limit: refused…
		{"a", 1010, 1011, 1012, false}, // …and not taken
		{"b", 1000, 1000, 1001, false},
		{"b", 1001, 1001, 1001, true},
	}
	for i, st := range steps {
		got, ok := s.Stamp(st.machine, st.now, st.limit)
		if got != st.want || ok != st.wantOK {
			t.Errorf("step %d: Stamp(%q, %d, %d) = %d, %v; want %d, %v", i, st.machine, st.now, st.limit, got, ok, st.want, st.wantOK)
		}
	}
}

// TestStamperForgets shows the memory bounded by the machines stamped at
// the current millisecond, not by the fleet.
func TestStamperForgets(t *testing.T) {
	s := NewStamper()
	const fleet = 100_000
	for i := range fleet {
		now := int64(1000 + i/10) // ten machines per millisecond
		if _, ok := s.Stamp(machineName(i), now, 0); !ok {
			t.Fatal("refused")
		}
	}
	if n := len(s.last); n > 4*minSweep {
		t.Errorf("remembers %d machines after stamping %d, ten per millisecond; want at most %d", n, fleet, 4*minSweep)
	}
	// A forgotten machine is stamped from the clock, as it would be anyway.
	if got, _ := s.Stamp(machineName(0), 1000+fleet/10, 0); got != 1000+fleet/10 {
		t.Errorf("stamp of a forgotten machine = %d, want the clock %d", got, 1000+fleet/10)
	}
}

func machineName(i int) string { return "m-" + strconv.Itoa(i) }

// TestStamperConcurrent: stamps handed out at once to several ingest
// paths are all different.
func TestStamperConcurrent(t *testing.T) {
	s := NewStamper()
	const workers, each = 8, 500
	got := make([][]int64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				st, _ := s.Stamp("m", 1000, 0)
				got[w] = append(got[w], st)
			}
		})
	}
	wg.Wait()
	seen := map[int64]bool{}
	for _, g := range got {
		for i, st := range g {
			if seen[st] {
				t.Fatalf("stamp %d handed out twice", st)
			}
			seen[st] = true
			if i > 0 && st <= g[i-1] {
				t.Fatalf("stamps of one caller not increasing: %d after %d", st, g[i-1])
			}
		}
	}
	if len(seen) != workers*each {
		t.Errorf("%d stamps, want %d", len(seen), workers*each)
	}
}

// TestDecodeWithoutTimestamp: events without a timestamp, of one machine,
// in one body or in bodies decoded within the same millisecond, each get
// their own time, in arrival order, in every format.
func TestDecodeWithoutTimestamp(t *testing.T) {
	decoders := []struct {
		name   string
		decode func(body string, opts Options) ([]telemetry.Event, []Reject, error)
		first  string // oven-02 181.2, then 181.9, then press-07 70
		second string // oven-02 182.4
		lead   string // metric name prefix
	}{
		{"json", func(b string, o Options) ([]telemetry.Event, []Reject, error) { return DecodeJSON([]byte(b), o, nil) },
			`[{"machineId":"oven-02","temp":181.2},{"machineId":"oven-02","temp":181.9},{"machineId":"press-07","temp":70}]`,
			`{"machineId":"oven-02","temp":182.4}`, ""},
		{"ndjson", func(b string, o Options) ([]telemetry.Event, []Reject, error) { return DecodeNDJSON([]byte(b), o, nil) },
			"{\"machineId\":\"oven-02\",\"temp\":181.2}\n{\"machineId\":\"oven-02\",\"temp\":181.9}\n{\"machineId\":\"press-07\",\"temp\":70}\n",
			"{\"machineId\":\"oven-02\",\"temp\":182.4}\n", ""},
		{"line protocol", func(b string, o Options) ([]telemetry.Event, []Reject, error) {
			return DecodeLineProtocol([]byte(b), lineprotocol.Nanosecond, o, nil)
		}, "t,host=oven-02 temp=181.2\nt,host=oven-02 temp=181.9\nt,host=press-07 temp=70\n",
			"t,host=oven-02 temp=182.4", "t_"},
	}
	for _, d := range decoders {
		t.Run(d.name, func(t *testing.T) {
			opts := testOptions()
			opts.Stamper = NewStamper()
			got, rejects, err := d.decode(d.first, opts)
			if err != nil || len(rejects) > 0 {
				t.Fatalf("decode: %v %v", rejects, err)
			}
			more, rejects, err := d.decode(d.second, opts) // the same millisecond
			if err != nil || len(rejects) > 0 {
				t.Fatalf("decode: %v %v", rejects, err)
			}
			got = append(got, more...)
			temp := d.lead + "temp"
			want := []telemetry.Event{
				ev("oven-02", testNow, temp, 181.2),
				ev("oven-02", testNow+1, temp, 181.9),
				ev("press-07", testNow, temp, 70),
				ev("oven-02", testNow+2, temp, 182.4),
			}
			if diff := cmp.Diff(got, want, cmpEvents); diff != "" {
				t.Errorf("events (-got +want):\n%s", diff)
			}

			// Without a shared Stamper each call stamps on its own:
			// still one time per event within the call.
			opts.Stamper = nil
			got, _, _ = d.decode(d.first, opts)
			if len(got) != 3 || got[0].Time != testNow || got[1].Time != testNow+1 {
				t.Errorf("per-call stamps: %v", got)
			}
		})
	}
}

// TestDecodeWithoutTimestampRunsAhead: a machine that sends more events
// without a timestamp than there are milliseconds until the accepted
// future gets the excess rejected, with a reason that says what to do;
// the others are kept.
func TestDecodeWithoutTimestampRunsAhead(t *testing.T) {
	opts := testOptions()
	opts.Stamper = NewStamper()
	opts.MaxTime = testNow + 1
	got, rejects, err := DecodeNDJSON([]byte("{\"machineId\":\"m\",\"x\":1}\n{\"machineId\":\"m\",\"x\":2}\n{\"machineId\":\"m\",\"x\":3}\n{\"machineId\":\"m\",\"timestamp\":1796018400001,\"x\":4}\n"), opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []telemetry.Event{ev("m", testNow, "x", 1), ev("m", testNow+1, "x", 2), ev("m", testNow+1, "x", 4)}
	if diff := cmp.Diff(got, want, cmpEvents); diff != "" {
		t.Errorf("events (-got +want):\n%s", diff)
	}
	if len(rejects) != 1 || rejects[0].Index != 3 || rejects[0].Field != "timestamp" ||
		!strings.Contains(rejects[0].Reason, "with a timestamp each") {
		t.Errorf("rejects = %v, want line 3 rejected asking for timestamps", rejects)
	}
}
