package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/promapi"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// matrixRequest is a valid request for one route, naming the machine m1
// (site lyon) wherever a route takes a machine.
type matrixRequest struct {
	path, contentType, body string
	// site says how a valid token of another site is answered: "hidden"
	// (the machine is not found: 404), "filtered" (200 without m1's
	// data), "rejected" (ingest: the item is refused, 400), or "neutral"
	// (the route is about no machine: answered as for the right token).
	site string
}

// matrixRequests has a valid request for every route of the table: a new
// route without one fails TestAuthMatrix, so none can skip it.
var matrixRequests = map[string]matrixRequest{
	"POST /api/v1/events":                                  {"/api/v1/events", "application/json", `{"machineId":"m1","temp":71.5}`, "rejected"},
	"POST /write":                                          {"/write?db=x", "text/plain", "cpu,machineId=m1 temp=1", "rejected"},
	"POST /api/v2/write":                                   {"/api/v2/write?bucket=x", "text/plain", "cpu,machineId=m1 temp=1", "rejected"},
	"GET /ping":                                            {"/ping", "", "", "neutral"},
	"GET /query":                                           {"/query?q=SHOW+DATABASES", "", "", "neutral"},
	"POST /query":                                          {"/query", "application/x-www-form-urlencoded", "q=SHOW+DATABASES", "neutral"},
	"GET /api/v1/machines":                                 {"/api/v1/machines", "", "", "filtered"},
	"GET /api/v1/machines/{id}":                            {"/api/v1/machines/m1", "", "", "hidden"},
	"PUT /api/v1/machines/{id}":                            {"/api/v1/machines/m1", "application/json", `{"name":"Changed","site":"lyon"}`, "hidden"},
	"PATCH /api/v1/machines/{id}":                          {"/api/v1/machines/m1", "application/json", `{"name":"Changed"}`, "hidden"},
	"DELETE /api/v1/machines/{id}":                         {"/api/v1/machines/m1", "", "", "hidden"},
	"GET /api/v1/machines/{id}/latest":                     {"/api/v1/machines/m1/latest", "", "", "hidden"},
	"GET /api/v1/machines/{id}/series":                     {"/api/v1/machines/m1/series?metric=temp", "", "", "hidden"},
	"GET /api/v1/machines/{id}/notes":                      {"/api/v1/machines/m1/notes", "", "", "hidden"},
	"POST /api/v1/machines/{id}/notes":                     {"/api/v1/machines/m1/notes", "application/json", `{"text":"check the bearing"}`, "hidden"},
	"GET /api/v1/machines/{id}/twin":                       {"/api/v1/machines/m1/twin", "", "", "hidden"},
	"PATCH /api/v1/machines/{id}/twin/desired":             {"/api/v1/machines/m1/twin/desired", "application/merge-patch+json", `{"mode":"auto"}`, "hidden"},
	"PATCH /api/v1/machines/{id}/twin/reported":            {"/api/v1/machines/m1/twin/reported", "application/json", `{"mode":"auto"}`, "hidden"},
	"GET /api/v1/machines/{id}/twin/desired":               {"/api/v1/machines/m1/twin/desired?version=0", "", "", "hidden"},
	"GET /api/v1/alarms":                                   {"/api/v1/alarms?state=all", "", "", "filtered"},
	"GET /api/v1/oee":                                      {"/api/v1/oee", "", "", "filtered"},
	"POST /api/v1/alarms/{id}/ack":                         {"/api/v1/alarms/ALARM/ack", "application/json", `{"note":"checked"}`, "hidden"},
	"GET /api/v1/stream":                                   {"/api/v1/stream?machine=m1", "", "", "hidden"},
	"POST /api/v1/stream/tickets":                          {"/api/v1/stream/tickets", "application/json", `{}`, "neutral"},
	"POST /api/v1/traces":                                  {"/api/v1/traces", "application/json", matrixSpan, "neutral"},
	"GET /api/v1/session":                                  {"/api/v1/session", "", "", "neutral"},
	"POST /api/v1/session":                                 {"/api/v1/session", "application/json", `{"token":"right"}`, "neutral"},
	"DELETE /api/v1/session":                               {"/api/v1/session", "", "", "neutral"},
	"GET /api/v1/tokens":                                   {"/api/v1/tokens", "", "", "filtered"},
	"POST /api/v1/tokens":                                  {"/api/v1/tokens", "application/json", `{"name":"new","scopes":["admin"],"sites":["lyon"]}`, "forbidden"},
	"DELETE /api/v1/tokens/{name}":                         {"/api/v1/tokens/lyon-reader", "", "", "hidden"},
	"GET /api/v1/audit":                                    {"/api/v1/audit", "", "", "filtered"},
	"GET /healthz":                                         {"/healthz", "", "", "neutral"},
	"GET /readyz":                                          {"/readyz", "", "", "neutral"},
	"GET /metrics":                                         {"/metrics", "", "", "neutral"},
	"GET /api/openapi.json":                                {"/api/openapi.json", "", "", "neutral"},
	"GET /api/asyncapi.json":                               {"/api/asyncapi.json", "", "", "neutral"},
	"GET /docs":                                            {"/docs", "", "", "neutral"},
	"GET /docs/{file}":                                     {"/docs/docs.js", "", "", "neutral"},
	"GET /{$}":                                             {"/", "", "", "neutral"},
	"GET /assets/{file}":                                   {"/assets/otel-abc.js", "", "", "neutral"},
	"GET /api/v1/machines/{id}/commands":                   {"/api/v1/machines/m1/commands", "", "", "hidden"},
	"POST /api/v1/machines/{id}/commands":                  {"/api/v1/machines/m1/commands", "application/json", `{"name":"stop"}`, "hidden"},
	"GET /api/v1/machines/{id}/commands/{cmdId}":           {"/api/v1/machines/m1/commands/CMD", "", "", "hidden"},
	"POST /api/v1/machines/{id}/commands/{cmdId}/response": {"/api/v1/machines/m1/commands/CMD/response", "application/json", `{"state":"accepted"}`, "hidden"},
	"GET /api/v1/machines/{id}/states":                     {"/api/v1/machines/m1/states?name=state", "", "", "hidden"},
	"GET /prometheus/api/v1/query":                         {"/prometheus/api/v1/query?query=temp", "", "", "filtered"},
	"POST /prometheus/api/v1/query":                        {"/prometheus/api/v1/query", "application/x-www-form-urlencoded", "query=temp", "filtered"},
	"GET /prometheus/api/v1/query_range":                   {"/prometheus/api/v1/query_range?query=temp&start=0&end=60&step=15", "", "", "filtered"},
	"POST /prometheus/api/v1/query_range":                  {"/prometheus/api/v1/query_range", "application/x-www-form-urlencoded", "query=temp&start=0&end=60&step=15", "filtered"},
	"GET /prometheus/api/v1/series":                        {"/prometheus/api/v1/series?match[]=temp", "", "", "filtered"},
	"POST /prometheus/api/v1/series":                       {"/prometheus/api/v1/series", "application/x-www-form-urlencoded", "match[]=temp", "filtered"},
	"GET /prometheus/api/v1/labels":                        {"/prometheus/api/v1/labels", "", "", "filtered"},
	"POST /prometheus/api/v1/labels":                       {"/prometheus/api/v1/labels", "application/x-www-form-urlencoded", "match[]=temp", "filtered"},
	"GET /prometheus/api/v1/label/{name}/values":           {"/prometheus/api/v1/label/machine/values", "", "", "filtered"},
	"GET /prometheus/api/v1/metadata":                      {"/prometheus/api/v1/metadata", "", "", "filtered"},
	"GET /prometheus/api/v1/status/buildinfo":              {"/prometheus/api/v1/status/buildinfo", "", "", "neutral"},
	"GET /api/v1/export":                                   {"/api/v1/export?machine=m1&metric=temp", "", "", "hidden"},
}

