package api

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// lpEnv is an API with a real registry and an audit log, writing line
// protocol as the token "telegraf" (ingest and read).
type lpEnv struct {
	api   *API
	reg   *twin.Registry
	log   *fakeLog
	audit *memAudit
}

func newLPEnv(t *testing.T, missing ingest.MissingMachine) *lpEnv {
	t.Helper()
	reg, live := openTwins(t, time.Minute, time.Now)
	e := &lpEnv{reg: reg, log: &fakeLog{real: eventlog.New(1000, nil)}, audit: &memAudit{}}
	id := auth.Identity{Name: "telegraf", Kind: auth.KindToken, Scopes: auth.ScopeIngest | auth.ScopeRead, TokenID: "t"}
	e.api = New(Options{
		MaxBodyBytes: 1 << 20, MaxDecompressedBytes: 4 << 20, MaxLineBytes: 1024,
		Limits:            telemetry.DefaultLimits(),
		MachineTags:       []string{"machineId", "name"},
		LPMissingMachine:  missing,
		Retention:         time.Hour,
		MaxFuture:         time.Minute,
		MaxInflightIngest: 4,
		ReadTimeout:       time.Minute,
	}, Deps{
		Submit: e.log.Submit, Registry: reg, Live: live,
		Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
		Ready:  func() error { return nil },
		Logger: slog.New(slog.DiscardHandler),
		Auth: &Auth{Open: func() bool { return false }, Audit: e.audit, Verify: func(secret string) (auth.Identity, error) {
			if secret == "telegraf" {
				return id, nil
			}
			return auth.Identity{}, auth.ErrInvalidToken
		}},
	})
	return e
}

func (e *lpEnv) do(method, path, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer telegraf")
	w := httptest.NewRecorder()
	e.api.ServeHTTP(w, r)
	return w
}

func (e *lpEnv) machines() []string {
	var ms []string
	for _, b := range e.log.got {
		for _, ev := range b.Events {
			ms = append(ms, ev.Machine)
		}
	}
	return ms
}

