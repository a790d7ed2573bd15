package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// fleetRegistries opens the registry on each registry store: the file of
// the data directory (attributes filtered in memory) and PostgreSQL
// (attributes found through the JSONB index, counted in *indexCalls).
var fleetRegistries = []struct {
	name string
	open func(t *testing.T, clock func() time.Time, indexCalls *atomic.Int64) (*twin.Registry, AttributeIndexFunc)
}{
	{"file", func(t *testing.T, clock func() time.Time, _ *atomic.Int64) (*twin.Registry, AttributeIndexFunc) {
		reg, err := twin.OpenRegistryFile(filepath.Join(t.TempDir(), "registry.json"), clock, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return reg, nil
	}},
	{"postgres", func(t *testing.T, clock func() time.Time, calls *atomic.Int64) (*twin.Registry, AttributeIndexFunc) {
		ps := openOEEPostgres(t).(*postgres.Store)
		pr, err := postgres.NewRegistry(ps, postgres.RegistryOptions{})
		if err != nil {
			t.Fatal(err)
		}
		reg, err := twin.OpenRegistry(context.Background(), pr, clock, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return reg, func(ctx context.Context, attrs map[string]any) ([]string, error) {
			calls.Add(1)
			return pr.WithAttributes(ctx, attrs)
		}
	}},
}

// fleetMachine is a machine of the filter tests, as the oracle sees it.
type fleetMachine struct {
	twin.Info
	online, alarm bool
}

// testFleet is 36 machines over 3 sites and 3 lines, with names in mixed
// case, attributes of each JSON type, some online, some in alarm.
func testFleet() []fleetMachine {
	var out []fleetMachine
	for i := range 36 {
		in := twin.Info{
			ID:   fmt.Sprintf("m%02d", i),
			Name: []string{"Press", "LATHE", "Robot Arm", ""}[i%4] + fmt.Sprint(" ", i),
			Site: []string{"lyon", "paris", ""}[i%3],
			Line: []string{"A", "B", "C"}[i/3%3],
			Attributes: map[string]any{
				"vendor": []string{"acme", "globex"}[i%2],
				"floor":  float64(i % 4),
			},
		}
		if i%5 == 0 {
			in.Attributes["floor"] = fmt.Sprint(i % 4) // a string "2", not the number
			in.Attributes["retrofit"] = true
		}
		if i%7 == 0 {
			in.Attributes = nil
		}
		out = append(out, fleetMachine{Info: in, online: i%3 != 1, alarm: i%4 == 2})
	}
	return out
}

// newFleetAPI registers fleet in reg and serves it; "all" and "lyon" are
// the bearer secrets of an unrestricted and of a lyon-only reader.
func newFleetAPI(t *testing.T, reg *twin.Registry, index AttributeIndexFunc, fleet []fleetMachine, clock func() time.Time) *API {
	t.Helper()
	live := twin.NewLive(twin.LiveOptions{OfflineAfter: time.Minute, MedianWindow: 5, Now: clock, Register: reg.AutoRegister})
	alarms, err := twin.OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alarms.Close() })
	infos := make([]twin.Info, len(fleet))
	for i, m := range fleet {
		infos[i] = m.Info
	}
	if _, err := reg.RegisterMissing(infos); err != nil {
		t.Fatal(err)
	}
	high := 50.0
	var hot []telemetry.Sample
	b := &telemetry.Batch{Received: clock().UnixMilli()}
	var samples []telemetry.Sample
	for _, m := range fleet {
		if m.alarm {
			hot = append(hot, telemetry.Sample{Machine: m.ID, Metric: "temp", Time: b.Received, Value: 99})
		}
		if m.online {
			b.Events = append(b.Events, telemetry.Event{Machine: m.ID, Time: b.Received, Metrics: []telemetry.Metric{{Name: "temp", Value: 20}}})
			samples = append(samples, telemetry.Sample{Machine: m.ID, Metric: "temp", Time: b.Received, Value: 20})
		}
	}
	live.Observe(b, samples)
	if _, err := alarms.Observe(hot, func(string) map[string]twin.Threshold {
		return map[string]twin.Threshold{"temp": {High: &high}}
	}); err != nil {
		t.Fatal(err)
	}
	ids := map[string]auth.Identity{
		"all":  {Name: "all", Kind: auth.KindToken, Scopes: auth.ScopeRead, TokenID: "a"},
		"lyon": {Name: "lyon", Kind: auth.KindToken, Scopes: auth.ScopeRead, Sites: []string{"lyon"}, TokenID: "l"},
	}
	return New(Options{MaxInflightIngest: 1}, Deps{
		Registry: reg, Live: live, Alarms: alarms, AttributeIndex: index, Clock: clock,
		Logger: slog.New(slog.DiscardHandler), Ready: func() error { return nil },
		Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
		Auth: &Auth{Open: func() bool { return false }, Verify: func(secret string) (auth.Identity, error) {
			if id, ok := ids[secret]; ok {
				return id, nil
			}
			return auth.Identity{}, auth.ErrInvalidToken
		}},
	})
}