// matrixSpan is one dashboard span in OTLP/JSON.
const matrixSpan = `{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",` +
	`"spanId":"eee19b7ec3c1b174","name":"render","startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}`

// matrixEnv is an API with auth on, one machine m1 at site lyon with an
// active alarm and a note, and fakes that record every effect.
type matrixEnv struct {
	api     *API
	twins   *twin.Registry
	alarms  *twin.Alarms
	notes   *twin.Notes
	docs    *control.Twins
	cmds    *control.Commands
	cmdID   string
	log     *fakeLog
	tokens  *fakeTokens
	audit   *memAudit
	alarmID string
	spans   int // relayed to the trace collector
}

// fakeTokens is the token admin of the matrix: it records changes.
type fakeTokens struct{ toks []auth.Token }

func (f *fakeTokens) Create(_ context.Context, name string, scopes auth.Scope, sites []string, _ time.Time, _ string) (auth.Token, string, error) {
	for _, t := range f.toks {
		if t.Name == name {
			return auth.Token{}, "", auth.ErrExists
		}
	}
	t := auth.Token{Name: name, Scopes: scopes, Sites: sites, Created: time.Now()}
	f.toks = append(f.toks, t)
	return t, "secret-of-" + name, nil
}

func (f *fakeTokens) List() []auth.Token { return append([]auth.Token(nil), f.toks...) }

