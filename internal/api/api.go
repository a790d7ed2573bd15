// Package api is twinline's HTTP interface: ingest (JSON, NDJSON, InfluxDB
// line protocol), queries, the machine registry, the live stream endpoint,
// health, metrics and the OpenAPI document. It is the only package that maps
// errors to HTTP status codes; every error answer is RFC 9457 problem+json,
// except the Prometheus query API's (/prometheus/api/v1/…, internal/promapi),
// which answers Prometheus' own error format to Prometheus clients.
package api

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/alerting"
	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/promapi"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
	"github.com/twinline/twinline/internal/twin"
	"github.com/twinline/twinline/internal/web"
)

// Options are the HTTP-level limits and ingest settings.
type Options struct {
	MaxBodyBytes         int64
	MaxDecompressedBytes int64
	MaxLineBytes         int
	Limits               telemetry.Limits
	MachineTags          []string
	// Retention and MaxFuture bound the accepted event times
	// (ingest.TimeBounds): any age within the retention is accepted, an
	// old event as backfill (ADR 0033).
	Retention time.Duration
	MaxFuture time.Duration
	// LPMissingMachine says what becomes of a line-protocol line without
	// a machine id tag (--lp-missing-machine).
	LPMissingMachine ingest.MissingMachine
	// MaxInflightIngest bounds the ingest requests being read and decoded
	// at once; more are answered 503.
	MaxInflightIngest int
	// ReadTimeout bounds reading one ingest request body.
	ReadTimeout time.Duration
	// ReadIdleTimeout cuts an ingest body that sends nothing for this long
	// (408); 0 means ReadTimeout.
	ReadIdleTimeout time.Duration
	// IngestMemory is the budget of bytes ingest requests hold at once
	// (bodies and decoding); 0 means 192 MiB.
	IngestMemory int64
	// MaxInflightIngestPerClient bounds the ingest requests of one client
	// (ClientKey) being decoded at once; 0 means MaxInflightIngest.
	MaxInflightIngestPerClient int
	// MaxMachines bounds the fleet (0: no limit).
	MaxMachines int
	// Lateness is the engine's watermark lag, to mark open windows.
	Lateness time.Duration
	// Security are the Host, proxy, session and metrics settings.
	Security Security
	// Tracing are the browser-span relay's limits and the trace viewer's
	// URL.
	Tracing TracingOptions
	// Role selects the routes served: ingest on the roles that ingest;
	// queries, registry, stream and dashboard on those that query; "" is
	// every route. Health, readiness, metrics and the API documents are
	// always served.
	Role config.Role
}

// SubmitFunc hands a decoded batch to the event log and returns once it is
// durable, with the count of accepted and duplicate events. Errors:
// eventlog.ErrFull (shed load: 503), eventlog.ErrTooLarge (413), eventlog.ErrClosed
// (shutting down: 503), store.ErrOutOfBounds (400); any other error means
// nothing is acknowledged (503).
type SubmitFunc func(ctx context.Context, b *telemetry.Batch) (eventlog.Result, error)

