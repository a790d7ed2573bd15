package ingest

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/influxdata/line-protocol/v2/lineprotocol"
	"github.com/valyala/fastjson"

	"github.com/twinline/twinline/internal/telemetry"
)

// fuzzOptions has small limits, so fuzzing reaches them.
func fuzzOptions() Options {
	o := testOptions()
	o.Limits = telemetry.Limits{MaxMetricsPerEvent: 4, MaxMachineIDLen: 12, MaxMetricNameLen: 12}
	o.MinTime, o.MaxTime = -1e13, 1e13
	return o
}

var jsonSeeds = []string{
	`{"machineId":"press-07","timestamp":"2026-11-30T06:00:00Z","temp":71.3}`,
	`[{"machineId":"a","temp":1,"metrics":{"x":2}},{"machineId":"b/c","x":1},3,{"machineId":"a","id":"k1","seq":4,"tags":{"site":"s"},"on":true,"t2":NaN}]`,
	`[{"machineId":"m1","timestamp":1796018400123.5,"a":1,"b":2,"c":3,"d":4,"e":5},{"machineId":"m1","tags":{"a":"b","a":"c"},"x":1}]`,
	`{"machineId":"m\u0031","te\u006dp":1e400,"s":"x","n":null,"o":{},"a":[]}`,
	"\xEF\xBB\xBF[{\"machineId\":\"Presse-\xc3\x9c1\",\"timestamp\":\"2026-11-30T07:00:00+01:00\",\"x\":true}]",
	`[{"machineId":"a\ud800","x":1},{"machineId":"b","tags":{"k\udc00":"\x"},"x":1},{"machineId":"\ud83d\ude00\u200b","x":1}]`,
	`{"machineId":"m","id":"\ud800\u0041\u12","metrics":{"t\\":1}}`,
	`[{"machineId":"m","state":"RUNNING","x":1},{"machineId":"m","states":{"mode":"auto","state":"DOWN"}},{"machineId":"m","s":"","t":"a\u0001"},{"machineId":"m","s":"x","states":{"s":"y"}},{"machineId":"m","states":{"a":1}},{"machineId":"m","states":null,"p":"Ü"}]`,
	`{"a":1,}`,
	`[]`,
	`42`,
}

var lpSeeds = []string{
	"cpu,cpu=cpu-total,host=web-01 usage_idle=98.5,usage_user=1.5 1796018400000000000\n",
	"m,host=h f=1.5,i=-3i,u=7u,b=true,B=F,s=\"text\"\r\n# comment\n\n  m,machine=press\\,7\\=b x=1\n",
	"m,host=h\nm,host=h x=abc\nm x=1\nm,host=h s=\"two\nlines\",x=2\nm,host=h x=1,x=2 1\nm,host=a/b x=1 -5\n",
	"m,host=h s=\"open\nm,host=h x=2\n",
	"plant\\ a,host=h x=1 9223372036854775807\n\tm,host=h x=1\n",
	"m,host=h state=\"RUNNING\",x=1\nm,host=h state=\"\"\nm,host=h a=\"1\",b=\"2\",c=\"3\",d=\"4\",e=\"5\"\nm,host=h x=\"s\",x=1\nm,host=h b\\ c=\"v\"\n",
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		opts := fuzzOptions()
		dst := []telemetry.Event{ev("dst", 1, "x", 1)}
		events, rejects, err := DecodeJSON(body, opts, dst)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Offset < 0 || se.Offset > int64(len(body)) {
				t.Fatalf("err = %#v, want a *SyntaxError within the body", err)
			}
			if len(events) != 1 || rejects != nil {
				t.Fatalf("on error got %d events, rejects %v; want dst and no rejects", len(events), rejects)
			}
			return
		}
		items := 1
		v, perr := new(fastjson.Parser).ParseBytes(bytes.TrimPrefix(body, utf8BOM))
		if perr != nil {
			t.Fatalf("DecodeJSON accepted a body fastjson rejects: %v", perr)
		}
		if a, err := v.Array(); err == nil {
			items = len(a)
		}
		checkDecoded(t, false, opts, dst, events, rejects, items, func(r Reject) bool { return r.Index >= 0 && r.Index < items })
		checkNoAliasing(t, body, events, func(b []byte) { DecodeJSON(b, opts, nil) })
	})
}

