// Package promapi is the Prometheus HTTP query API of twinline
// (/prometheus/api/v1/…): instant and range PromQL queries on Prometheus'
// own engine, series, label names and values, metadata and build
// information, answered in Prometheus' JSON format and with its error
// types and status codes, so that Grafana's Prometheus data source and
// Prometheus' client libraries work unchanged.
//
// It reads a store's store.PromQueryable (series labelled __name__ and
// machine) through a layer that adds the registry's labels (site, line and
// the chosen attributes), resolves matchers on them to a machine set sent
// down to the store, and hides the machines of sites the request's identity
// does not see (WithVisibleSites).
package promapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	jsoniter "github.com/json-iterator/go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/twin"
)

// Prefix is the path the API is served under; a Grafana data source's URL
// is the server's followed by /prometheus.
const Prefix = "/prometheus/api/v1/"

// Defaults of Options.
const (
	DefaultMaxSeries  = 10000
	DefaultMaxSamples = 50_000_000
	DefaultTimeout    = 2 * time.Minute
	// maxPoints is Prometheus' bound on the points of one series of a
	// range query.
	maxPoints = 11000
	// maxBodyBytes bounds a POST form.
	maxBodyBytes = 4 << 20
)

// Options configure the API.
type Options struct {
	// Attributes are the registry attributes exposed as labels.
	Attributes []string
	// MaxSeries bounds the series one query (or series/labels call)
	// reads; 0: DefaultMaxSeries, negative: no bound.
	MaxSeries int
	// MaxSamples bounds the samples one query holds in memory (the
	// engine's --query.max-samples); 0: DefaultMaxSamples.
	MaxSamples int
	// Timeout bounds one query; 0: DefaultTimeout.
	Timeout time.Duration
	// Version is reported by status/buildinfo.
	Version string
	Logger  *slog.Logger
	// Registerer receives the API's metrics (twinline_promql_*); nil for
	// none. The engine's own (prometheus_engine_*) are not registered:
	// one of them breaks the naming rules /metrics is linted with.
	Registerer prometheus.Registerer
	// Now is the default evaluation time; nil: time.Now.
	Now func() time.Time
}

// Handler serves the API. It is safe for concurrent use.
type Handler struct {
	engine *promql.Engine
	parser parser.Parser
	q      *enriched
	// engineQ is q for PromQL queries, bounding their series.
	engineQ   storage.Queryable
	maxSeries int
	// maxSamples also bounds what a store reads whole for one Select
	// (store.WithSampleLimit).
	maxSamples int
	version    string
	// slots bounds the queries evaluated at once; more wait for a slot
	// (as Prometheus' --query.max-concurrency), within their timeout.
	slots   chan struct{}
	timeout time.Duration
	now     func() time.Time
	logger  *slog.Logger

	queries  *prometheus.CounterVec
	duration prometheus.Histogram
}

// New returns the API over a store's PromQueryable, with list the
// registry's machines.
func New(inner storage.Queryable, list func() []twin.Info, opts Options) *Handler {
	if opts.MaxSeries == 0 {
		opts.MaxSeries = DefaultMaxSeries
	}
	if opts.MaxSamples == 0 {
		opts.MaxSamples = DefaultMaxSamples
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p := parser.NewParser(parser.Options{})
	engine := promql.NewEngine(promql.EngineOpts{
		Logger:               opts.Logger,
		MaxSamples:           opts.MaxSamples,
		Timeout:              opts.Timeout,
		LookbackDelta:        5 * time.Minute,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		// Prometheus' default evaluation interval.
		NoStepSubqueryIntervalFn: func(int64) int64 { return time.Minute.Milliseconds() },
		// No EnableQueryCost: its series limit is enforced by the
		// queryable (limited), without its check of the context at
		// every sample read.
		Parser: p,
	})
	h := &Handler{
		engine:  engine,
		parser:  p,
		q:       &enriched{inner: inner, list: list, attrs: slices.Clone(opts.Attributes)},
		version: opts.Version,
		slots:   make(chan struct{}, 4*runtime.GOMAXPROCS(0)),
		timeout: opts.Timeout,
		now:     opts.Now,
		logger:  opts.Logger,
	}
	h.queries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "twinline_promql_queries_total",
		Help: "PromQL queries (query, query_range) by outcome: success, or the Prometheus error type (bad_data, execution, cost_limit, timeout, canceled, internal).",
	}, []string{"outcome"})
	h.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "twinline_promql_query_duration_seconds",
		Help:    "Time PromQL queries took to evaluate, once they had a slot.",
		Buckets: []float64{.005, .025, .1, .25, 1, 2.5, 10, 30, 120},
	})
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(h.queries, h.duration)
	}
	h.maxSamples = opts.MaxSamples
	if opts.MaxSeries > 0 {
		h.maxSeries = opts.MaxSeries
	}
	h.engineQ = limited{e: h.q, maxSeries: h.maxSeries}
	return h
}