func (f *fakeTokens) Revoke(_ context.Context, name string) error {
	for i := range f.toks {
		if f.toks[i].Name == name && f.toks[i].Revoked.IsZero() {
			f.toks[i].Revoked = time.Now()
			return nil
		}
	}
	return auth.ErrNotFound
}

// memAudit is an in-memory AuditStore for the API's tests.
type memAudit struct{ entries []auth.AuditEntry }

func (m *memAudit) Append(_ context.Context, e auth.AuditEntry) (auth.AuditEntry, error) {
	e.ID = uint64(len(m.entries) + 1)
	m.entries = append(m.entries, e)
	return e, nil
}

func (m *memAudit) Query(_ context.Context, f auth.AuditFilter) ([]auth.AuditEntry, error) {
	var out []auth.AuditEntry
	for i := len(m.entries) - 1; i >= 0; i-- {
		e := m.entries[i]
		if (f.Actor == "" || e.Actor == f.Actor) && (f.Machine == "" || e.Machine == f.Machine) && (f.Action == "" || e.Action == f.Action) {
			out = append(out, e)
		}
	}
	return out, nil
}

func (m *memAudit) DeleteBefore(context.Context, time.Time) (int, error)    { return 0, nil }
func (m *memAudit) EraseActor(context.Context, string, string) (int, error) { return 0, nil }
func (m *memAudit) Close() error                                            { return nil }
func (m *memAudit) count(action string) (n int) {
	for _, e := range m.entries {
		if e.Action == action && e.Outcome == "ok" {
			n++
		}
	}
	return n
}

// matrixIdentities are the credentials of the matrix, by secret. The
// right and other-site identities get the route's scope at run time.
const (
	secretExpired   = "expired"
	secretRevoked   = "revoked"
	secretRight     = "right"
	secretOtherSite = "other-site"
	secretWrong     = "wrong-scope"
)

func newMatrixEnv(t *testing.T, scope auth.Scope) *matrixEnv {
	return newMatrixEnvFor(t, scope, auth.AllScopes&^scope, false)
}