func FuzzDecodeNDJSON(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("{\"machineId\":\"m1\",\"x\":1}\r\n\n{bad\n[1]\n{\"machineId\":\"m1\",\"x\":1,\"pad\":\"" + string(bytes.Repeat([]byte("p"), 70)) + "\"}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		opts := fuzzOptions()
		opts.MaxLineBytes = 64
		dst := []telemetry.Event{ev("dst", 1, "x", 1)}
		events, rejects, err := DecodeNDJSON(body, opts, dst)
		if err != nil {
			t.Fatalf("DecodeNDJSON: %v", err)
		}
		items := map[int]bool{}
		for i, ln := range bytes.Split(bytes.TrimPrefix(body, utf8BOM), []byte{'\n'}) {
			if !isBlank(bytes.TrimSuffix(ln, []byte{'\r'})) {
				items[i+1] = true
			}
		}
		checkDecoded(t, false, opts, dst, events, rejects, len(items), func(r Reject) bool { return items[r.Index] })
		checkNoAliasing(t, body, events, func(b []byte) { DecodeNDJSON(b, opts, nil) })
	})
}

func FuzzDecodeLineProtocol(f *testing.F) {
	for _, s := range lpSeeds {
		f.Add([]byte(s), uint8(0), uint8(0))
	}
	f.Add([]byte(lpSeeds[1]), uint8(3), uint8(20))
	// --lp-missing-machine drop and measurement (prec >> 4), with tags.
	f.Add([]byte("readings,fleet=S x=1\nreadings,name=t1,fleet=S x=2\n"), uint8(16), uint8(0))
	f.Add([]byte("readings,fleet=S x=1\nreadings,name=t1,fleet=S x=2\n"), uint8(32), uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, prec, maxLine uint8) {
		precision := lineprotocol.Precision(prec % uint8(PrecisionHour+1))
		opts := fuzzOptions()
		opts.MaxLineBytes = int(maxLine)
		opts.MissingMachine = MissingMachine(prec >> 4 % 3)
		opts.Tags = NewTagCache()
		dst := []telemetry.Event{ev("dst", 1, "x", 1)}
		events, rejects, stats, err := DecodeLineProtocolStats(body, precision, opts, dst)
		if err != nil {
			t.Fatalf("DecodeLineProtocolStats: %v", err)
		}
		if stats.IgnoredStringFields < 0 || (opts.MissingMachine != MissingDrop && stats.DroppedLines != 0) {
			t.Fatalf("stats = %+v", stats)
		}
		for _, r := range rejects {
			if opts.MissingMachine != MissingReject && r.Field == "tags" {
				t.Fatalf("reject %v under --lp-missing-machine %s", r, opts.MissingMachine)
			}
		}
		// Tags are reported once per machine, of a machine with events.
		seen := map[string]bool{}
		for _, e := range events[len(dst):] {
			seen[e.Machine] = true
		}
		for _, ts := range stats.Tags {
			if !seen[ts.Machine] || len(ts.Tags) == 0 {
				t.Fatalf("tags %+v of a machine without events, or empty", ts)
			}
			seen[ts.Machine] = false
		}
		lines := bytes.Count(body, []byte{'\n'}) + 1
		inRange := func(r Reject) bool { return r.Index >= 1 && r.Index <= lines }
		if opts.MaxLineBytes == 0 {
			// Every entry the decoder sees is an event or a reject.
			entries, errLines := decodeAll(body)
			checkDecoded(t, true, opts, dst, events, rejects, entries-stats.DroppedLines, inRange)
			// A syntax error within its entry's first line is reported at the
			// line the lineprotocol decoder names.
			for _, r := range rejects {
				if strings.HasPrefix(r.Reason, "syntax error at column") && !errLines[r.Index] {
					t.Fatalf("reject %v: the decoder found no error on that line (errors on %v)", r, errLines)
				}
			}
		} else {
			// Overlong lines are rejected besides the entries; a line holds
			// at most two entries.
			checkDecoded(t, true, opts, dst, events, rejects, -1, inRange)
			if n := len(events) - len(dst) + len(rejects); n > 2*lines {
				t.Fatalf("%d events and rejects from %d lines", n, lines)
			}
		}
		// Both paths decode alike.
		slowEvents, slowRejects, slowStats, _ := decodeLineProtocol(body, precision, opts, dst, true)
		if diff := cmp.Diff(slowEvents, events, cmpEvents); diff != "" {
			t.Fatalf("events of the slow path differ (-slow +fast):\n%s", diff)
		}
		if diff := cmp.Diff(slowRejects, rejects, cmpEvents); diff != "" {
			t.Fatalf("rejects of the slow path differ (-slow +fast):\n%s", diff)
		}
		if !reflect.DeepEqual(slowStats, stats) {
			t.Fatalf("stats of the slow path %+v, fast %+v", slowStats, stats)
		}
		checkNoAliasing(t, body, events, func(b []byte) { DecodeLineProtocol(b, precision, opts, nil) })
	})
}