// Unavailable answers every call of the API with a Prometheus error saying
// why it is not served (e.g. the store does not serve PromQL).
func Unavailable(reason string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, errUnavailable, "the Prometheus query API is not available: "+reason)
	})
}

// ServeHTTP serves the paths under Prefix; the caller has checked the
// method and the identity's scope.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, errBadData, fmt.Sprintf("reading the form: %v", err))
		return
	}
	path, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok {
		writeError(w, errNotFound, "no such endpoint: "+r.URL.Path)
		return
	}
	switch path {
	case "query":
		h.query(w, r)
	case "query_range":
		h.queryRange(w, r)
	case "series":
		h.series(w, r)
	case "labels":
		h.labelNames(w, r)
	case "metadata":
		h.metadata(w, r)
	case "status/buildinfo":
		h.buildInfo(w)
	default:
		if name, ok := strings.CutPrefix(path, "label/"); ok {
			if name, ok := strings.CutSuffix(name, "/values"); ok && !strings.Contains(name, "/") {
				h.labelValues(w, r, name)
				return
			}
		}
		writeError(w, errNotFound, "no such endpoint: "+r.URL.Path)
	}
}

// queryContext applies the request's timeout parameter.
func queryContext(r *http.Request) (context.Context, context.CancelFunc, error) {
	ctx := r.Context()
	if v := r.FormValue("timeout"); v != "" {
		d, err := parseDuration(v)
		if err != nil {
			return nil, nil, fmt.Errorf("invalid parameter \"timeout\": %w", err)
		}
		if d > 0 {
			ctx, cancel := context.WithTimeout(ctx, d)
			return ctx, cancel, nil
		}
	}
	return ctx, func() {}, nil
}

func (h *Handler) query(w http.ResponseWriter, r *http.Request) {
	ts, err := timeParam(r, "time", h.now())
	if err != nil {
		writeError(w, errBadData, err.Error())
		return
	}
	ctx, cancel, err := queryContext(r)
	if err != nil {
		writeError(w, errBadData, err.Error())
		return
	}
	defer cancel()
	expr := r.FormValue("query")
	qry, err := h.engine.NewInstantQuery(ctx, h.engineQ, nil, expr, ts)
	if err != nil {
		prepareError(w, err)
		return
	}
	h.exec(ctx, w, qry, expr)
}

func (h *Handler) queryRange(w http.ResponseWriter, r *http.Request) {
	start, err := timeParam(r, "start", time.Time{})
	if err == nil && start.IsZero() {
		err = errors.New("invalid parameter \"start\": missing")
	}
	if err != nil {
		writeError(w, errBadData, err.Error())
		return
	}
	end, err := timeParam(r, "end", time.Time{})
	if err == nil && end.IsZero() {
		err = errors.New("invalid parameter \"end\": missing")
	}
	if err != nil {
		writeError(w, errBadData, err.Error())
		return
	}
	if end.Before(start) {
		writeError(w, errBadData, "invalid parameter \"end\": end timestamp must not be before start time")
		return
	}
	step, err := parseDuration(r.FormValue("step"))
	if err != nil {
		writeError(w, errBadData, "invalid parameter \"step\": "+err.Error())
		return
	}
	if step <= 0 {
		writeError(w, errBadData, "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer")
		return
	}
	if end.Sub(start)/step > maxPoints {
		writeError(w, errBadData, "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)")
		return
	}
	ctx, cancel, err := queryContext(r)
	if err != nil {
		writeError(w, errBadData, err.Error())
		return
	}
	defer cancel()
	expr := r.FormValue("query")
	qry, err := h.engine.NewRangeQuery(ctx, h.engineQ, nil, expr, start, end, step)
	if err != nil {
		prepareError(w, err)
		return
	}
	h.exec(ctx, w, qry, expr)
}

// prepareError answers an error of preparing a query: a parse error (or any
// other) is bad data, as in Prometheus, but a timeout or limit says so.
func prepareError(w http.ResponseWriter, err error) {
	switch typ := execErrorType(err); typ {
	case errTimeout, errCanceled, errCostLimit:
		writeError(w, typ, err.Error())
	default:
		writeError(w, errBadData, "invalid parameter \"query\": "+err.Error())
	}
}