// Deps are the parts the API serves.
type Deps struct {
	// Submit is the event log: in-process, or Kafka on a gateway.
	Submit SubmitFunc
	Store  store.Store
	// Registry is the machine registry; Live the machines' live state.
	// Together they make the twins the API shows.
	Registry registry
	Live     liveState
	// AttributeIndex finds machines by registry attributes in the
	// registry store (PostgreSQL's JSONB index); nil: the fleet list
	// filters attributes in memory.
	AttributeIndex AttributeIndexFunc
	Notes          *twin.Notes
	Alarms         *twin.Alarms
	// AlarmDelivery returns the delivery state of alarms (their ids) at
	// Alertmanager and the webhook; nil when neither is configured.
	AlarmDelivery func(ctx context.Context, ids []string) map[string]alerting.Delivery
	// Twins are the machines' desired and reported documents
	// (control.Twins); nil: the twin routes answer 404.
	Twins twinDocs
	// Commands are the machines' commands; nil answers their routes 404.
	Commands *control.Commands
	// Publish pushes a new note to its machine's stream subscribers.
	Publish func(twin.Note)
	Stream  http.Handler
	// StreamContext attaches to a stream request's context the machines
	// its identity may see (nil: all) and the key its connections are
	// counted by (per-client cap); nil attaches nothing.
	StreamContext func(ctx context.Context, visible func(machine string) bool, client string) context.Context
	Metrics       http.Handler
	// UI serves the dashboard at /.
	UI http.Handler
	// Docs is the API reference viewer at /docs; nil (or not built into
	// the binary) serves the plain reference page instead.
	Docs *web.Docs
	// Ready reports nil when the server can take traffic.
	Ready func() error
	// Degraded reports what works in a reduced mode (e.g. Redis down:
	// local fan-out only); /readyz still answers 200. May be nil.
	Degraded func() error
	// IngestLimit and StreamLimit wrap the ingest and stream handlers with
	// per-client rate limits; nil for none.
	IngestLimit, StreamLimit func(http.Handler) http.Handler
	// UploadTraces forwards the dashboard's spans to the collector (POST
	// /api/v1/traces); nil when tracing is off, which also tells the
	// dashboard not to trace. TracesLimit rate-limits the relay per
	// client; nil for none.
	UploadTraces UploadTracesFunc
	TracesLimit  func(http.Handler) http.Handler
	// Hot serves raw series reads that fall inside the hot window (the
	// last minutes, kept in Redis across replicas); nil for none.
	Hot    hotWindow
	Clock  func() time.Time
	Logger *slog.Logger
	// Registerer receives the API's metrics; nil for none.
	Registerer prometheus.Registerer
	// Auth checks identities; nil serves every route openly.
	Auth *Auth

	// Stamper stamps the events sent without a timestamp; share one with
	// every other ingest path of the server (MQTT). nil: the API has its
	// own.
	Stamper *ingest.Stamper
	// Tracer traces ingest requests (their traceparent continued, the
	// batch carrying the span on); nil: tracing off.
	Tracer *tracing.Tracer
	// Prometheus serves the Prometheus query API (/prometheus/api/v1/…,
	// promapi.Handler), which learns the identity's sites from the request
	// context (promapi.WithVisibleSites); nil answers its routes with a
	// Prometheus-style "unavailable" error.
	Prometheus http.Handler
}

// registry is the machine registry: entries, and who may send.
type registry interface {
	List() []twin.Info
	// Listing is every entry in id order with its JSON encoding, shared.
	Listing() []twin.Entry
	Get(id string) (twin.Info, error)
	Put(id string, in twin.Info) (twin.Info, bool, error)
	Patch(id string, patch []byte) (twin.Info, error)
	Delete(id string) error
	Site(id string) (string, bool)
	Admit(id string, limit int) string
	AdmitFor(id auth.Identity, machine string) string
}

// liveState makes the twins of registered machines: entry and live state.
type liveState interface {
	Machine(in twin.Info) twin.Machine
	Machines(infos []twin.Info) []twin.Machine
	// View reads machines' live state one by one at one instant.
	View() twin.View
}

type hotWindow interface {
	// Range returns the points of key in [from, to], and whether the
	// window covers that whole range (else the store must answer).
	Range(ctx context.Context, key store.SeriesKey, from, to int64) ([]store.Point, bool, error)
	// Latest returns the newest point of each metric of machine in the
	// window, whichever replica processed it.
	Latest(ctx context.Context, machine string) (map[string]store.Point, error)
}

// API is the HTTP handler of twinline.
type API struct {
	opts       Options
	sec        Security
	auth       *Auth
	decodeOpts ingest.Options
	submit     SubmitFunc
	store      store.Store
	registry   registry
	live       liveState
	attrIndex  AttributeIndexFunc
	notes      *twin.Notes
	alarms     *twin.Alarms
	delivery   func(ctx context.Context, ids []string) map[string]alerting.Delivery
	twins      twinDocs
	commands   *control.Commands
	publish    func(twin.Note)
	stream     http.Handler
	streamCtx  func(ctx context.Context, visible func(machine string) bool, client string) context.Context
	metrics    http.Handler
	ui         http.Handler
	docs       *web.Docs
	ready      func() error
	degraded   func() error
	hot        hotWindow
	clock      func() time.Time
	logger     *slog.Logger
	tracer     *tracing.Tracer
	inflight   chan struct{}
	// mem and clientSlots bound ingest memory and each client's share of
	// the in-flight slots.
	mem         *memBudget
	clientSlots *clientSlots
	queries     chan struct{} // history queries in flight
	exports     chan struct{} // exports in flight (maxExports)
	mux         *http.ServeMux
	// paths matches a request's path whatever its method, and allow
	// lists the methods of each path pattern, for 405 answers.
	paths *http.ServeMux
	allow map[string][]string

	requests       *prometheus.CounterVec
	samples        *prometheus.CounterVec
	ignoredStrings prometheus.Counter
	// lp is the line-protocol state (influx.go).
	lp lineProtocol

	dbMu      sync.Mutex
	databases []string // names seen by /write and CREATE DATABASE

	// uploadTraces relays the dashboard's spans (nil: tracing off).
	uploadTraces  UploadTracesFunc
	relayRequests *prometheus.CounterVec

	prometheus http.Handler
}

