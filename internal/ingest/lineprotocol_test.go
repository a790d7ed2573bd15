package ingest

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/twinline/twinline/internal/telemetry"
)

func TestParsePrecision(t *testing.T) {
	tests := []struct {
		in   string
		want lineprotocol.Precision
	}{
		{"", lineprotocol.Nanosecond},
		{"ns", lineprotocol.Nanosecond},
		{"n", lineprotocol.Nanosecond},
		{"us", lineprotocol.Microsecond},
		{"u", lineprotocol.Microsecond},
		{"µ", lineprotocol.Microsecond},
		{"µs", lineprotocol.Microsecond},
		{"ms", lineprotocol.Millisecond},
		{"s", lineprotocol.Second},
		{"m", PrecisionMinute},
		{"h", PrecisionHour},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePrecision(tt.in)
			if err != nil {
				t.Fatalf("ParsePrecision(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParsePrecision(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
	for _, in := range []string{"NS", "sec", "d", "rfc3339", " s"} {
		t.Run(in, func(t *testing.T) {
			if _, err := ParsePrecision(in); !errors.Is(err, ErrUnknownPrecision) {
				t.Errorf("ParsePrecision(%q) error = %v, want ErrUnknownPrecision", in, err)
			}
		})
	}
}

func TestDecodeLineProtocolPrecision(t *testing.T) {
	t0 := msOf(t, "2026-11-30T06:00:00Z")
	tests := []struct {
		precision lineprotocol.Precision
		ts        string
		want      int64
	}{
		{lineprotocol.Nanosecond, "1796018400123456789", t0 + 123},
		{lineprotocol.Microsecond, "1796018400123456", t0 + 123},
		{lineprotocol.Millisecond, "1796018400123", t0 + 123},
		{lineprotocol.Second, "1796018400", t0},
		{PrecisionMinute, "29933640", t0},
		{PrecisionHour, "498894", t0},
		{lineprotocol.Nanosecond, "-1", -1},
		{lineprotocol.Microsecond, "-1001", -2},
		{lineprotocol.Second, "-5", -5000},
		{lineprotocol.Nanosecond, "0", 0},
	}
	for _, tt := range tests {
		t.Run(tt.ts, func(t *testing.T) {
			body := "m,host=h x=1 " + tt.ts + "\n"
			events, rejects, err := DecodeLineProtocol([]byte(body), tt.precision, testOptions(), nil)
			if err != nil || len(rejects) != 0 {
				t.Fatalf("DecodeLineProtocol: %v, rejects %v", err, rejects)
			}
			if diff := cmp.Diff(events, []telemetry.Event{ev("h", tt.want, "m_x", 1)}); diff != "" {
				t.Errorf("events mismatch (-got +want):\n%s", diff)
			}
		})
	}
	t.Run("unknown precision", func(t *testing.T) {
		_, _, err := DecodeLineProtocol([]byte("m,host=h x=1"), PrecisionHour+1, testOptions(), nil)
		if !errors.Is(err, ErrUnknownPrecision) {
			t.Errorf("err = %v, want ErrUnknownPrecision", err)
		}
	})
}

func TestDecodeLineProtocol(t *testing.T) {
	t0 := msOf(t, "2026-11-30T06:00:00Z")
	tests := []struct {
		name        string
		body        string
		opts        func(*Options)
		wantEvents  []telemetry.Event
		wantRejects []Reject
		wantStats   Stats
	}{
		{
			name:       "telegraf line",
			body:       "cpu,cpu=cpu-total,host=web-01 usage_idle=98.5,usage_user=1.5 1796018400000000000\n",
			wantEvents: []telemetry.Event{ev("web-01", t0, "cpu_usage_idle", 98.5, "cpu_usage_user", 1.5)},
		},
		{
			name:       "field types, no timestamp",
			body:       `m,host=h f=1.5,i=-3i,u=7u,b=true,B=F,s="text",e=1e3`,
			wantEvents: []telemetry.Event{withStates(ev("h", testNow, "m_f", 1.5, "m_i", -3, "m_u", 7, "m_b", 1, "m_B", 0, "m_e", 1000), "m_s", "text")},
		},
		{
			name:       "escaping",
			body:       `m,machine=press\,7\=b,tag\ key=v\ w s="a \"quoted\" \\ value, x=2",x=1` + "\n",
			wantEvents: []telemetry.Event{withStates(ev("press,7=b", testNow, "m_x", 1), "m_s", `a "quoted" \ value, x=2`)},
		},
		{
			name: "format characters in machine id and metric name",
			body: "m,host=press\u200b7 x=1\nm,host=\ufeffpress x=1\nm,host=h te\u2066mp=1\nm,host=a\xed\xa0\x80b x=1",
			wantRejects: []Reject{
				{Index: 1, Field: "host", Reason: "machine id must not contain invisible format characters (found U+200B)"},
				{Index: 2, Field: "host", Reason: "machine id must not contain invisible format characters (found U+FEFF)"},
				{Index: 3, Field: "te\u2066mp", Reason: `metric name may contain only A-Z a-z 0-9 _ . : - (found '\u2066'): "m_te\u2066mp"`},
				{Index: 4, Reason: `syntax error at column 8: invalid utf-8 sequence in token "a\xed\xa0\x80b"`},
			},
		},
		{
			name:        "escaped space in measurement is not a metric name",
			body:        `plant\ a,host=h x=1`,
			wantRejects: []Reject{{Index: 1, Field: "x", Reason: `metric name may contain only A-Z a-z 0-9 _ . : - (found ' '): "plant a_x"`}},
		},
		{
			name:        "missing machine: reject",
			body:        "readings,fleet=South x=1\nreadings,name=truck_1 x=2\n",
			wantEvents:  []telemetry.Event{ev("truck_1", testNow, "readings_x", 2)},
			wantRejects: []Reject{{Index: 1, Field: "tags", Reason: "no machine id tag (one of machineId, machine_id, machine, host, name)"}},
		},
		{
			name:       "missing machine: drop",
			body:       "readings,fleet=South x=1\nreadings,name=truck_1 x=2\ndiag,fleet=North y=1,s=\"ok\"\nbad,name=t x=\n",
			opts:       func(o *Options) { o.MissingMachine = MissingDrop },
			wantEvents: []telemetry.Event{ev("truck_1", testNow, "readings_x", 2)},
			// A syntax error stays a reject; only the missing tag drops.
			wantRejects: []Reject{{Index: 4, Reason: "syntax error at column 14: field value has unrecognized type"}},
			wantStats:   Stats{DroppedLines: 2},
		},
		{
			name: "missing machine: measurement",
			body: "readings,fleet=South x=1\nreadings,name=truck_1 x=2\n",
			opts: func(o *Options) { o.MissingMachine = MissingMeasurement },
			wantEvents: []telemetry.Event{
				ev("readings", testNow, "readings_x", 1),
				ev("truck_1", testNow, "readings_x", 2),
			},
		},
		{
			name: "machine tag preference",
			body: strings.Join([]string{
				"m,host=h1,machine_id=m1 x=1",
				"m,name=n1,machine=mm x=1",
				"m,machine_id=B,machineId=A x=1",
				"m,name=n2 x=1",
			}, "\n"),
			wantEvents: []telemetry.Event{ev("m1", testNow, "m_x", 1), ev("mm", testNow, "m_x", 1), ev("A", testNow, "m_x", 1), ev("n2", testNow, "m_x", 1)},
		},
		{
			name:        "configured machine tags",
			body:        "m,device=d1,host=h x=1\nm,host=h x=1\n",
			opts:        func(o *Options) { o.MachineTags = []string{"device", "unit"} },
			wantEvents:  []telemetry.Event{ev("d1", testNow, "m_x", 1)},
			wantRejects: []Reject{{Index: 2, Field: "tags", Reason: "no machine id tag (one of device, unit)"}},
		},
		{
			name: "bad lines in the middle keep the rest",
			body: strings.Join([]string{
				"m,host=h x=1",
				"m,host=h",
				"m,host=h x=abc",
				"m,host=h x=1 notatime",
				"m x=1",
				"m,host=h s=\"only a string\"",
				"m,host=h x=1i2",
				"m,host=h x=2",
				"m,host=a/b x=1",
				"m,host=h x=1,x=2",
				"m,host=h x=1 1 extra",
				"m,host=h x=NaN",
				"m,host=h x=3",
			}, "\n"),
			wantEvents: []telemetry.Event{ev("h", testNow, "m_x", 1), withStates(ev("h", testNow+1), "m_s", "only a string"), ev("h", testNow+2, "m_x", 2), ev("h", testNow+3, "m_x", 3)},
			wantRejects: []Reject{
				{Index: 2, Reason: `syntax error at column 9: expected tag key or field but found '\n' instead`},
				{Index: 3, Reason: "syntax error at column 12: field value has unrecognized type"},
				{Index: 4, Reason: `syntax error at column 14: invalid timestamp ("notatime")`},
				{Index: 5, Field: "tags", Reason: "no machine id tag (one of machineId, machine_id, machine, host, name)"},
				{Index: 7, Reason: `syntax error at column 12: cannot parse value for field key "x": invalid float value syntax`},
				{Index: 9, Field: "host", Reason: "machine id must not contain '/' (it is used in URLs and MQTT topics)"},
				{Index: 10, Field: "x", Reason: "given twice"},
				{Index: 11, Reason: `syntax error at column 16: unexpected text after timestamp ("extra")`},
				{Index: 12, Reason: "syntax error at column 12: field value has unrecognized type"},
			},
		},
		{
			name: "string fields become states; those that cannot be are skipped and counted",
			body: strings.Join([]string{
				`m,host=h state="RUNNING",x=1`,
				`m,host=h state="",x=2`,
				`m,host=h state="` + strings.Repeat("y", 257) + `",x=3`,
				"m,host=h state=\"a\x07\",x=4",
				`m,host=h s\ t="v",x=5`,
				`m,host=h x="a",x=6`,
				`m,host=h only="DOWN"`,
				`m,host=h a="1",b="2",c="3"`,
			}, "\n"),
			opts: func(o *Options) { o.Limits.MaxMetricsPerEvent = 2 },
			wantEvents: []telemetry.Event{
				withStates(ev("h", testNow, "m_x", 1), "m_state", "RUNNING"),
				ev("h", testNow+1, "m_x", 2),
				ev("h", testNow+2, "m_x", 3),
				ev("h", testNow+3, "m_x", 4),
				ev("h", testNow+4, "m_x", 5),
				withStates(ev("h", testNow+5), "m_only", "DOWN"),
			},
			wantRejects: []Reject{
				{Index: 6, Field: "x", Reason: "given twice"},
				{Index: 8, Reason: "has more than 2 numeric and string fields"},
			},
			wantStats: Stats{IgnoredStringFields: 4},
		},
		{
			name:        "missing machine tag is reported before field problems",
			body:        "m bad\\ name=1",
			wantRejects: []Reject{{Index: 1, Field: "tags", Reason: "no machine id tag (one of machineId, machine_id, machine, host, name)"}},
		},
		{
			name:        "too many fields",
			body:        "m,host=h a=1,b=2,c=3",
			opts:        func(o *Options) { o.Limits.MaxMetricsPerEvent = 2 },
			wantRejects: []Reject{{Index: 1, Reason: "has more than 2 numeric fields"}},
		},
		{
			name:        "metric name too long",
			body:        "m,host=h " + strings.Repeat("f", 10) + "=1",
			opts:        func(o *Options) { o.Limits.MaxMetricNameLen = 8 },
			wantRejects: []Reject{{Index: 1, Field: "ffffffffff", Reason: `metric name is longer than 8 bytes: "m_ffffffffff"`}},
		},
		{
			name:        "line length limit",
			body:        "m,host=h x=1\nm,host=h x=1,pad=\"" + strings.Repeat("p", 50) + "\"\r\nm,host=h x=2\r\n" + "m,host=h x=3,pad=\"" + strings.Repeat("p", 50) + "\"",
			opts:        func(o *Options) { o.MaxLineBytes = 40 },
			wantEvents:  []telemetry.Event{ev("h", testNow, "m_x", 1), ev("h", testNow+1, "m_x", 2)},
			wantRejects: []Reject{{Index: 2, Reason: "line exceeds 40 bytes"}, {Index: 4, Reason: "line exceeds 40 bytes"}},
		},
		{
			name:       "CRLF line endings",
			body:       "m,host=h x=1 1796018400000000000\r\nm,host=h x=2\r\n\r\nm,host=h x=3\r\n",
			wantEvents: []telemetry.Event{ev("h", t0, "m_x", 1), ev("h", testNow, "m_x", 2), ev("h", testNow+1, "m_x", 3)},
		},
		{
			name:        "comments and blank lines",
			body:        "# written by a test\n\n   \n  m,host=h x=1\n  # indented comment\nm,host=h x=2\n\tm,host=h x=3\n#last",
			wantEvents:  []telemetry.Event{ev("h", testNow, "m_x", 1), ev("h", testNow+1, "m_x", 2)},
			wantRejects: []Reject{{Index: 7, Reason: `syntax error at column 1: invalid character '\t' found at start of measurement name`}},
		},
		{
			name:        "string field spanning lines",
			body:        "m,host=h x=1\nm,host=h s=\"two\nlines\",x=2\nm,host=h x=3,y=\nm,host=h x=4\n",
			wantEvents:  []telemetry.Event{ev("h", testNow, "m_x", 1), ev("h", testNow+1, "m_x", 2), ev("h", testNow+2, "m_x", 4)},
			wantRejects: []Reject{{Index: 4, Reason: `syntax error at column 16: field value has unrecognized type`}},
			wantStats:   Stats{IgnoredStringFields: 1},
		},
		{
			name:        "error after a string spanning lines names both lines",
			body:        "m,host=h s=\"two\nlines\" junk\nm,host=h x=1",
			wantEvents:  []telemetry.Event{ev("h", testNow, "m_x", 1)},
			wantRejects: []Reject{{Index: 1, Reason: `syntax error at line 2, column 8: invalid timestamp ("junk")`}},
			wantStats:   Stats{IgnoredStringFields: 1},
		},
		{
			name:        "unterminated string swallows the rest",
			body:        "m,host=h x=1\nm,host=h s=\"open\nm,host=h x=2\n",
			wantEvents:  []telemetry.Event{ev("h", testNow, "m_x", 1)},
			wantRejects: []Reject{{Index: 2, Reason: "syntax error at column 12: expected closing quote for string field value, found end of input"}},
		},
		{
			name:       "timestamp out of range",
			body:       "m,host=h x=1 1796014800000000000\nm,host=h x=1 1896018400000000000\nm,host=h x=1 1796018400000000000\n",
			opts:       func(o *Options) { o.MinTime, o.MaxTime = testNow-60_000, testNow+60_000 },
			wantEvents: []telemetry.Event{ev("h", t0, "m_x", 1)},
			wantRejects: []Reject{
				{Index: 1, Field: "timestamp", Reason: "2026-11-30T05:00:00.000Z is older than the accepted range (earliest 2026-11-30T05:59:00.000Z)"},
				{Index: 2, Field: "timestamp", Reason: "2030-01-30T15:46:40.000Z is in the future (latest accepted 2026-11-30T06:01:00.000Z)"},
			},
		},
	}
	for _, tt := range tests {
		for _, slow := range []bool{false, true} {
			name := tt.name
			if slow {
				name += " (slow path)"
			}
			t.Run(name, func(t *testing.T) {
				opts := testOptions()
				if tt.opts != nil {
					tt.opts(&opts)
				}
				events, rejects, stats, err := decodeLineProtocol([]byte(tt.body), lineprotocol.Nanosecond, opts, nil, slow)
				if err != nil {
					t.Fatalf("DecodeLineProtocolStats: %v", err)
				}
				if diff := cmp.Diff(events, tt.wantEvents, cmpEvents); diff != "" {
					t.Errorf("events mismatch (-got +want):\n%s", diff)
				}
				if diff := cmp.Diff(rejects, tt.wantRejects, cmpEvents); diff != "" {
					t.Errorf("rejects mismatch (-got +want):\n%s", diff)
				}
				if !reflect.DeepEqual(stats, tt.wantStats) {
					t.Errorf("stats = %+v, want %+v", stats, tt.wantStats)
				}
			})
		}
	}
}

func TestDecodeLineProtocolTimestampOverflow(t *testing.T) {
	body := "m,host=h x=1 9223372036854775807\nm,host=h x=1 -9223372036854775808\n"
	_, rejects, err := DecodeLineProtocol([]byte(body), lineprotocol.Second, testOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Reject{
		{Index: 1, Field: "timestamp", Reason: `invalid or out of range: "9223372036854775807"`},
		{Index: 2, Field: "timestamp", Reason: `invalid or out of range: "-9223372036854775808"`},
	}
	if diff := cmp.Diff(rejects, want); diff != "" {
		t.Errorf("rejects mismatch (-got +want):\n%s", diff)
	}
}

// TestLineProtocolDecoderRecovers pins the behaviour the line numbering
// relies on: after a syntax error, Next moves on to the next line.
func TestLineProtocolDecoderRecovers(t *testing.T) {
	dec := lineprotocol.NewDecoderWithBytes([]byte("m,host=h x=1\nm,host=h x=\nm,host=h x=3\n"))
	var got []string
	for dec.Next() {
		if _, err := dec.Measurement(); err != nil {
			got = append(got, "error")
			continue
		}
		_, v, err := dec.NextField()
		if err != nil {
			got = append(got, "error")
			continue
		}
		got = append(got, v.String())
	}
	if diff := cmp.Diff(got, []string{"1", "error", "3"}); diff != "" {
		t.Errorf("entries mismatch (-got +want):\n%s", diff)
	}
}

func TestDecodeLineProtocolTags(t *testing.T) {
	for _, slow := range []bool{false, true} {
		cache := NewTagCache()
		opts := testOptions()
		opts.Tags = cache
		decode := func(body string) Stats {
			t.Helper()
			_, rejects, stats, err := decodeLineProtocol([]byte(body), lineprotocol.Nanosecond, opts, nil, slow)
			if err != nil || len(rejects) > 0 {
				t.Fatalf("slow=%v: decoding: %v %v", slow, err, rejects)
			}
			return stats
		}
		// truck_1's second line has its tags in another order: the tags
		// of its last line are reported (the same). A tag that cannot be
		// an attribute (too long) is left out, its line kept.
		long := strings.Repeat("v", MaxTagValueLen+1)
		stats := decode("readings,name=truck_1,fleet=South,driver=Trish x=1\n" +
			"diagnostics,fleet=South,name=truck_1,driver=Trish y=1\n" +
			"readings,name=truck_2,fleet=North,bad=" + long + " x=1\n" +
			"readings,name=truck_3 x=1\n")
		want := []TagSet{
			{Machine: "truck_1", Tags: map[string]string{"fleet": "South", "driver": "Trish"}},
			{Machine: "truck_2", Tags: map[string]string{"fleet": "North"}},
		}
		if diff := cmp.Diff(stats.Tags, want, cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Hash" }, cmp.Ignore())); diff != "" {
			t.Fatalf("slow=%v: tags (-got +want):\n%s", slow, diff)
		}
		cache.Remember(stats.Tags)
		if got := decode("readings,name=truck_2,fleet=North,bad=" + long + " x=2\n"); got.Tags != nil {
			t.Errorf("slow=%v: unchanged tags reported: %+v", slow, got.Tags)
		}
		// A tag changes, on the machine's second line of the body: the
		// last line wins.
		got := decode("readings,name=truck_1,fleet=South,driver=Trish x=2\n" +
			"readings,name=truck_1,fleet=South,driver=Albert x=3\n")
		if len(got.Tags) != 1 || got.Tags[0].Machine != "truck_1" || got.Tags[0].Tags["driver"] != "Albert" {
			t.Fatalf("slow=%v: changed tag: got %+v", slow, got.Tags)
		}
		cache.Remember(got.Tags)
		if got := decode("readings,name=truck_1,fleet=South,driver=Albert x=4\n"); got.Tags != nil {
			t.Errorf("slow=%v: remembered tags reported again: %+v", slow, got.Tags)
		}
		cache.Forget("truck_1")
		if got := decode("readings,name=truck_1,fleet=South,driver=Albert x=5\n"); len(got.Tags) != 1 {
			t.Errorf("slow=%v: tags of a forgotten machine not reported: %+v", slow, got.Tags)
		}
		// A rejected line's tags are not reported.
		_, rejects, st, _ := decodeLineProtocol([]byte("readings,name=truck_9,fleet=East x=\"\"\n"), lineprotocol.Nanosecond, opts, nil, slow)
		if len(rejects) != 1 || st.Tags != nil {
			t.Errorf("slow=%v: rejected line: rejects %v, tags %+v", slow, rejects, st.Tags)
		}
	}
	// Under MissingMeasurement every tag of a line without a machine tag
	// is an attribute of the measurement's machine.
	opts := testOptions()
	opts.Tags, opts.MissingMachine = NewTagCache(), MissingMeasurement
	_, _, st, err := DecodeLineProtocolStats([]byte("plant,site=north x=1\n"), lineprotocol.Nanosecond, opts, nil)
	if err != nil || len(st.Tags) != 1 || st.Tags[0].Machine != "plant" || st.Tags[0].Tags["site"] != "north" {
		t.Errorf("measurement mode: tags %+v, err %v", st.Tags, err)
	}
	// Without a TagCache, no tags are reported.
	_, _, st, _ = DecodeLineProtocolStats([]byte("m,host=h,a=b x=1\n"), lineprotocol.Nanosecond, testOptions(), nil)
	if st.Tags != nil {
		t.Errorf("tags reported without a cache: %+v", st.Tags)
	}
}

// TestTagCacheConcurrent: decoders read a TagCache while others apply
// tag sets to it (go test -race); it ends with one entry per machine.
func TestTagCacheConcurrent(t *testing.T) {
	cache := NewTagCache()
	opts := testOptions()
	opts.Tags = cache
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				body := fmt.Sprintf("m,host=h%d,fleet=f%d x=1\n", i%5, w)
				_, _, st, err := DecodeLineProtocolStats([]byte(body), lineprotocol.Nanosecond, opts, nil)
				if err != nil {
					t.Error(err)
					return
				}
				cache.Apply(st.Tags, func(TagSet) bool { return true })
			}
		})
	}
	wg.Wait()
	if cache.Len() != 5 {
		t.Errorf("cache holds %d machines, want 5", cache.Len())
	}
	cache.Forget("h0")
	if cache.Len() != 4 {
		t.Errorf("after Forget: %d machines, want 4", cache.Len())
	}
}

// TestTagHashUnambiguous: tags whose keys and values concatenate to the
// same bytes are different tags, and their change is reported.
func TestTagHashUnambiguous(t *testing.T) {
	cache := NewTagCache()
	opts := testOptions()
	opts.Tags = cache
	_, _, st, err := DecodeLineProtocolStats([]byte("m,name=t,a=b,aa=ac x=1\n"), lineprotocol.Nanosecond, opts, nil)
	if err != nil || len(st.Tags) != 1 {
		t.Fatalf("first tags: %+v, %v", st.Tags, err)
	}
	cache.Remember(st.Tags)
	_, _, st, err = DecodeLineProtocolStats([]byte("m,name=t,a=ba,aa=c x=2\n"), lineprotocol.Nanosecond, opts, nil)
	if err != nil || len(st.Tags) != 1 || st.Tags[0].Tags["a"] != "ba" || st.Tags[0].Tags["aa"] != "c" {
		t.Errorf("changed tags with the same concatenation not reported: %+v, %v", st.Tags, err)
	}
}