// fleetAnswer is the JSON of GET /api/v1/machines.
type fleetAnswer struct {
	Count    int            `json:"count"`
	Machines []twin.Machine `json:"machines"`
	Next     string         `json:"next"`
}

func getFleet(t *testing.T, a *API, secret, query string) (*httptest.ResponseRecorder, fleetAnswer) {
	t.Helper()
	req := httptest.NewRequest("GET", "/api/v1/machines?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	var ans fleetAnswer
	if rec.Code == http.StatusOK {
		if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
			t.Fatalf("decoding %s: %v", rec.Body, err)
		}
		if ans.Count != len(ans.Machines) {
			t.Errorf("count %d, %d machines", ans.Count, len(ans.Machines))
		}
	}
	return rec, ans
}

// walkFleet reads every page of query, limit at a time, and returns the
// ids in the order they came; between pages it calls between.
func walkFleet(t *testing.T, a *API, secret, query string, limit int, between func()) []string {
	t.Helper()
	var ids []string
	cursor := ""
	for page := 0; ; page++ {
		q := query + "&limit=" + fmt.Sprint(limit)
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		rec, ans := getFleet(t, a, secret, q)
		if rec.Code != http.StatusOK {
			t.Fatalf("page %d of %s: status %d: %s", page, q, rec.Code, rec.Body)
		}
		if len(ans.Machines) > limit || ans.Next != "" && len(ans.Machines) != limit {
			t.Fatalf("page %d: %d machines (limit %d), next %q", page, len(ans.Machines), limit, ans.Next)
		}
		for _, m := range ans.Machines {
			ids = append(ids, m.ID)
		}
		if ans.Next == "" {
			return ids
		}
		if len(ans.Machines) == 0 {
			t.Fatal("an empty page with a next cursor")
		}
		cursor = ans.Next
		if between != nil {
			between()
		}
	}
}

// TestFleetFilters checks each filter alone and combined against an
// oracle, on both registry stores, whole and walked in pages of 4.
func TestFleetFilters(t *testing.T) {
	fleet := testFleet()
	attr := func(m fleetMachine, k, want string) bool {
		v, ok := m.Attributes[k]
		switch x := v.(type) {
		case string:
			return ok && x == want
		case float64:
			return ok && fmt.Sprint(x) == want
		case bool:
			return ok && fmt.Sprint(x) == want
		}
		return false
	}
	fold := func(s, sub string) bool { return strings.Contains(strings.ToLower(s), strings.ToLower(sub)) }
	tests := []struct {
		query  string
		secret string
		want   func(m fleetMachine) bool
		index  bool // served by the attribute index on PostgreSQL
	}{
		{"", "all", func(fleetMachine) bool { return true }, false},
		{"site=lyon", "all", func(m fleetMachine) bool { return m.Site == "lyon" }, false},
		{"site=lyon&site=paris", "all", func(m fleetMachine) bool { return m.Site != "" }, false},
		{"line=B", "all", func(m fleetMachine) bool { return m.Line == "B" }, false},
		{"status=online", "all", func(m fleetMachine) bool { return m.online }, false},
		{"status=offline", "all", func(m fleetMachine) bool { return !m.online }, false},
		{"status=alarm", "all", func(m fleetMachine) bool { return m.alarm }, false},
		{"status=offline,alarm", "all", func(m fleetMachine) bool { return !m.online || m.alarm }, false},
		{"q=press", "all", func(m fleetMachine) bool { return fold(m.Name, "press") }, false},
		{"q=M1", "all", func(m fleetMachine) bool { return fold(m.ID, "m1") || fold(m.Name, "m1") }, false},
		{"q=aRM+1", "all", func(m fleetMachine) bool { return fold(m.Name, "arm 1") }, false},
		{"attr.vendor=acme", "all", func(m fleetMachine) bool { return attr(m, "vendor", "acme") }, true},
		{"attr.floor=2", "all", func(m fleetMachine) bool { return attr(m, "floor", "2") }, true},
		{"attr.floor=2.0", "all", func(m fleetMachine) bool { return attr(m, "floor", "2") && m.Attributes["floor"] != "2" }, true},
		{"attr.retrofit=true", "all", func(m fleetMachine) bool { return attr(m, "retrofit", "true") }, true},
		{"attr.vendor=acme&attr.floor=0", "all", func(m fleetMachine) bool { return attr(m, "vendor", "acme") && attr(m, "floor", "0") }, true},
		{"attr.vendor=acme&attr.vendor=globex", "all", func(fleetMachine) bool { return false }, false},
		{"attr.vendor=nobody", "all", func(fleetMachine) bool { return false }, true},
		{"site=paris&line=A&status=online", "all", func(m fleetMachine) bool { return m.Site == "paris" && m.Line == "A" && m.online }, false},
		{"site=lyon&status=alarm&attr.vendor=acme&q=e", "all", func(m fleetMachine) bool {
			return m.Site == "lyon" && m.alarm && attr(m, "vendor", "acme") && (fold(m.ID, "e") || fold(m.Name, "e"))
		}, true},
		{"", "lyon", func(m fleetMachine) bool { return m.Site == "lyon" }, false},
		{"site=paris", "lyon", func(fleetMachine) bool { return false }, false},
		{"status=online&attr.vendor=globex", "lyon", func(m fleetMachine) bool { return m.Site == "lyon" && m.online && attr(m, "vendor", "globex") }, true},
	}
	for _, rs := range fleetRegistries {
		t.Run(rs.name, func(t *testing.T) {
			now := time.UnixMilli(1_765_000_000_000)
			clock := func() time.Time { return now }
			var calls atomic.Int64
			reg, index := rs.open(t, clock, &calls)
			a := newFleetAPI(t, reg, index, fleet, clock)
			for _, tt := range tests {
				t.Run(tt.secret+"?"+tt.query, func(t *testing.T) {
					var want []string
					for _, m := range fleet {
						if tt.want(m) {
							want = append(want, m.ID)
						}
					}
					before := calls.Load()
					rec, ans := getFleet(t, a, tt.secret, tt.query)
					if rec.Code != http.StatusOK {
						t.Fatalf("status %d: %s", rec.Code, rec.Body)
					}
					var got []string
					for _, m := range ans.Machines {
						got = append(got, m.ID)
					}
					if diff := gocmp.Diff(got, want); diff != "" {
						t.Errorf("ids (-got +want):\n%s", diff)
					}
					if ans.Next != "" {
						t.Errorf("next %q without a limit", ans.Next)
					}
					if index != nil && tt.index && calls.Load() == before {
						t.Error("the attribute index was not asked")
					}
					if paged := walkFleet(t, a, tt.secret, tt.query, 4, nil); !slices.Equal(paged, got) {
						t.Errorf("pages of 4 give %v, the whole list %v", paged, got)
					}
				})
			}
		})
	}
}