// route is one entry of the route table, which registers the handlers, is
// checked against the OpenAPI document by a test, and generates the auth
// matrix test: every route says which scope it needs.
type route struct {
	method, path string
	// scope is what an identity needs (any one of the bits); 0 for the
	// public routes (health, documents, the dashboard, signing in).
	scope   auth.Scope
	handler http.HandlerFunc
	// audit names the action recorded in the audit log ("": none).
	audit string
	// anyHost exempts the route from the Host allow-list (health checks).
	anyHost bool
	// stream marks the live stream (Origin checked on the upgrade,
	// tickets accepted); influx the InfluxDB-compatible answers.
	stream, influx bool
	// ownContentType: the handler checks its body's type itself.
	ownContentType bool
}

// serves reports whether a server of role serves the route.
func serves(role config.Role, rt route) bool {
	ingest := rt.path == "/api/v1/events" || rt.path == "/write" || rt.path == "/api/v2/write" || rt.path == "/ping" || rt.path == "/query"
	ops := rt.path == "/healthz" || rt.path == "/readyz" || rt.path == "/metrics" || rt.path == "/api/openapi.json" || rt.path == "/api/asyncapi.json" ||
		rt.path == "/docs" || rt.path == "/docs/{file}"
	switch {
	case role == "" || ops:
		return true
	case ingest:
		return role.Ingests()
	}
	return role.Queries()
}

