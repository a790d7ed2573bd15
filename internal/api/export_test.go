package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/parquet-go/parquet-go"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/export"
	"github.com/twinline/twinline/internal/export/exporttest"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// exportFleet are the registered machines of the export tests; "ghost"
// has samples but no registry entry.
var exportFleet = []twin.Info{
	{ID: "p1", Name: "=Press 1", Site: "lyon", Line: "A"},
	{ID: "p2", Name: "Press 2", Site: "lyon", Line: "B"},
	{ID: "p3", Name: "Press 3", Site: "paris", Line: "A"},
}

// exportSamples: per machine (and ghost), temp and rpm, n points each a
// second apart from t0, values that include a negative number, and one
// NaN.
func exportSamples(n int) []telemetry.Sample {
	var out []telemetry.Sample
	for mi, m := range []string{"p1", "p2", "p3", "ghost"} {
		for _, metric := range []string{"temp", "rpm"} {
			for i := range n {
				v := float64(mi*1000+i) - 2.5
				if m == "p2" && metric == "rpm" && i == 1 {
					v = math.NaN()
				}
				out = append(out, telemetry.Sample{Machine: m, Metric: metric, Time: t0 + int64(i)*1000, Value: v})
			}
		}
	}
	return out
}

type exportEnv struct {
	api   *API
	store store.Store
	audit *memAudit
}

// newExportAPI is an API with auth on over an embedded store holding
// exportSamples(n), the registry of exportFleet, an alarm and an audit
// entry; at t0 + 3h. Secrets: "all" (read and admin, every site), "lyon"
// (read and admin, lyon only).
func newExportAPI(t *testing.T, n int) *exportEnv {
	t.Helper()
	now := time.UnixMilli(t0 + 3*hourMs)
	clock := func() time.Time { return now }
	reg, live := openTwins(t, time.Minute, clock)
	for _, in := range exportFleet {
		if _, _, err := reg.Put(in.ID, in); err != nil {
			t.Fatal(err)
		}
	}
	st, err := embedded.Open(filepath.Join(t.TempDir(), "tsdb"), embedded.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Append(context.Background(), exportSamples(n)); err != nil {
		t.Fatal(err)
	}
	alarms, err := twin.NewAlarms(context.Background(), twin.NewAlarmFile(filepath.Join(t.TempDir(), "alarms.jsonl")), time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alarms.Close() })
	high := 90.0
	if _, err := alarms.Observe([]telemetry.Sample{
		{Machine: "p1", Metric: "temp", Time: t0, Value: 99},
		{Machine: "p3", Metric: "temp", Time: t0, Value: 95},
	}, func(string) map[string]twin.Threshold { return map[string]twin.Threshold{"temp": {High: &high}} }); err != nil {
		t.Fatal(err)
	}
	audit := &memAudit{}
	for i, m := range []string{"p1", "p3"} {
		audit.Append(context.Background(), auth.AuditEntry{ID: uint64(i + 1), At: now, Actor: "@ana", Action: "note.add",
			Machine: m, Outcome: "ok", Detail: map[string]any{"text": "=1+1, \"quoted\""}})
	}
	ids := map[string]auth.Identity{
		"all":  {Name: "all", Kind: auth.KindToken, Scopes: auth.ScopeRead | auth.ScopeAdmin, TokenID: "a"},
		"lyon": {Name: "lyon", Kind: auth.KindToken, Scopes: auth.ScopeRead | auth.ScopeAdmin, Sites: []string{"lyon"}, TokenID: "l"},
	}
	a := New(Options{MaxInflightIngest: 1}, Deps{
		Registry: reg, Live: live, Store: st, Alarms: alarms, Clock: clock, Logger: slog.New(slog.DiscardHandler),
		Ready: func() error { return nil },
		Auth: &Auth{Open: func() bool { return false }, Audit: audit, Verify: func(secret string) (auth.Identity, error) {
			if id, ok := ids[secret]; ok {
				return id, nil
			}
			return auth.Identity{}, auth.ErrInvalidToken
		}},
	})
	return &exportEnv{api: a, store: st, audit: audit}
}

func (e *exportEnv) get(secret, path string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", path, nil)
	r.Header.Set("Authorization", "Bearer "+secret)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	e.api.ServeHTTP(w, r)
	return w
}