// TestFleetPagesUnderInserts walks the fleet 3 machines a page while
// other machines are registered, before and after the cursor, between
// pages and concurrently (100 more): every machine registered during the whole walk
// comes exactly once, and no machine twice.
func TestFleetPagesUnderInserts(t *testing.T) {
	for _, rs := range fleetRegistries {
		t.Run(rs.name, func(t *testing.T) {
			var calls atomic.Int64
			reg, index := rs.open(t, time.Now, &calls)
			a := newFleetAPI(t, reg, index, testFleet(), time.Now)
			n := 0
			insert := func() {
				n++
				for _, id := range []string{fmt.Sprintf("a%03d", n), fmt.Sprintf("m%02d-%03d", n%36, n), fmt.Sprintf("z%03d", n)} {
					if _, _, err := reg.Put(id, twin.Info{Site: "lyon"}); err != nil {
						t.Error(err)
					}
				}
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for i := range 100 { // bounded: the walk must reach the end
					select {
					case <-stop:
						return
					default:
					}
					if _, _, err := reg.Put(fmt.Sprintf("m%02d-bg%04d", i%36, i), twin.Info{}); err != nil {
						t.Error(err)
						return
					}
				}
			})
			ids := walkFleet(t, a, "all", "", 3, insert)
			close(stop)
			wg.Wait()
			seen := map[string]int{}
			for _, id := range ids {
				seen[id]++
				if seen[id] > 1 {
					t.Errorf("machine %s came twice", id)
				}
			}
			for _, m := range testFleet() {
				if seen[m.ID] != 1 {
					t.Errorf("machine %s came %d times, want once", m.ID, seen[m.ID])
				}
			}
			if !slices.IsSorted(ids) {
				t.Error("pages out of id order")
			}
		})
	}
}