func (h *Handler) exec(ctx context.Context, w http.ResponseWriter, qry promql.Query, expr string) {
	defer qry.Close()
	wait := time.NewTimer(h.timeout)
	defer wait.Stop()
	select {
	case h.slots <- struct{}{}:
	case <-wait.C:
		writeError(w, errTimeout, "query timed out waiting for one of the queries running at once to end")
		return
	case <-ctx.Done():
		writeError(w, execErrorType(ctx.Err()), "query "+ctx.Err().Error()+" waiting for one of the queries running at once to end")
		return
	}
	start := time.Now()
	ctx = store.WithSampleLimit(ctx, h.maxSamples)
	if hasSubquery(qry) {
		ctx = store.WithRawSamples(ctx)
	}
	res := qry.Exec(ctx)
	// The slot bounds evaluations, not answers: a client reading its
	// answer slowly must not hold off every other query. Writing the
	// answer gets the query's timeout as its deadline instead.
	<-h.slots
	h.duration.Observe(time.Since(start).Seconds())
	if res.Err != nil {
		typ := execErrorType(res.Err)
		h.queries.WithLabelValues(typ.name).Inc()
		if typ == errInternal {
			h.logger.Warn("PromQL query failed", "query", expr, "err", res.Err)
		}
		writeError(w, typ, res.Err.Error())
		return
	}
	h.queries.WithLabelValues("success").Inc()
	// (An error answer is small: it is written without this deadline,
	// which a timeout has already passed.)
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(h.timeout))
	warnings, infos := res.Warnings.AsStrings(expr, 10, 10)
	writeSuccess(w, queryData(res.Value), warnings, infos)
}

// execErrorType is the error type Prometheus answers for an error of the
// engine (returnAPIError in web/api/v1/api.go).
func execErrorType(err error) errorType {
	var (
		eqc   promql.ErrQueryCanceled
		eqt   promql.ErrQueryTimeout
		es    promql.ErrStorage
		etms  promql.ErrTooManySeries
		etmsr promql.ErrTooManySamplesRead
	)
	switch {
	case errors.As(err, &eqc):
		return errCanceled
	case errors.As(err, &eqt):
		return errTimeout
	case errors.As(err, &etms), errors.As(err, &etmsr):
		return errCostLimit
	case errors.Is(err, store.ErrTooManySamples):
		return errExec
	case errors.As(err, &es):
		return errInternal
	case errors.Is(err, context.DeadlineExceeded):
		return errTimeout
	case errors.Is(err, context.Canceled):
		return errCanceled
	}
	return errExec
}

// matcherSets parses the match[] parameters; required says at least one is.
func (h *Handler) matcherSets(r *http.Request, required bool) ([][]*labels.Matcher, error) {
	ss := r.Form["match[]"]
	if len(ss) == 0 {
		if required {
			return nil, errors.New("no match[] parameter provided")
		}
		return nil, nil
	}
	sets, err := h.parser.ParseMetricSelectors(ss)
	if err != nil {
		return nil, fmt.Errorf("invalid parameter \"match[]\": %w", err)
	}
	for _, ms := range sets {
		if !slices.ContainsFunc(ms, func(m *labels.Matcher) bool { return !m.Matches("") }) {
			return nil, errors.New("match[] must contain at least one non-empty matcher")
		}
	}
	return sets, nil
}

// rangeParams are the start, end and limit of the series and label calls.
type rangeParams struct {
	mint, maxt int64
	limit      int
}

func parseRange(r *http.Request) (rangeParams, error) {
	var p rangeParams
	start, err := timeParam(r, "start", minTime)
	if err != nil {
		return p, err
	}
	end, err := timeParam(r, "end", maxTime)
	if err != nil {
		return p, err
	}
	if end.Before(start) {
		return p, errors.New("invalid parameter \"end\": end timestamp must not be before start time")
	}
	if v := r.FormValue("limit"); v != "" {
		if p.limit, err = strconv.Atoi(v); err != nil || p.limit < 0 {
			return p, fmt.Errorf("invalid parameter \"limit\": %q is not a non-negative integer", v)
		}
	}
	p.mint, p.maxt = start.UnixMilli(), end.UnixMilli()
	return p, nil
}

func (h *Handler) tooManySeries() string {
	return fmt.Sprintf("the answer would hold more than %d series (--prometheus-max-series); narrow the match[] selectors or the time range", h.maxSeries)
}