// TestCSVAnswers: series, fleet, alarms and audit answer CSV for
// format=csv and for Accept: text/csv, which Python's csv module reads
// with the route's header and one row per item of the JSON answer; text
// cells are defused, a restricted identity's CSV has only its sites.
func TestCSVAnswers(t *testing.T) {
	const n = 50
	e := newExportAPI(t, n)
	seriesQ := fmt.Sprintf("/api/v1/machines/p2/series?metric=rpm&from=%d&to=%d", t0, t0+hourMs)
	tests := []struct {
		name, path, secret string
		header             []string
		rows               int // the JSON answer's count
		filename           string
		check              func(t *testing.T, recs [][]string)
	}{
		// The JSON series drops the NaN point (or bucket), CSV keeps it.
		{"series", seriesQ, "all", []string{"time", "machine", "metric", "value"}, n, "p2_rpm_", func(t *testing.T, recs [][]string) {
			if got, want := recs[1], []string{export.FormatTime(t0), "p2", "rpm", "997.5"}; !slices.Equal(got, want) {
				t.Errorf("first row %q, want %q", got, want)
			}
			if recs[2][3] != "NaN" {
				t.Errorf("second row %q: want the NaN sample (JSON drops it)", recs[2])
			}
		}},
		{"series by step", seriesQ + "&step=10s&agg=max", "all", []string{"time", "machine", "metric", "value"}, 5, "p2_rpm_", nil},
		{"fleet", "/api/v1/machines", "all", []string{"id", "name", "site", "line", "status", "alarm", "lastSeen", "rate1m", "rate5m"}, 3, "fleet.csv", func(t *testing.T, recs [][]string) {
			if recs[1][0] != "p1" || recs[1][1] != "'=Press 1" {
				t.Errorf("p1's row %q: want its name defused", recs[1])
			}
		}},
		{"fleet, one site", "/api/v1/machines", "lyon", nil, 2, "fleet.csv", func(t *testing.T, recs [][]string) {
			for _, r := range recs[1:] {
				if r[2] != "lyon" {
					t.Errorf("row %q of another site", r)
				}
			}
		}},
		{"alarms", "/api/v1/alarms?state=all", "all", []string{"id", "machine", "metric", "kind", "limit", "value", "state", "raisedAt",
			"clearedAt", "acknowledged", "acknowledgedAt", "acknowledgedBy", "acknowledgeNote"}, 2, "alarms.csv", func(t *testing.T, recs [][]string) {
			for _, r := range recs[1:] {
				if r[3] != "high" || r[4] != "90" || r[7] != export.FormatTime(t0) {
					t.Errorf("row %q: want high, 90, raised at t0", r)
				}
			}
		}},
		{"alarms, one site", "/api/v1/alarms?state=all", "lyon", nil, 1, "alarms.csv", nil},
		{"audit", "/api/v1/audit", "all", []string{"id", "at", "actor", "actorKind", "action", "machine", "target", "remote", "outcome", "detail"},
			2, "audit.csv", func(t *testing.T, recs [][]string) {
				if r := recs[1]; r[2] != "'@ana" || r[9] != `{"text":"=1+1, \"quoted\""}` {
					t.Errorf("row %q: want the actor defused, the detail as JSON", r)
				}
			}},
		{"audit, one site", "/api/v1/audit", "lyon", nil, 1, "audit.csv", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js := e.get(tt.secret, tt.path)
			if js.Code != http.StatusOK || !strings.HasPrefix(js.Header().Get("Content-Type"), "application/json") {
				t.Fatalf("JSON: %d %s %s", js.Code, js.Header().Get("Content-Type"), js.Body)
			}
			var counted struct {
				Count int
				T     []int64
			}
			_ = json.Unmarshal(js.Body.Bytes(), &counted)
			if got := max(counted.Count, len(counted.T)); got != tt.rows && !(strings.HasPrefix(tt.name, "series") && got == tt.rows-1) {
				t.Errorf("JSON answer has %d items, want %d", got, tt.rows)
			}
			sep := "?"
			if strings.Contains(tt.path, "?") {
				sep = "&"
			}
			for _, how := range []struct {
				name   string
				w      *httptest.ResponseRecorder
				accept string
			}{
				{"format=csv", e.get(tt.secret, tt.path+sep+"format=csv"), ""},
				{"Accept", e.get(tt.secret, tt.path, "Accept", "text/csv"), ""},
			} {
				w := how.w
				if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/csv; charset=utf-8" {
					t.Fatalf("%s: %d %s %s", how.name, w.Code, w.Header().Get("Content-Type"), w.Body)
				}
				if cd := w.Header().Get("Content-Disposition"); !strings.HasPrefix(cd, `attachment; filename="`+tt.filename) {
					t.Errorf("%s: Content-Disposition %q, want an attachment named %s…", how.name, cd, tt.filename)
				}
				recs := exporttest.PythonCSV(t, w.Body.Bytes())
				if len(recs)-1 != tt.rows {
					t.Errorf("%s: %d rows, want %d", how.name, len(recs)-1, tt.rows)
				}
				if tt.header != nil && !slices.Equal(recs[0], tt.header) {
					t.Errorf("%s: header %q, want %q", how.name, recs[0], tt.header)
				}
				if tt.check != nil {
					tt.check(t, recs)
				}
			}
		})
	}
}