// TestLPMissingMachine: each --lp-missing-machine mode on a body with a
// line without the machine tag (TSBS iot has such lines).
func TestLPMissingMachine(t *testing.T) {
	body := "readings,fleet=South,driver=Trish lat=1,lon=2\nreadings,name=truck_1,fleet=South lat=3,lon=4\n"
	t.Run("reject", func(t *testing.T) {
		e := newLPEnv(t, ingest.MissingReject)
		rec := e.do("POST", "/write?db=x", body)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "line 1") || !strings.Contains(rec.Body.String(), "no machine id tag") {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if got := e.machines(); len(got) != 1 || got[0] != "truck_1" {
			t.Errorf("stored events of %v, want truck_1's", got)
		}
	})
	t.Run("drop", func(t *testing.T) {
		e := newLPEnv(t, ingest.MissingDrop)
		rec := e.do("POST", "/write?db=x", body)
		if rec.Code != http.StatusNoContent {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if got := e.machines(); len(got) != 1 || got[0] != "truck_1" {
			t.Errorf("stored events of %v, want truck_1's", got)
		}
		if got := testutil.ToFloat64(e.api.lp.dropped); got != 1 {
			t.Errorf("twinline_ingest_lines_dropped_total = %v, want 1", got)
		}
		// Another bad line still makes the answer a 400 naming it; the
		// dropped line is counted, not named.
		rec = e.do("POST", "/write?db=x", body+"readings,name=truck_2 lat=\n")
		if rec.Code != http.StatusBadRequest || strings.Contains(rec.Body.String(), "line 1") || !strings.Contains(rec.Body.String(), "line 3") {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if got := testutil.ToFloat64(e.api.lp.dropped); got != 2 {
			t.Errorf("twinline_ingest_lines_dropped_total = %v, want 2", got)
		}
	})
	t.Run("measurement", func(t *testing.T) {
		e := newLPEnv(t, ingest.MissingMeasurement)
		rec := e.do("POST", "/write?db=x", body)
		if rec.Code != http.StatusNoContent {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if got := e.machines(); len(got) != 2 || got[0] != "readings" || got[1] != "truck_1" {
			t.Errorf("stored events of %v, want readings and truck_1", got)
		}
		if in, err := e.reg.Get("readings"); err != nil || in.Attributes["driver"] != "Trish" {
			t.Errorf("machine readings: %+v, %v", in, err)
		}
	})
}

// TestLPTagsAsAttributes: tags other than the machine id become registry
// attributes, usable by the fleet's attr.KEY filter; a tag that changes
// wins, and the change is in the audit log.
func TestLPTagsAsAttributes(t *testing.T) {
	e := newLPEnv(t, ingest.MissingReject)
	write := func(body string) {
		t.Helper()
		if rec := e.do("POST", "/api/v2/write?precision=s", body); rec.Code != http.StatusNoContent {
			t.Fatalf("write: status %d: %s", rec.Code, rec.Body)
		}
	}
	fleet := func(query string) []string {
		t.Helper()
		rec := e.do("GET", "/api/v1/machines?"+query, "")
		if rec.Code != http.StatusOK {
			t.Fatalf("fleet: status %d: %s", rec.Code, rec.Body)
		}
		var ms []struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &ms); err != nil {
			var page struct {
				Machines []struct {
					ID string `json:"id"`
				} `json:"machines"`
			}
			if err2 := json.Unmarshal(rec.Body.Bytes(), &page); err2 != nil {
				t.Fatalf("fleet answer: %v: %s", err, rec.Body)
			}
			ms = page.Machines
		}
		var ids []string
		for _, m := range ms {
			ids = append(ids, m.ID)
		}
		return ids
	}
	write("readings,name=truck_1,fleet=South,driver=Trish,model=F-150 lat=1\n" +
		"readings,name=truck_2,fleet=North,driver=Derek,model=G-2000 lat=1\n" +
		"diagnostics,name=truck_1,fleet=South,driver=Trish,model=F-150 fuel_state=0.5\n")
	if got := fleet("attr.fleet=South"); len(got) != 1 || got[0] != "truck_1" {
		t.Fatalf("attr.fleet=South: %v", got)
	}
	if got := fleet("attr.model=G-2000"); len(got) != 1 || got[0] != "truck_2" {
		t.Fatalf("attr.model=G-2000: %v", got)
	}
	in, _ := e.reg.Get("truck_1")
	if _, ok := in.Attributes["name"]; ok {
		t.Errorf("the machine id tag became an attribute: %v", in.Attributes)
	}
	// First tags are not changes of a value: no audit entry.
	if len(e.audit.entries) != 0 {
		t.Errorf("audit entries for first tags: %+v", e.audit.entries)
	}
	// truck_1 changes driver and fleet.
	write("readings,name=truck_1,fleet=North,driver=Albert,model=F-150 lat=2\n")
	if got := fleet("attr.fleet=North"); len(got) != 2 {
		t.Fatalf("attr.fleet=North after the change: %v", got)
	}
	if got := fleet("attr.driver=Trish"); len(got) != 0 {
		t.Fatalf("attr.driver=Trish after the change: %v", got)
	}
	if len(e.audit.entries) != 1 {
		t.Fatalf("audit entries: %+v", e.audit.entries)
	}
	a := e.audit.entries[0]
	before, _ := a.Detail["before"].(map[string]string)
	after, _ := a.Detail["after"].(map[string]string)
	if a.Action != "machine.tags" || a.Machine != "truck_1" || a.Actor != "telegraf" ||
		before["driver"] != "Trish" || before["fleet"] != "South" || after["driver"] != "Albert" || after["fleet"] != "North" || len(before) != 2 {
		t.Errorf("audit entry %+v", a)
	}
	// The same tags again: nothing to do, and the cache skips the registry.
	write("readings,name=truck_1,fleet=North,driver=Albert,model=F-150 lat=3\n")
	if len(e.audit.entries) != 1 || testutil.ToFloat64(e.api.lp.tagChanges) != 3 {
		t.Errorf("unchanged tags: %d audit entries, %v updates", len(e.audit.entries), testutil.ToFloat64(e.api.lp.tagChanges))
	}
	// A deleted machine that sends again gets its tags back.
	if err := e.reg.Delete("truck_2"); err != nil {
		t.Fatal(err)
	}
	write("readings,name=truck_2,fleet=North,driver=Derek,model=G-2000 lat=2\n")
	if in, err := e.reg.Get("truck_2"); err != nil || in.Attributes["model"] != "G-2000" {
		t.Errorf("truck_2 after delete: %+v, %v", in, err)
	}
}

// TestLPTagLimits: the bounds on what untrusted tags cost — at most one
// machine.tags audit entry per machine per 10 minutes (the next counts the
// changes in between), at most twin.MaxTagAttributes attributes from tags,
// and a machine whose tags the registry refused is not tried again on
// every request.
func TestLPTagLimits(t *testing.T) {
	e := newLPEnv(t, ingest.MissingReject)
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	e.api.clock = func() time.Time { return now }
	write := func(body string) {
		t.Helper()
		if rec := e.do("POST", "/api/v2/write?precision=s", body); rec.Code != http.StatusNoContent {
			t.Fatalf("write: status %d: %s", rec.Code, rec.Body)
		}
	}
	// A tag that changes on every request: one audit entry, then four
	// changes coalesced into the next, ten minutes on.
	for i := range 6 {
		write(fmt.Sprintf("m,name=truck_1,req=r%d x=%d\n", i, i))
		now = now.Add(time.Second)
	}
	if len(e.audit.entries) != 1 || testutil.ToFloat64(e.api.lp.coalesced) != 4 {
		t.Fatalf("per-request tag: %d audit entries, %v coalesced", len(e.audit.entries), testutil.ToFloat64(e.api.lp.coalesced))
	}
	if in, _ := e.reg.Get("truck_1"); in.Attributes["req"] != "r5" {
		t.Errorf("attribute not the latest: %v", in.Attributes)
	}
	now = now.Add(10 * time.Minute)
	write("m,name=truck_1,req=r6 x=6\n")
	if len(e.audit.entries) != 2 {
		t.Fatalf("after 10 minutes: %d audit entries", len(e.audit.entries))
	}
	d := e.audit.entries[1].Detail
	if d["coalesced"] != 4 || d["before"].(map[string]string)["req"] != "r5" || d["after"].(map[string]string)["req"] != "r6" {
		t.Errorf("second entry detail %v", d)
	}

	// 40 tags: the first 32 keys (in order) become attributes, 8 are
	// ignored and counted.
	var b strings.Builder
	b.WriteString("m,name=truck_2")
	for i := range 40 {
		fmt.Fprintf(&b, ",k%02d=v", i)
	}
	b.WriteString(" x=1\n")
	write(b.String())
	if in, _ := e.reg.Get("truck_2"); len(in.Attributes) != twin.MaxTagAttributes || in.Attributes["k39"] != nil {
		t.Errorf("truck_2 has %d attributes: %v", len(in.Attributes), in.Attributes)
	}
	if got := testutil.ToFloat64(e.api.lp.tagIgnored); got != 8 {
		t.Errorf("ignored keys %v, want 8", got)
	}

	// Refused (too large): within a minute the machine's changed tags
	// are not tried, even once the registry would take them.
	big := strings.Repeat("x", 16*1024-200)
	if _, _, err := e.reg.Put("truck_3", twin.Info{Attributes: map[string]any{"blob": big}}); err != nil {
		t.Fatal(err)
	}
	write("m,name=truck_3,note=" + strings.Repeat("a", 500) + " x=1\n")
	if got := testutil.ToFloat64(e.api.lp.tagErrors); got != 1 {
		t.Fatalf("refused tags: %v errors", got)
	}
	if _, _, err := e.reg.Put("truck_3", twin.Info{}); err != nil { // the operator clears the blob
		t.Fatal(err)
	}
	now = now.Add(30 * time.Second)
	write("m,name=truck_3,note=b x=2\n")
	if in, _ := e.reg.Get("truck_3"); in.Attributes["note"] != nil {
		t.Errorf("tags tried again within a minute of a refusal: %v", in.Attributes)
	}
	now = now.Add(time.Minute)
	write("m,name=truck_3,note=c x=3\n")
	if in, _ := e.reg.Get("truck_3"); in.Attributes["note"] != "c" {
		t.Errorf("tags not tried a minute after a refusal: %v", in.Attributes)
	}
}