// openMetadataQuery reads the match[] sets (required or not) and the
// range of a series or label call, takes an evaluation slot (metaSlot)
// and opens a querier over the range; ok is false when it answered an
// error. done releases the slot and the querier.
func (h *Handler) openMetadataQuery(w http.ResponseWriter, r *http.Request, required bool) (ctx context.Context, sets [][]*labels.Matcher, p rangeParams, q storage.Querier, done func(), ok bool) {
	sets, err := h.matcherSets(r, required)
	if err != nil {
		writeError(w, errBadData, err.Error())
		return nil, nil, p, nil, nil, false
	}
	if p, err = parseRange(r); err != nil {
		writeError(w, errBadData, err.Error())
		return nil, nil, p, nil, nil, false
	}
	ctx, release, ok := h.metaSlot(w, r)
	if !ok {
		return nil, nil, p, nil, nil, false
	}
	if q, err = h.q.Querier(p.mint, p.maxt); err != nil {
		release()
		writeError(w, errInternal, err.Error())
		return nil, nil, p, nil, nil, false
	}
	return ctx, sets, p, q, func() { q.Close(); release() }, true
}

// metaSlot bounds a series, label or metadata call as a query is
// bounded: it takes one of the evaluation slots (waiting within the
// timeout) and runs under --prometheus-timeout, or the request's shorter
// timeout parameter; release gives both back.
func (h *Handler) metaSlot(w http.ResponseWriter, r *http.Request) (ctx context.Context, release func(), ok bool) {
	ctx, cancelReq, err := queryContext(r)
	if err != nil {
		writeError(w, errBadData, err.Error())
		return nil, nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	select {
	case h.slots <- struct{}{}:
		return ctx, func() { <-h.slots; cancel(); cancelReq() }, true
	case <-ctx.Done():
		err := ctx.Err()
		cancel()
		cancelReq()
		writeError(w, execErrorType(err), "call "+err.Error()+" waiting for one of the queries running at once to end")
		return nil, nil, false
	}
}

func (h *Handler) series(w http.ResponseWriter, r *http.Request) {
	ctx, sets, p, q, done, ok := h.openMetadataQuery(w, r, true)
	if !ok {
		return
	}
	defer done()
	seen := map[string]bool{}
	var out []labels.Labels
	var warnings []string
	hints := &storage.SelectHints{Start: p.mint, End: p.maxt, Func: "series"}
	for _, ms := range sets {
		ss := q.Select(ctx, false, hints, ms...)
		for ss.Next() {
			ls := ss.At().Labels()
			key := ls.String()
			if seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, ls)
			if h.maxSeries > 0 && len(out) > h.maxSeries {
				writeError(w, errCostLimit, h.tooManySeries())
				return
			}
		}
		if err := ss.Err(); err != nil {
			writeError(w, execErrorType(err), err.Error())
			return
		}
		for _, err := range ss.Warnings() {
			warnings = append(warnings, err.Error())
		}
	}
	slices.SortFunc(out, labels.Compare)
	if p.limit > 0 && len(out) > p.limit {
		out = out[:p.limit]
		warnings = append(warnings, "results truncated due to limit")
	}
	if out == nil {
		out = []labels.Labels{}
	}
	writeSuccess(w, writeLabelSets(out), warnings, nil)
}

// labelQuery answers the union over the match[] sets (or all series) of
// one label call.
func (h *Handler) labelQuery(w http.ResponseWriter, r *http.Request, call func(context.Context, storage.Querier, *storage.LabelHints, []*labels.Matcher) ([]string, error)) {
	ctx, sets, p, q, done, ok := h.openMetadataQuery(w, r, false)
	if !ok {
		return
	}
	defer done()
	if sets == nil {
		sets = [][]*labels.Matcher{nil}
	}
	set := map[string]struct{}{}
	for _, ms := range sets {
		vs, err := call(ctx, q, &storage.LabelHints{}, ms)
		if err != nil {
			writeError(w, execErrorType(err), err.Error())
			return
		}
		for _, v := range vs {
			set[v] = struct{}{}
		}
	}
	out := sortedKeys(set)
	var warnings []string
	if p.limit > 0 && len(out) > p.limit {
		out = out[:p.limit]
		warnings = append(warnings, "results truncated due to limit")
	}
	writeSuccess(w, value(out), warnings, nil)
}

func (h *Handler) labelNames(w http.ResponseWriter, r *http.Request) {
	h.labelQuery(w, r, func(ctx context.Context, q storage.Querier, hints *storage.LabelHints, ms []*labels.Matcher) ([]string, error) {
		names, _, err := q.LabelNames(ctx, hints, ms...)
		return names, err
	})
}

var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