// New returns the API.
func New(opts Options, deps Deps) *API {
	a := &API{
		opts: opts,
		sec:  opts.Security,
		auth: deps.Auth,
		decodeOpts: ingest.Options{
			Limits:       opts.Limits,
			MaxLineBytes: opts.MaxLineBytes,
			MachineTags:  opts.MachineTags,
			Stamper:      cmp.Or(deps.Stamper, ingest.NewStamper()),
		},
		submit:    deps.Submit,
		store:     deps.Store,
		registry:  deps.Registry,
		live:      deps.Live,
		attrIndex: deps.AttributeIndex,
		notes:     deps.Notes,
		alarms:    deps.Alarms,
		delivery:  deps.AlarmDelivery,
		twins:     deps.Twins,
		commands:  deps.Commands,
		publish:   deps.Publish,
		stream:    deps.Stream,
		streamCtx: deps.StreamContext,
		metrics:   deps.Metrics,
		ui:        deps.UI,
		docs:      deps.Docs,
		ready:     deps.Ready,
		degraded:  deps.Degraded,
		hot:       deps.Hot,
		clock:     deps.Clock,
		logger:    deps.Logger,
		tracer:    deps.Tracer,
		inflight:  make(chan struct{}, max(opts.MaxInflightIngest, 1)),
		mem:       newMemBudget(cmp.Or(opts.IngestMemory, 192<<20)),
		clientSlots: &clientSlots{max: max(cmp.Or(opts.MaxInflightIngestPerClient, opts.MaxInflightIngest), 1),
			n: map[string]int{}},
		queries:   make(chan struct{}, 4*runtime.GOMAXPROCS(0)),
		exports:   make(chan struct{}, maxExports),
		databases: []string{"twinline"},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_ingest_requests_total",
			Help: "Ingest requests by protocol and outcome (ok, partial, invalid, unsupported, timeout, limited, shed, error).",
		}, []string{"protocol", "outcome"}),
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_ingest_samples_total",
			Help: "Ingested samples by protocol and outcome (accepted, shed); rejected counts rejected items.",
		}, []string{"protocol", "outcome"}),
	}
	a.uploadTraces = deps.UploadTraces
	a.prometheus = deps.Prometheus
	if a.prometheus == nil {
		a.prometheus = promapi.Unavailable("this server has no store that serves PromQL")
	}
	a.relayRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "twinline_trace_relay_requests_total",
		Help: "Dashboard span exports posted to /api/v1/traces, by outcome: relayed, refused (limits, bad input, tracing off), failed (the collector did not take them).",
	}, []string{"outcome"})
	a.ignoredStrings = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_ingest_ignored_string_fields_total",
		Help: "Line-protocol string fields skipped because they cannot be states (empty, over 256 bytes, control characters, invalid name).",
	})
	if a.clock == nil {
		a.clock = time.Now
	}
	lpCollectors := a.initLineProtocol(opts, deps.Registry)
	if opts.MaxMachines > 0 {
		a.decodeOpts.AdmitMachine = func(id string) string { return a.registry.Admit(id, opts.MaxMachines) }
	}
	if opts.Role.Ingests() {
		// Every outcome exists from the start at 0, so that the error
		// ratios of the SLO rules (deploy/prometheus) are 0, not absent,
		// on a replica that has not failed yet.
		for _, p := range []string{"json", "lineprotocol"} {
			for _, o := range []string{"ok", "partial", "invalid", "unsupported", "timeout", "limited", "shed", "error"} {
				a.requests.WithLabelValues(p, o)
			}
		}
	}
	if deps.Registerer != nil {
		deps.Registerer.MustRegister(a.requests, a.samples, a.ignoredStrings, a.relayRequests)
		deps.Registerer.MustRegister(lpCollectors...)
		deps.Registerer.MustRegister(a.mem.collectors()...)
	}
	a.mux = http.NewServeMux()
	a.paths = http.NewServeMux()
	a.allow = map[string][]string{}
	limits := map[string]func(http.Handler) http.Handler{
		"POST /api/v1/events": deps.IngestLimit, "POST /write": deps.IngestLimit, "POST /api/v2/write": deps.IngestLimit,
		"GET /api/v1/stream": deps.StreamLimit, "POST /api/v1/traces": deps.TracesLimit,
	}
	for _, rt := range a.routes() {
		if !serves(opts.Role, rt) {
			continue
		}
		var h http.Handler = rt.handler
		if limit := limits[rt.method+" "+rt.path]; limit != nil {
			h = limit(h)
		}
		h = a.guard(rt, h)
		if !rt.stream {
			// JSON answers gzip-compressed for clients that accept it;
			// never the live stream (WebSocket, SSE).
			h = compressJSON(h)
		}
		a.mux.Handle(rt.method+" "+rt.path, h)
		if _, ok := a.allow[rt.path]; !ok {
			a.paths.HandleFunc(rt.path, func(http.ResponseWriter, *http.Request) {})
		}
		a.allow[rt.path] = append(a.allow[rt.path], rt.method)
		if rt.method == http.MethodGet {
			a.allow[rt.path] = append(a.allow[rt.path], http.MethodHead)
		}
	}
	// A catch-all of ours, so unknown paths get problem+json; it also
	// keeps the mux from answering 405, which handleNotFound does.
	a.mux.HandleFunc("/", a.handleNotFound)
	return a
}