// decodeAll counts the entries of a line-protocol body and the lines the
// lineprotocol decoder reports errors on.
func decodeAll(body []byte) (entries int, errLines map[int]bool) {
	errLines = map[int]bool{}
	dec := lineprotocol.NewDecoderWithBytes(body)
	for dec.Next() {
		entries++
		err := func() error {
			if _, err := dec.Measurement(); err != nil {
				return err
			}
			for {
				k, _, err := dec.NextTag()
				if err != nil || k == nil {
					if err != nil {
						return err
					}
					break
				}
			}
			for {
				k, _, err := dec.NextField()
				if err != nil || k == nil {
					if err != nil {
						return err
					}
					break
				}
			}
			_, err := dec.TimeBytes()
			return err
		}()
		var de *lineprotocol.DecodeError
		if errors.As(err, &de) {
			errLines[int(de.Line)] = true
		}
	}
	return entries, errLines
}

// checkDecoded checks the invariants of every decoder: dst is kept, every
// item (items of them, or -1 when unknown) is an event or a reject, every
// event is valid, and rejects name items in order (distinct ones, but for
// line protocol).
func checkDecoded(t *testing.T, lineProtocol bool, opts Options, dst, events []telemetry.Event, rejects []Reject, items int, validIndex func(Reject) bool) {
	t.Helper()
	if len(events) < len(dst) {
		t.Fatalf("events do not extend dst")
	}
	if diff := cmp.Diff(events[:len(dst)], []telemetry.Event{ev("dst", 1, "x", 1)}); diff != "" {
		t.Fatalf("dst changed (-got +want):\n%s", diff)
	}
	got := events[len(dst):]
	if items >= 0 && len(got)+len(rejects) != items {
		t.Fatalf("%d events + %d rejects, want %d items; rejects: %v", len(got), len(rejects), items, rejects)
	}
	for i, e := range got {
		if p := checkEvent(e, opts); p != "" {
			t.Fatalf("event %d %+v is invalid: %s", i, e, p)
		}
	}
	for i, r := range rejects {
		if !validIndex(r) {
			t.Fatalf("reject %v names no item of the body", r)
		}
		if r.Reason == "" {
			t.Fatalf("reject %v has no reason", r)
		}
		// Line protocol may hold two entries on one line: after a lone
		// CR, the lineprotocol decoder starts a new entry.
		if i > 0 && (r.Index < rejects[i-1].Index || r.Index == rejects[i-1].Index && !lineProtocol) {
			t.Fatalf("rejects %v and %v out of order or for one item", rejects[i-1], r)
		}
	}
}

// checkNoAliasing overwrites the body and runs the decoder again on other
// input, then checks the events did not change.
func checkNoAliasing(t *testing.T, body []byte, events []telemetry.Event, again func([]byte)) {
	t.Helper()
	want := cloneEvents(events)
	for i := range body {
		body[i] ^= 0x55
	}
	again(body)
	again([]byte(jsonSeeds[1]))
	again([]byte(lpSeeds[0]))
	if diff := cmp.Diff(events, want); diff != "" {
		t.Fatalf("events changed with the body or a later call (-got +want):\n%s", diff)
	}
}