// newMatrixEnvFor is newMatrixEnv with the right and other-site
// identities holding scope, the wrong one wrong; withStore opens an
// embedded store (for series and states reads).
func newMatrixEnvFor(t *testing.T, scope, wrong auth.Scope, withStore bool) *matrixEnv {
	t.Helper()
	dir := t.TempDir()
	logger := slog.New(slog.DiscardHandler)
	tw, live := openTwins(t, time.Minute, time.Now)
	if _, _, err := tw.Put("m1", twin.Info{Name: "Press 1", Site: "lyon", Commands: map[string]twin.CommandSpec{"stop": {}}}); err != nil {
		t.Fatal(err)
	}
	cmdStore, err := control.OpenFileCommandStore(filepath.Join(dir, "commands"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmdStore.Close() })
	cmds := control.NewCommands(cmdStore, commandSpecs(tw), time.Now, logger)
	cmd, _, err := cmds.Create(context.Background(), "m1", control.CreateRequest{Name: "stop", By: "ana"})
	if err != nil {
		t.Fatal(err)
	}
	alarms, err := twin.NewAlarms(context.Background(), twin.NewAlarmFile(filepath.Join(dir, "alarms.jsonl")), time.Hour, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alarms.Close() })
	high := 90.0
	raised, err := alarms.Observe([]telemetry.Sample{{Machine: "m1", Metric: "temp", Time: time.Now().UnixMilli(), Value: 99}},
		func(string) map[string]twin.Threshold { return map[string]twin.Threshold{"temp": {High: &high}} })
	if err != nil || len(raised) != 1 {
		t.Fatalf("raising the test alarm: %v %v", raised, err)
	}
	notes, err := twin.OpenNotes(filepath.Join(dir, "notes.jsonl"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { notes.Close() })
	if _, err := notes.Add("m1", "first note", "ana"); err != nil {
		t.Fatal(err)
	}
	docStore, err := control.OpenTwinFiles(filepath.Join(dir, "twins"))
	if err != nil {
		t.Fatal(err)
	}
	docs := control.NewTwins(docStore, func(m string) *twin.Schema {
		in, _ := tw.Get(m)
		return in.DesiredSchema
	}, time.Now, logger)
	env := &matrixEnv{twins: tw, alarms: alarms, notes: notes, docs: docs, cmds: cmds, cmdID: cmd.ID, log: &fakeLog{real: eventlog.New(1<<16, nil)},
		tokens: &fakeTokens{toks: []auth.Token{{Name: "lyon-reader", Scopes: auth.ScopeRead, Sites: []string{"lyon"}}}},
		audit:  &memAudit{}, alarmID: raised[0].ID}
	identities := map[string]auth.Identity{
		secretRight:     {Name: "right", Kind: auth.KindToken, Scopes: scope, Sites: []string{"lyon"}, TokenID: "r"},
		secretOtherSite: {Name: "other", Kind: auth.KindToken, Scopes: scope, Sites: []string{"paris"}, TokenID: "o"},
		secretWrong:     {Name: "wrong", Kind: auth.KindToken, Scopes: wrong, TokenID: "w"},
	}
	verify := func(secret string) (auth.Identity, error) {
		switch secret {
		case secretExpired:
			return auth.Identity{}, auth.ErrExpired
		case secretRevoked:
			return auth.Identity{}, auth.ErrRevoked
		}
		if id, ok := identities[secret]; ok {
			return id, nil
		}
		return auth.Identity{}, auth.ErrInvalidToken
	}
	var st store.Store
	var prom http.Handler
	if withStore {
		es, err := embedded.Open(filepath.Join(dir, "tsdb"), embedded.Options{}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { es.Close() })
		st = es
		// m1's samples, so that the filtered answers have data to hide.
		if err := es.Append(context.Background(), []telemetry.Sample{{Machine: "m1", Metric: "temp", Time: 30_000, Value: 1}}); err != nil {
			t.Fatal(err)
		}
		prom = promapi.New(es.PromQueryable(), tw.List, promapi.Options{})
	}
	env.api = New(Options{
		MaxBodyBytes: 1 << 20, MaxDecompressedBytes: 4 << 20, MaxLineBytes: 1024,
		Limits: telemetry.DefaultLimits(), MachineTags: []string{"machineId"},
		Retention: time.Hour, MaxFuture: time.Minute, MaxInflightIngest: 4, ReadTimeout: time.Minute,
		Security: Security{AllowedHosts: []string{"example.com"}, MetricsAuth: true, SessionTTL: time.Hour},
	}, Deps{
		Submit: env.log.Submit, Registry: tw, Live: live, Alarms: alarms, Notes: notes, Store: st, Twins: docs, Commands: cmds,
		Publish: func(twin.Note) {}, Prometheus: prom,
		Stream:  http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }),
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "twinline_up 1\n") }),
		UI:      http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html></html>") }),
		Ready:   func() error { return nil },
		Logger:  logger,
		UploadTraces: func(_ context.Context, rss []*tracepb.ResourceSpans) error {
			env.spans += countSpans(rss)
			return nil
		},
		Auth: &Auth{
			Open:   func() bool { return false },
			Verify: verify,
			NewSession: func(context.Context, auth.Identity, time.Duration) (string, string, time.Time, error) {
				return "session-secret", "csrf", time.Now().Add(time.Hour), nil
			},
			CSRF:       func(string) string { return "csrf" },
			EndSession: func(context.Context, string) error { return nil },
			IssueTicket: func(context.Context, auth.Identity) (string, time.Time, error) {
				return "ticket", time.Now().Add(30 * time.Second), nil
			},
			RedeemTicket: func(context.Context, string) (auth.Identity, error) { return auth.Identity{}, auth.ErrInvalidToken },
			Tokens:       env.tokens,
			Audit:        env.audit,
		},
	})
	return env
}