func (a *API) routes() []route {
	const (
		ingest  = auth.ScopeIngest
		read    = auth.ScopeRead
		operate = auth.ScopeOperate
		admin   = auth.ScopeAdmin
	)
	var metricsScope auth.Scope
	if a.sec.MetricsAuth {
		metricsScope = read
	}
	return []route{
		{method: "POST", path: "/api/v1/events", scope: ingest, handler: a.handleEvents, ownContentType: true},
		{method: "POST", path: "/write", scope: ingest, handler: a.handleWrite, influx: true, ownContentType: true},
		{method: "POST", path: "/api/v2/write", scope: ingest, handler: a.handleWrite, influx: true, ownContentType: true},
		{method: "GET", path: "/ping", handler: a.handlePing, influx: true},
		{method: "GET", path: "/query", scope: ingest | read, handler: a.handleQuery, influx: true},
		{method: "POST", path: "/query", scope: ingest | read, handler: a.handleQuery, influx: true, ownContentType: true},
		{method: "GET", path: "/api/v1/machines", scope: read, handler: a.handleMachines},
		{method: "GET", path: "/api/v1/machines/{id}", scope: read, handler: a.handleMachineGet},
		{method: "PUT", path: "/api/v1/machines/{id}", scope: admin, handler: a.handleMachinePut, audit: "machine.put"},
		{method: "PATCH", path: "/api/v1/machines/{id}", scope: admin, handler: a.handleMachinePatch, audit: "machine.patch"},
		{method: "DELETE", path: "/api/v1/machines/{id}", scope: admin, handler: a.handleMachineDelete, audit: "machine.delete"},
		{method: "GET", path: "/api/v1/machines/{id}/latest", scope: read, handler: a.handleLatest},
		{method: "GET", path: "/api/v1/machines/{id}/series", scope: read, handler: a.handleSeries},
		{method: "GET", path: "/api/v1/machines/{id}/states", scope: read, handler: a.handleStates},
		{method: "GET", path: "/api/v1/machines/{id}/notes", scope: read, handler: a.handleNotesGet},
		{method: "POST", path: "/api/v1/machines/{id}/notes", scope: operate, handler: a.handleNotesPost, audit: "note.add"},
		{method: "GET", path: "/api/v1/machines/{id}/twin", scope: read, handler: a.handleTwinGet},
		{method: "PATCH", path: "/api/v1/machines/{id}/twin/desired", scope: operate, handler: a.handleTwinDesiredPatch, audit: "twin.desired"},
		{method: "PATCH", path: "/api/v1/machines/{id}/twin/reported", scope: ingest, handler: a.handleTwinReportedPatch},
		{method: "GET", path: "/api/v1/machines/{id}/twin/desired", scope: ingest | read, handler: a.handleTwinDesiredGet},
		{method: "GET", path: "/api/v1/machines/{id}/commands", scope: read | ingest, handler: a.handleCommandsGet},
		{method: "POST", path: "/api/v1/machines/{id}/commands", scope: operate, handler: a.handleCommandCreate, audit: "command.create"},
		{method: "GET", path: "/api/v1/machines/{id}/commands/{cmdId}", scope: read | ingest, handler: a.handleCommandGet},
		{method: "POST", path: "/api/v1/machines/{id}/commands/{cmdId}/response", scope: ingest, handler: a.handleCommandResponse, audit: "command.response"},
		{method: "GET", path: "/api/v1/alarms", scope: read, handler: a.handleAlarms},
		{method: "GET", path: "/api/v1/oee", scope: read, handler: a.handleOEE},
		{method: "GET", path: "/api/v1/export", scope: read, handler: a.handleExport},
		{method: "POST", path: "/api/v1/alarms/{id}/ack", scope: operate, handler: a.handleAlarmAck, audit: "alarm.ack"},
		{method: "GET", path: "/api/v1/stream", scope: read, handler: a.handleStream, stream: true},
		{method: "POST", path: "/api/v1/stream/tickets", scope: read, handler: a.handleTicket},
		{method: "POST", path: "/api/v1/traces", scope: read, handler: a.handleTraces, ownContentType: true},
		{method: "GET", path: "/prometheus/api/v1/query", scope: read, handler: a.handlePrometheus},
		{method: "POST", path: "/prometheus/api/v1/query", scope: read, handler: a.handlePrometheus, ownContentType: true},
		{method: "GET", path: "/prometheus/api/v1/query_range", scope: read, handler: a.handlePrometheus},
		{method: "POST", path: "/prometheus/api/v1/query_range", scope: read, handler: a.handlePrometheus, ownContentType: true},
		{method: "GET", path: "/prometheus/api/v1/series", scope: read, handler: a.handlePrometheus},
		{method: "POST", path: "/prometheus/api/v1/series", scope: read, handler: a.handlePrometheus, ownContentType: true},
		{method: "GET", path: "/prometheus/api/v1/labels", scope: read, handler: a.handlePrometheus},
		{method: "POST", path: "/prometheus/api/v1/labels", scope: read, handler: a.handlePrometheus, ownContentType: true},
		{method: "GET", path: "/prometheus/api/v1/label/{name}/values", scope: read, handler: a.handlePrometheus},
		{method: "GET", path: "/prometheus/api/v1/metadata", scope: read, handler: a.handlePrometheus},
		{method: "GET", path: "/prometheus/api/v1/status/buildinfo", scope: read, handler: a.handlePrometheus},
		{method: "GET", path: "/api/v1/session", scope: auth.AllScopes, handler: a.handleSessionGet},
		{method: "POST", path: "/api/v1/session", handler: a.handleSessionPost},
		{method: "DELETE", path: "/api/v1/session", handler: a.handleSessionDelete},
		{method: "GET", path: "/api/v1/tokens", scope: admin, handler: a.handleTokens},
		{method: "POST", path: "/api/v1/tokens", scope: admin, handler: a.handleTokenCreate, audit: "token.create"},
		{method: "DELETE", path: "/api/v1/tokens/{name}", scope: admin, handler: a.handleTokenRevoke, audit: "token.revoke"},
		{method: "GET", path: "/api/v1/audit", scope: admin, handler: a.handleAudit},
		{method: "GET", path: "/healthz", handler: a.handleHealthz, anyHost: true},
		{method: "GET", path: "/readyz", handler: a.handleReadyz, anyHost: true},
		{method: "GET", path: "/metrics", scope: metricsScope, handler: a.handleMetrics, anyHost: a.sec.MetricsAuth},
		{method: "GET", path: "/api/openapi.json", handler: a.handleOpenAPI},
		{method: "GET", path: "/api/asyncapi.json", handler: a.handleAsyncAPI},
		{method: "GET", path: "/docs", handler: a.handleDocs},
		{method: "GET", path: "/docs/{file}", handler: a.handleDocsFile},
		{method: "GET", path: "/{$}", handler: a.handleIndex},
		{method: "GET", path: "/assets/{file}", handler: a.handleIndex},
	}
}