func TestCSVFormatRefused(t *testing.T) {
	e := newExportAPI(t, 1)
	for _, path := range []string{"/api/v1/machines?format=xml", "/api/v1/alarms?format=xlsx", "/api/v1/audit?format=parquet",
		"/api/v1/machines/p1/series?metric=temp&format=tsv"} {
		w := e.get("all", path)
		if w.Code != http.StatusBadRequest || w.Header().Get("Content-Type") != "application/problem+json" ||
			!strings.Contains(w.Body.String(), `"name":"format"`) {
			t.Errorf("%s: %d %s %s; want a 400 problem naming format", path, w.Code, w.Header().Get("Content-Type"), w.Body)
		}
	}
	if w := e.get("all", "/api/v1/machines?format=json", "Accept", "text/csv"); !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		t.Errorf("format=json with Accept: text/csv answered %s; the parameter wins", w.Header().Get("Content-Type"))
	}
}

func TestAcceptsCSV(t *testing.T) {
	tests := []struct {
		accept string
		want   bool
	}{
		{"", false},
		{"*/*", false},
		{"text/csv", true},
		{"text/csv; charset=utf-8", true},
		{"application/json, text/csv", false},
		{"text/csv, application/json;q=0.9", true},
		{"application/json;q=0.5, text/csv;q=0.8", true},
		{"text/csv;q=0", false},
		{"text/html,application/xhtml+xml,*/*;q=0.8", false},
		{"text/csv;q=bad", false},
	}
	for _, tt := range tests {
		if got := acceptsCSV(tt.accept); got != tt.want {
			t.Errorf("acceptsCSV(%q) = %v, want %v", tt.accept, got, tt.want)
		}
	}
	if !acceptsParquet("application/vnd.apache.parquet, text/csv;q=0.5") || acceptsParquet("text/csv, application/vnd.apache.parquet") {
		t.Error("acceptsParquet does not follow the qualities")
	}
}

// wantExport is what an export of exportSamples(n) holds for the machines
// kept, in the export's order (machine, metric, time).
func wantExport(n int, keep func(machine, metric string) bool) []export.Row {
	infos := map[string]twin.Info{}
	for _, in := range exportFleet {
		infos[in.ID] = in
	}
	var rows []export.Row
	for _, s := range exportSamples(n) {
		if keep(s.Machine, s.Metric) {
			in := infos[s.Machine]
			rows = append(rows, export.Row{Time: s.Time, Machine: s.Machine, Metric: s.Metric, Value: s.Value, Site: in.Site, Line: in.Line})
		}
	}
	slices.SortStableFunc(rows, func(x, y export.Row) int {
		return strings.Compare(x.Machine+"\x00"+x.Metric, y.Machine+"\x00"+y.Metric)
	})
	return rows
}

func rowsFromCSV(t *testing.T, recs [][]string) []export.Row {
	t.Helper()
	if !slices.Equal(recs[0], export.Columns) {
		t.Fatalf("header %q, want %q", recs[0], export.Columns)
	}
	var rows []export.Row
	for _, r := range recs[1:] {
		tm, err := time.Parse(time.RFC3339Nano, r[0])
		if err != nil {
			t.Fatalf("time %q: %v", r[0], err)
		}
		v, err := strconv.ParseFloat(r[3], 64)
		if err != nil {
			t.Fatalf("value %q: %v", r[3], err)
		}
		rows = append(rows, export.Row{Time: tm.UnixMilli(), Machine: r[1], Metric: r[2], Value: v, Site: r[4], Line: r[5]})
	}
	return rows
}

var cmpNaN = cmp.Comparer(func(x, y float64) bool { return x == y || math.IsNaN(x) && math.IsNaN(y) })