// TestFleetBadParameters checks that each bad parameter is answered 400
// problem+json naming it.
func TestFleetBadParameters(t *testing.T) {
	reg, _ := openTwins(t, time.Minute, time.Now)
	a := newFleetAPI(t, reg, nil, testFleet()[:3], time.Now)
	var manyAttrs []string
	for i := range maxAttrFilters + 1 {
		manyAttrs = append(manyAttrs, fmt.Sprintf("attr.k%d=v", i))
	}
	tests := []struct{ query, param string }{
		{"status=busy", "status"},
		{"status=online,", "status"},
		{"limit=0", "limit"},
		{"limit=x", "limit"},
		{"limit=10001", "limit"},
		{"cursor=!!!", "cursor"},
		{"cursor=" + encodeCursor("m01")[1:], "cursor"},
		{"cursor=bTE6", "cursor"}, // "m1:" with no id
		{"q=" + strings.Repeat("x", maxFleetText+1), "q"},
		{"q=a&q=b", "q"},
		{"attr.=x", "attr."},
		{"attr.vendor=" + strings.Repeat("x", maxFleetText+1), "attr.vendor"},
		{strings.Join(manyAttrs, "&"), "attr"},
	}
	for _, tt := range tests {
		t.Run(tt.query[:min(len(tt.query), 40)], func(t *testing.T) {
			rec, _ := getFleet(t, a, "all", tt.query)
			if rec.Code != http.StatusBadRequest || rec.Header().Get("Content-Type") != "application/problem+json" {
				t.Fatalf("status %d %s: %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
			}
			var p struct {
				InvalidParams []struct{ Name, Reason string } `json:"invalidParams"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || len(p.InvalidParams) == 0 || p.InvalidParams[0].Name != tt.param {
				t.Errorf("invalid-params %+v (%v), want %s named: %s", p.InvalidParams, err, tt.param, rec.Body)
			}
		})
	}
}

// TestFleetGzip checks that the fleet list is compressed for a client that
// accepts gzip and reads back to the same answer.
func TestFleetGzip(t *testing.T) {
	reg, _ := openTwins(t, time.Minute, time.Now)
	a := newFleetAPI(t, reg, nil, testFleet(), time.Now)
	plain, _ := getFleet(t, a, "all", "")
	req := httptest.NewRequest("GET", "/api/v1/machines", nil)
	req.Header.Set("Authorization", "Bearer all")
	req.Header.Set("Accept-Encoding", "gzip, deflate, br")
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	if rec.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("Content-Encoding %q, want gzip", rec.Header().Get("Content-Encoding"))
	}
	if got := gunzip(t, rec.Body.Bytes()); got != plain.Body.String() {
		t.Errorf("gunzipped answer differs from the plain one")
	}
	if rec.Body.Len()*3 > plain.Body.Len() {
		t.Errorf("compressed %d bytes, plain %d: less than 3×", rec.Body.Len(), plain.Body.Len())
	}
}

// TestFleetListLarge checks the fleet list of 5 000 machines (encoded in
// parallel parts) against encoding/json of the twins Live.Machines makes,
// and a page of it against the same slice.
func TestFleetListLarge(t *testing.T) {
	a, reg, live := fleetAPI(t, 5000)
	ms := live.Machines(reg.List())
	for i := range ms {
		a.withAlarmStatus(&ms[i])
	}
	wantJSON, err := json.Marshal(ms)
	if err != nil {
		t.Fatal(err)
	}
	var want []any
	if err := json.Unmarshal(wantJSON, &want); err != nil {
		t.Fatal(err)
	}
	// The twins of a page, for answers other than JSON (CSV).
	page, err := a.selectFleet(context.Background(), auth.Anonymous, fleetQuery{anyStatus: true, limit: 10, after: ms[99].ID})
	if err != nil {
		t.Fatal(err)
	}
	if diff := gocmp.Diff(a.machines(page), ms[100:110]); diff != "" || page.next == "" {
		t.Errorf("machines of a page (next %q) (-got +want):\n%s", page.next, diff)
	}
	for _, tc := range []struct {
		query  string
		lo, hi int
	}{{"", 0, 5000}, {"limit=2500&cursor=" + encodeCursor(ms[1199].ID), 1200, 3700}} {
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/machines?"+tc.query, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: status %d", tc.query, rec.Code)
		}
		if cl := rec.Header().Get("Content-Length"); cl != fmt.Sprint(rec.Body.Len()) {
			t.Errorf("%s: Content-Length %s, body %d bytes", tc.query, cl, rec.Body.Len())
		}
		var got struct {
			Count    int    `json:"count"`
			Machines []any  `json:"machines"`
			Next     string `json:"next"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		if got.Count != tc.hi-tc.lo {
			t.Errorf("%s: count %d, want %d", tc.query, got.Count, tc.hi-tc.lo)
		}
		if diff := gocmp.Diff(got.Machines, want[tc.lo:tc.hi]); diff != "" {
			t.Errorf("%s: machines differ from encoding/json (-got +want):\n%.2000s", tc.query, diff)
		}
		if wantNext := tc.hi < 5000; (got.Next != "") != wantNext {
			t.Errorf("%s: next %q, want one: %v", tc.query, got.Next, wantNext)
		}
	}
}