// ServeHTTP implements http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	a.mux.ServeHTTP(w, r)
}

func (a *API) countRequest(protocol, outcome string) {
	a.requests.WithLabelValues(protocol, outcome).Inc()
}

func (a *API) handleNotFound(w http.ResponseWriter, r *http.Request) {
	if _, pattern := a.paths.Handler(r); pattern != "" {
		allow := strings.Join(a.allow[pattern], ", ")
		w.Header().Set("Allow", allow)
		problem.Write(w, &problem.Problem{Type: problem.TypeMethodNotAllowed, Status: http.StatusMethodNotAllowed,
			Detail: r.Method + " is not allowed on " + r.URL.Path + "; allowed: " + allow})
		return
	}
	problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound,
		Detail: "no such endpoint: " + r.Method + " " + r.URL.Path + "; see /api/openapi.json"})
}

// handleStream is GET /api/v1/stream: a site-restricted identity may name
// only machines it sees (another site's is not found), and its all=1
// stream carries only those.
func (a *API) handleStream(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	if id.Restricted() {
		for _, m := range r.URL.Query()["machine"] {
			if !a.machineVisible(id, m) {
				a.twinError(w, fmt.Errorf("%w: machine %q", twin.ErrNotFound, m))
				return
			}
		}
	}
	if a.streamCtx != nil {
		var filter func(string) bool
		if id.Restricted() {
			filter = func(m string) bool { return a.machineVisible(id, m) }
		}
		r = r.WithContext(a.streamCtx(r.Context(), filter, ClientKey(r)))
	}
	a.stream.ServeHTTP(w, r)
}

// handlePrometheus serves the Prometheus query API; a site-restricted
// identity sees only its sites' machines.
func (a *API) handlePrometheus(w http.ResponseWriter, r *http.Request) {
	if id := identity(r); id.Restricted() {
		r = r.WithContext(promapi.WithVisibleSites(r.Context(), id.SeesSite))
	}
	a.prometheus.ServeHTTP(w, r)
}

func (a *API) handleMetrics(w http.ResponseWriter, r *http.Request) { a.metrics.ServeHTTP(w, r) }

func (a *API) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *API) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	if err := a.ready(); err != nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, Detail: "not ready: " + err.Error()})
		return
	}
	if a.degraded != nil {
		if err := a.degraded(); err != nil {
			writeJSON(w, http.StatusOK, map[string]string{"status": "degraded", "detail": err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