func (h *Handler) labelValues(w http.ResponseWriter, r *http.Request, name string) {
	if !labelName.MatchString(name) {
		writeError(w, errBadData, fmt.Sprintf("invalid label name: %q", name))
		return
	}
	h.labelQuery(w, r, func(ctx context.Context, q storage.Querier, hints *storage.LabelHints, ms []*labels.Matcher) ([]string, error) {
		vs, _, err := q.LabelValues(ctx, name, hints, ms...)
		return vs, err
	})
}

// metadataEntry is one metric's metadata: twinline keeps no type, help or
// unit, so every metric is of type unknown.
type metadataEntry struct {
	Type string `json:"type"`
	Help string `json:"help"`
	Unit string `json:"unit"`
}

func (h *Handler) metadata(w http.ResponseWriter, r *http.Request) {
	limit := -1
	if v := r.FormValue("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeError(w, errBadData, fmt.Sprintf("invalid parameter \"limit\": %q is not an integer", v))
			return
		}
		limit = n
	}
	ctx, release, ok := h.metaSlot(w, r)
	if !ok {
		return
	}
	defer release()
	q, err := h.q.Querier(minTime.UnixMilli(), maxTime.UnixMilli())
	if err != nil {
		writeError(w, errInternal, err.Error())
		return
	}
	defer q.Close()
	var ms []*labels.Matcher
	if m := r.FormValue("metric"); m != "" {
		ms = append(ms, labels.MustNewMatcher(labels.MatchEqual, store.PromLabelName, m))
	}
	names, _, err := q.LabelValues(ctx, store.PromLabelName, &storage.LabelHints{}, ms...)
	if err != nil {
		writeError(w, execErrorType(err), err.Error())
		return
	}
	out := map[string][]metadataEntry{}
	for _, n := range names {
		if limit >= 0 && len(out) >= limit {
			break
		}
		out[n] = []metadataEntry{{Type: string(model.MetricTypeUnknown)}}
	}
	writeSuccess(w, value(out), nil, nil)
}

// buildInfo answers Prometheus' fields; the version is twinline's.
func (h *Handler) buildInfo(w http.ResponseWriter) {
	writeSuccess(w, func(st *jsoniter.Stream) {
		st.WriteVal(map[string]string{
			"version":   h.version,
			"revision":  "",
			"branch":    "",
			"buildUser": "",
			"buildDate": "",
			"goVersion": runtime.Version(),
		})
	}, nil, nil)
}

// Bounds of the series and label calls without start or end (Prometheus'
// MinTime and MaxTime).
var (
	minTime = time.Unix(math.MinInt64/1000+62135596801, 0).UTC()
	maxTime = time.Unix(math.MaxInt64/1000-62135596801, 999999999).UTC()
)

// timeParam parses a time as Prometheus does: Unix seconds with an
// optional fraction, or RFC 3339.
func timeParam(r *http.Request, name string, def time.Time) (time.Time, error) {
	v := r.FormValue(name)
	if v == "" {
		return def, nil
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return time.Time{}, fmt.Errorf("invalid parameter %q: cannot parse %q to a valid timestamp", name, v)
		}
		s, ns := math.Modf(f)
		ns = math.Round(ns*1000) / 1000
		return time.Unix(int64(s), int64(ns*float64(time.Second))).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	switch v {
	case minTime.Format(time.RFC3339Nano):
		return minTime, nil
	case maxTime.Format(time.RFC3339Nano):
		return maxTime, nil
	}
	return time.Time{}, fmt.Errorf("invalid parameter %q: cannot parse %q to a valid timestamp", name, v)
}

// parseDuration parses seconds (with a fraction) or a Prometheus duration.
func parseDuration(s string) (time.Duration, error) {
	if d, err := strconv.ParseFloat(s, 64); err == nil {
		ts := d * float64(time.Second)
		if math.IsNaN(ts) || ts >= float64(math.MaxInt64) || ts < float64(math.MinInt64) {
			return 0, fmt.Errorf("cannot parse %q to a valid duration: it overflows int64", s)
		}
		return time.Duration(ts), nil
	}
	if d, err := model.ParseDuration(s); err == nil {
		return time.Duration(d), nil
	}
	return 0, fmt.Errorf("cannot parse %q to a valid duration", s)
}

// hasSubquery reports whether qry's expression holds a subquery, whose
// selectors the stores must answer from raw samples (store.WithRawSamples).
func hasSubquery(qry promql.Query) bool {
	st, ok := qry.Statement().(*parser.EvalStmt)
	if !ok {
		return true
	}
	found := false
	parser.Inspect(st.Expr, func(n parser.Node, _ []parser.Node) error {
		if _, ok := n.(*parser.SubqueryExpr); ok {
			found = true
		}
		return nil
	})
	return found
}