// effects is what a request may have changed.
type effects struct {
	submitted, notes, tokens, revoked, audited, spans int
	machine, twinVersions                             string
	commands                                          string // each command's state
	acked                                             bool
}

func (e *matrixEnv) effects() effects {
	var ef effects
	ef.submitted = len(e.log.got)
	ef.notes = len(e.notes.List("m1", 100))
	ef.tokens = len(e.tokens.toks)
	for _, t := range e.tokens.toks {
		if !t.Revoked.IsZero() {
			ef.revoked++
		}
	}
	ef.audited = len(e.audit.entries)
	ef.spans = e.spans
	cmds, _ := e.cmds.List(context.Background(), "m1", control.Filter{})
	for _, c := range cmds {
		ef.commands += string(c.State) + " "
	}
	if m, err := e.twins.Get("m1"); err == nil {
		ef.machine = m.Name + "@" + m.Site
	}
	if d, err := e.docs.Get(context.Background(), "m1"); err == nil {
		ef.twinVersions = twinETag(d)
	}
	if al, ok := e.alarms.Get(e.alarmID); ok {
		ef.acked = al.Acked
	}
	return ef
}

func (e *matrixEnv) do(method string, req matrixRequest, header ...string) *httptest.ResponseRecorder {
	path := strings.ReplaceAll(req.path, "ALARM", e.alarmID)
	path = strings.ReplaceAll(path, "CMD", e.cmdID)
	var body io.Reader
	if req.body != "" {
		body = strings.NewReader(req.body)
	}
	r := httptest.NewRequest(method, "http://example.com"+path, body)
	if req.contentType != "" {
		r.Header.Set("Content-Type", req.contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	e.api.ServeHTTP(w, r)
	return w
}

// TestAuthMatrix runs every route of the route table × {no token,
// expired, revoked, wrong scope, token of another site, right token}:
// each refusal is a 401/403/404 problem (or, for lists, an answer without
// the other site's data) with no effect; only the right token acts.
func TestAuthMatrix(t *testing.T) {
	probe := newMatrixEnv(t, auth.AllScopes)
	for _, rt := range probe.api.routes() {
		key := rt.method + " " + rt.path
		t.Run(key, func(t *testing.T) {
			req, ok := matrixRequests[key]
			if !ok {
				t.Fatalf("route %s has no request in matrixRequests: add one, so the auth matrix covers it", key)
			}
			if rt.scope == 0 {
				env := newMatrixEnv(t, auth.AllScopes)
				if w := env.do(rt.method, req); w.Code == http.StatusUnauthorized || w.Code == http.StatusForbidden {
					t.Fatalf("public route answered %d without a token: %s", w.Code, w.Body)
				}
				return
			}
			// The right identity has exactly the route's scope (the first
			// of them when several serve), the wrong one none of them.
			newEnv := func() *matrixEnv {
				return newMatrixEnvFor(t, rt.scope&-rt.scope, auth.AllScopes&^rt.scope, strings.Contains(rt.path, "series") || strings.Contains(rt.path, "states") ||
					strings.HasPrefix(rt.path, "/prometheus/") || strings.Contains(rt.path, "export"))
			}
			refusals := []struct {
				name   string
				header []string
				status int
			}{
				{"no token", nil, http.StatusUnauthorized},
				{"malformed", []string{"Authorization", "Bearer"}, http.StatusUnauthorized},
				{"unknown", []string{"Authorization", "Bearer made-up"}, http.StatusUnauthorized},
				{"expired", []string{"Authorization", "Bearer " + secretExpired}, http.StatusUnauthorized},
				{"revoked", []string{"Authorization", "Bearer " + secretRevoked}, http.StatusUnauthorized},
				{"wrong scope", []string{"Authorization", "Bearer " + secretWrong}, http.StatusForbidden},
			}
			for _, c := range refusals {
				env := newEnv()
				before := env.effects()
				w := env.do(rt.method, req, c.header...)
				if w.Code != c.status || !strings.Contains(w.Header().Get("Content-Type"), "json") {
					t.Errorf("%s: got %d %s %s; want %d problem", c.name, w.Code, w.Header().Get("Content-Type"), w.Body, c.status)
				}
				if strings.Contains(w.Body.String(), "Press 1") || strings.Contains(w.Body.String(), "first note") {
					t.Errorf("%s: the refusal shows m1's data: %s", c.name, w.Body)
				}
				after := env.effects()
				after.audited = before.audited // a refusal may be audited
				if after != before {
					t.Errorf("%s: the refused request had an effect: %+v → %+v", c.name, before, after)
				}
			}

			env := newEnv()
			before := env.effects()
			w := env.do(rt.method, req, "Authorization", "Bearer "+secretOtherSite)
			after := env.effects()
			body := w.Body.String()
			switch req.site {
			case "hidden":
				if w.Code != http.StatusNotFound {
					t.Errorf("other site: got %d %s; want 404 (not revealed)", w.Code, body)
				}
			case "filtered":
				if w.Code != http.StatusOK || strings.Contains(body, `"m1"`) || strings.Contains(body, "lyon") {
					t.Errorf("other site: got %d %s; want 200 without lyon's data", w.Code, body)
				}
			case "rejected":
				if w.Code != http.StatusBadRequest || !strings.Contains(body, "not a machine of your sites") {
					t.Errorf("other site: got %d %s; want 400 naming the refused item", w.Code, body)
				}
			case "forbidden":
				if w.Code != http.StatusForbidden {
					t.Errorf("other site: got %d %s; want 403", w.Code, body)
				}
			}
			if req.site != "neutral" {
				after.audited = before.audited
				if after != before {
					t.Errorf("other site: the request had an effect: %+v → %+v", before, after)
				}
			}

			env = newEnv()
			before = env.effects()
			w = env.do(rt.method, req, "Authorization", "Bearer "+secretRight)
			if w.Code >= 400 {
				t.Fatalf("right token: got %d %s", w.Code, w.Body)
			}
			after = env.effects()
			if rt.method != http.MethodGet && rt.path != "/query" && rt.path != "/api/v1/session" && rt.path != "/api/v1/stream/tickets" &&
				!strings.HasPrefix(rt.path, "/prometheus/") && after == before {
				t.Errorf("right token: %s had no effect (%+v)", key, after)
			}
			if rt.audit != "" && env.audit.count(rt.audit) != 1 {
				t.Errorf("right token: %s was not audited once: %+v", rt.audit, env.audit.entries)
			}
		})
	}
}

// TestCrossSiteRequests: a foreign page's requests (DNS rebinding Host,
// foreign Origin, a text/plain "simple" request) are refused with no
// effect; the same from the dashboard's own origin works.
func TestCrossSiteRequests(t *testing.T) {
	env := newMatrixEnv(t, auth.AllScopes)
	env.api.auth.Open = func() bool { return true } // loopback, no tokens
	tests := []struct {
		name                   string
		method, path, ct, body string
		header                 []string
		host                   string
		status                 int
	}{
		{"foreign Host", "GET", "/api/v1/machines", "", "", nil, "evil.example", http.StatusMisdirectedRequest},
		{"foreign Host stream upgrade", "GET", "/api/v1/stream?all=1", "", "", []string{"Origin", "http://evil.example", "Connection", "Upgrade", "Upgrade", "websocket"}, "evil.example", http.StatusMisdirectedRequest},
		{"foreign Origin stream", "GET", "/api/v1/stream?all=1", "", "", []string{"Origin", "http://evil.example"}, "example.com", http.StatusForbidden},
		{"foreign Origin note", "POST", "/api/v1/machines/m1/notes", "application/json", `{"text":"x"}`, []string{"Origin", "http://evil.example"}, "example.com", http.StatusForbidden},
		{"text/plain note", "POST", "/api/v1/machines/m1/notes", "text/plain", `{"text":"x"}`, nil, "example.com", http.StatusUnsupportedMediaType},
		{"text/plain events", "POST", "/api/v1/events", "text/plain", `{"machineId":"m1","temp":1}`, nil, "example.com", http.StatusUnsupportedMediaType},
		{"form ack", "POST", "/api/v1/alarms/ALARM/ack", "application/x-www-form-urlencoded", `note=x`, nil, "example.com", http.StatusUnsupportedMediaType},
		{"cross-site fetch delete", "DELETE", "/api/v1/machines/m1", "", "", []string{"Sec-Fetch-Site", "cross-site"}, "example.com", http.StatusForbidden},
		{"form line protocol", "POST", "/write", "application/x-www-form-urlencoded", "cpu,machineId=m1 v=1", nil, "example.com", http.StatusUnsupportedMediaType},
		{"same origin note", "POST", "/api/v1/machines/m1/notes", "application/json", `{"text":"x"}`, []string{"Origin", "http://example.com", "Sec-Fetch-Site", "same-origin"}, "example.com", http.StatusCreated},
		{"same origin stream", "GET", "/api/v1/stream?all=1", "", "", []string{"Origin", "http://example.com"}, "example.com", http.StatusOK},
		{"healthz any host", "GET", "/healthz", "", "", nil, "probe.example", http.StatusOK},
		{"IP address as Host", "GET", "/api/v1/machines", "", "", nil, "10.1.2.3:8080", http.StatusOK},
		{"IPv6 address as Host", "GET", "/api/v1/machines", "", "", nil, "[fd00::1]:8080", http.StatusOK},
		{"allowed name with port", "GET", "/api/v1/machines", "", "", nil, "example.com:8080", http.StatusOK},
		{"suffix of an allowed name", "GET", "/api/v1/machines", "", "", nil, "evilexample.com", http.StatusMisdirectedRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := env.effects()
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			r := httptest.NewRequest(tt.method, strings.ReplaceAll(tt.path, "ALARM", env.alarmID), body)
			r.Host = tt.host
			if tt.ct != "" {
				r.Header.Set("Content-Type", tt.ct)
			}
			for i := 0; i+1 < len(tt.header); i += 2 {
				r.Header.Set(tt.header[i], tt.header[i+1])
			}
			w := httptest.NewRecorder()
			env.api.ServeHTTP(w, r)
			if w.Code != tt.status {
				t.Fatalf("got %d %s; want %d", w.Code, w.Body, tt.status)
			}
			if tt.status >= 400 && env.effects() != before {
				t.Errorf("the refused request had an effect")
			}
		})
	}
}

// TestSessionCookieNeedsCSRF: the dashboard's cookie authenticates reads;
// a state-changing request also needs the CSRF header.
func TestSessionCookieNeedsCSRF(t *testing.T) {
	env := newMatrixEnv(t, auth.AllScopes)
	w := env.do("POST", matrixRequest{path: "/api/v1/session", contentType: "application/json", body: `{"token":"right"}`})
	if w.Code != http.StatusOK {
		t.Fatalf("sign in: %d %s", w.Code, w.Body)
	}
	var cookie *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == SessionCookie {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict", cookie)
	}
	var sess sessionView
	if err := json.Unmarshal(w.Body.Bytes(), &sess); err != nil || sess.CSRF == "" || sess.Name != "right" {
		t.Fatalf("session %s: %v", w.Body, err)
	}
	req := func(method, path, body string, csrf bool) int {
		r := httptest.NewRequest(method, "http://example.com"+path, bytes.NewReader([]byte(body)))
		r.AddCookie(&http.Cookie{Name: SessionCookie, Value: secretRight})
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		if csrf {
			r.Header.Set(CSRFHeader, sess.CSRF)
		}
		w := httptest.NewRecorder()
		env.api.ServeHTTP(w, r)
		return w.Code
	}
	if got := req("GET", "/api/v1/machines", "", false); got != http.StatusOK {
		t.Errorf("read with the cookie: %d", got)
	}
	if got := req("POST", "/api/v1/machines/m1/notes", `{"text":"x"}`, false); got != http.StatusForbidden {
		t.Errorf("note without CSRF header: %d; want 403", got)
	}
	if got := req("POST", "/api/v1/machines/m1/notes", `{"text":"x"}`, true); got != http.StatusCreated {
		t.Errorf("note with CSRF header: %d; want 201", got)
	}
	if n := env.notes.List("m1", 10); len(n) != 2 || n[1].Author != "right" {
		t.Errorf("notes %+v: want the second by the verified identity", n)
	}
}

func TestAckRecordsVerifiedIdentity(t *testing.T) {
	env := newMatrixEnv(t, auth.AllScopes)
	w := env.do("POST", matrixRequest{path: "/api/v1/alarms/ALARM/ack", contentType: "application/json", body: `{"by":"somebody else","note":"ok"}`},
		"Authorization", "Bearer "+secretRight)
	if w.Code != http.StatusOK {
		t.Fatalf("ack: %d %s", w.Code, w.Body)
	}
	al, _ := env.alarms.Get(env.alarmID)
	if al.AckedBy != "right" {
		t.Errorf("acknowledged by %q; want the token's name", al.AckedBy)
	}
	var e auth.AuditEntry
	for _, x := range env.audit.entries {
		if x.Action == "alarm.ack" {
			e = x
		}
	}
	if e.Actor != "right" || e.Machine != "m1" || e.Target != env.alarmID || e.Outcome != "ok" {
		t.Errorf("audit entry %+v", e)
	}
}

func TestTokenCreateCannotEscalate(t *testing.T) {
	env := newMatrixEnv(t, auth.ScopeAdmin)
	for _, body := range []string{
		`{"name":"x","scopes":["ingest"],"sites":["lyon"]}`, // a scope it lacks
		`{"name":"y","scopes":["admin"],"sites":["paris"]}`, // another site
		`{"name":"z","scopes":["admin"]}`,                   // every site
	} {
		w := env.do("POST", matrixRequest{path: "/api/v1/tokens", contentType: "application/json", body: body}, "Authorization", "Bearer "+secretRight)
		if w.Code != http.StatusForbidden {
			t.Errorf("%s: got %d %s; want 403", body, w.Code, w.Body)
		}
	}
	if len(env.tokens.toks) != 1 {
		t.Errorf("tokens created: %+v", env.tokens.toks)
	}
}

// TestTrustedProxy: --auth-header and X-Forwarded-For are believed only
// from --trusted-proxies; the audit log records the client behind the
// proxy.
func TestTrustedProxy(t *testing.T) {
	env := newMatrixEnv(t, auth.AllScopes)
	env.api.sec.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	env.api.sec.AuthHeader = "X-Forwarded-User"
	env.api.sec.AuthHeaderScopes = auth.ScopeRead | auth.ScopeOperate
	do := func(peer, user, xff string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "http://example.com/api/v1/machines/m1/notes", strings.NewReader(`{"text":"from the proxy"}`))
		r.RemoteAddr = peer
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("X-Forwarded-User", user)
		if xff != "" {
			r.Header.Set("X-Forwarded-For", xff)
		}
		w := httptest.NewRecorder()
		env.api.ServeHTTP(w, r)
		return w
	}
	if w := do("192.0.2.7:5000", "mallory", ""); w.Code != http.StatusUnauthorized {
		t.Errorf("the header from an untrusted peer: %d, want 401", w.Code)
	}
	if w := do("10.1.2.3:5000", "ana", "203.0.113.9, 10.9.9.9"); w.Code != http.StatusCreated {
		t.Fatalf("the header from the proxy: %d %s", w.Code, w.Body)
	}
	n := env.notes.List("m1", 10)
	if got := n[len(n)-1].Author; got != "ana" {
		t.Errorf("note author %q, want the proxy's user", got)
	}
	e := env.audit.entries[len(env.audit.entries)-1]
	if e.Actor != "ana" || e.ActorKind != auth.KindProxy || e.Remote != "203.0.113.9" {
		t.Errorf("audit %+v: want ana (proxy) from 203.0.113.9", e)
	}
}