// TestExport: the export's rows, as CSV through Python's csv module and
// as Parquet through parquet-go's reader, are the stored samples of the
// selection; a site-restricted identity gets only its sites.
func TestExport(t *testing.T) {
	const n = 300
	e := newExportAPI(t, n)
	rng := fmt.Sprintf("from=%d&to=%d", t0, t0+hourMs)
	all := func(string, string) bool { return true }
	lyon := func(m, _ string) bool { return m == "p1" || m == "p2" }
	tests := []struct {
		name, secret, query string
		keep                func(machine, metric string) bool
	}{
		{"everything", "all", rng, all},
		{"one site's identity", "lyon", rng, lyon},
		{"site", "all", rng + "&site=paris", func(m, _ string) bool { return m == "p3" }},
		{"line", "all", rng + "&line=A", func(m, _ string) bool { return m == "p1" || m == "p3" }},
		{"machines and metric", "all", rng + "&machine=p2&machine=ghost&metric=rpm", func(m, k string) bool { return (m == "p2" || m == "ghost") && k == "rpm" }},
		{"restricted, site of another", "lyon", rng + "&site=paris", func(string, string) bool { return false }},
		{"part of the range", "all", fmt.Sprintf("from=%d&to=%d&machine=p1&metric=temp", t0+10_000, t0+19_000),
			func(m, k string) bool { return false }},
		{"default range: the last 24 hours", "all", "machine=p3", func(m, _ string) bool { return m == "p3" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := wantExport(n, tt.keep)
			if tt.name == "part of the range" {
				want = wantExport(n, func(m, k string) bool { return m == "p1" && k == "temp" })[10:20]
			}
			w := e.get(tt.secret, "/api/v1/export?"+tt.query)
			if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/csv; charset=utf-8" {
				t.Fatalf("csv: %d %s %s", w.Code, w.Header().Get("Content-Type"), w.Body)
			}
			if cd := w.Header().Get("Content-Disposition"); !strings.HasPrefix(cd, `attachment; filename="twinline-export_`) || !strings.HasSuffix(cd, `.csv"`) {
				t.Errorf("Content-Disposition %q", cd)
			}
			if got := w.Result().Trailer.Get("Twinline-Export-Rows"); got != strconv.Itoa(len(want)) {
				t.Errorf("trailer Twinline-Export-Rows = %q, want %d", got, len(want))
			}
			got := rowsFromCSV(t, exporttest.PythonCSV(t, w.Body.Bytes()))
			if diff := cmp.Diff(got, want, cmpNaN); diff != "" {
				t.Errorf("csv rows (-got +want):\n%s", diff)
			}

			w = e.get(tt.secret, "/api/v1/export?"+tt.query+"&format=parquet")
			if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/vnd.apache.parquet" {
				t.Fatalf("parquet: %d %s %s", w.Code, w.Header().Get("Content-Type"), w.Body)
			}
			r := parquet.NewGenericReader[export.Row](bytes.NewReader(w.Body.Bytes()))
			defer r.Close()
			prows := make([]export.Row, r.NumRows())
			if n, err := r.Read(prows); n != len(prows) || err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("reading parquet: %d of %d rows: %v", n, len(prows), err)
			}
			if diff := cmp.Diff(prows, want, cmpNaN, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("parquet rows (-got +want):\n%s", diff)
			}
		})
	}
	t.Run("HEAD", func(t *testing.T) {
		r := httptest.NewRequest("HEAD", "/api/v1/export?"+rng, nil)
		r.Header.Set("Authorization", "Bearer all")
		w := httptest.NewRecorder()
		e.api.ServeHTTP(w, r)
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/csv; charset=utf-8" || w.Body.Len() != 0 {
			t.Errorf("HEAD: %d %s, %d bytes", w.Code, w.Header().Get("Content-Type"), w.Body.Len())
		}
	})
	t.Run("Accept chooses parquet", func(t *testing.T) {
		w := e.get("all", "/api/v1/export?"+rng, "Accept", "application/vnd.apache.parquet")
		if w.Header().Get("Content-Type") != "application/vnd.apache.parquet" || !bytes.HasPrefix(w.Body.Bytes(), []byte("PAR1")) {
			t.Errorf("got %s, %q…", w.Header().Get("Content-Type"), w.Body.Bytes()[:min(4, w.Body.Len())])
		}
	})
}

func TestExportRefusals(t *testing.T) {
	e := newExportAPI(t, 1)
	tests := []struct {
		name, secret, query string
		status              int
		names               []string
	}{
		{"format", "all", "format=xlsx", 400, []string{"format"}},
		{"times", "all", "from=yesterday&to=soon", 400, []string{"to", "from"}},
		{"from after to", "all", "from=2000&to=1000", 400, []string{"from"}},
		{"empty filters", "all", "site=&metric=", 400, []string{"site", "metric"}},
		{"a machine of another site", "lyon", "machine=p3", 404, nil},
		{"a machine not registered, restricted", "lyon", "machine=ghost", 404, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := e.get(tt.secret, "/api/v1/export?"+tt.query)
			if w.Code != tt.status || w.Header().Get("Content-Type") != "application/problem+json" {
				t.Fatalf("got %d %s %s; want a %d problem", w.Code, w.Header().Get("Content-Type"), w.Body, tt.status)
			}
			var p struct {
				InvalidParams []struct{ Name string } `json:"invalidParams"`
			}
			_ = json.Unmarshal(w.Body.Bytes(), &p)
			var names []string
			for _, ip := range p.InvalidParams {
				names = append(names, ip.Name)
			}
			if diff := cmp.Diff(names, tt.names); diff != "" {
				t.Errorf("invalid params (-got +want):\n%s\n%s", diff, w.Body)
			}
		})
	}
	t.Run("busy", func(t *testing.T) {
		for range maxExports {
			e.api.exports <- struct{}{}
		}
		defer func() {
			for range maxExports {
				<-e.api.exports
			}
		}()
		if w := e.get("all", "/api/v1/export"); w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
			t.Errorf("got %d %s; want 503 with Retry-After", w.Code, w.Body)
		}
	})
}

// failingStore fails a Select of the series key after some points.
type failingStore struct {
	store.Store
	key   store.SeriesKey
	after int
}

func (f failingStore) Select(ctx context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) error {
	if key != f.key {
		return f.Store.Select(ctx, key, from, to, fn)
	}
	n := 0
	err := f.Store.Select(ctx, key, from, to, func(p store.Point) bool {
		if n++; n > f.after {
			return false
		}
		return fn(p)
	})
	if err == nil && n > f.after {
		err = errors.New("the disk went away")
	}
	return err
}

// TestExportCutOnError: an error after the first bytes cuts the
// connection — the client's read fails, not a short file that looks whole
// — and a complete export ends with its row count in a trailer.
func TestExportCutOnError(t *testing.T) {
	e := newExportAPI(t, 3000)
	for _, format := range []string{"csv", "parquet"} {
		t.Run(format, func(t *testing.T) {
			e.api.store = e.store
			srv := httptest.NewServer(e.api)
			defer srv.Close()
			get := func() (*http.Response, []byte, error) {
				req, _ := http.NewRequest("GET", srv.URL+fmt.Sprintf("/api/v1/export?from=%d&to=%d&format=%s", t0, t0+hourMs, format), nil)
				req.Header.Set("Authorization", "Bearer all")
				res, err := srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				body, err := io.ReadAll(res.Body)
				return res, body, err
			}
			res, body, err := get()
			if err != nil || res.StatusCode != 200 || res.Trailer.Get("Twinline-Export-Rows") != strconv.Itoa(8*3000) {
				t.Fatalf("complete export: %d, %d bytes, trailer %q, err %v", res.StatusCode, len(body), res.Trailer.Get("Twinline-Export-Rows"), err)
			}

			// p2/rpm, the fourth series, fails after its first 2000
			// points: 3 × 3000 + 2000 rows went out (part of them).
			e.api.store = failingStore{Store: e.store, key: store.SeriesKey{Machine: "p2", Metric: "rpm"}, after: 2000}
			res, body, err = get()
			if res.StatusCode != 200 {
				t.Fatalf("status %d: the failure came after the header", res.StatusCode)
			}
			if err == nil {
				t.Fatalf("the failed export read as complete (%d bytes)", len(body))
			}
			if res.Trailer.Get("Twinline-Export-Rows") != "" {
				t.Errorf("a failed export has the trailer of a complete one")
			}
		})
	}
	t.Run("before the first bytes", func(t *testing.T) {
		// ghost/rpm, the first series, fails before a batch is full:
		// nothing was sent, the answer is still a problem.
		e.api.store = failingStore{Store: e.store, key: store.SeriesKey{Machine: "ghost", Metric: "rpm"}, after: 10}
		w := e.get("all", fmt.Sprintf("/api/v1/export?from=%d&to=%d", t0, t0+hourMs))
		if w.Code != http.StatusServiceUnavailable || w.Header().Get("Content-Type") != "application/problem+json" ||
			w.Header().Get("Content-Disposition") != "" || !strings.Contains(w.Body.String(), "the disk went away") {
			t.Errorf("got %d %v %s; want a 503 problem", w.Code, w.Header(), w.Body)
		}
	})
}
