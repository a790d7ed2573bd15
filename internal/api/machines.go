package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/twin"
)

const (
	maxRegistryBody = 64 << 10
	maxPoints       = 100_000
	maxRawPoints    = 500_000
)

// handleMachines is GET /api/v1/machines: the fleet, filtered by site,
// line, status, text (q) and registry attributes (attr.KEY=VALUE), in id
// order, a page at a time with limit and cursor (fleet.go).
func (a *API) handleMachines(w http.ResponseWriter, r *http.Request) {
	if !csvFormat(w, r) {
		return
	}
	f, problems := parseFleetQuery(r.URL.Query())
	if len(problems) > 0 {
		writeInvalidParams(w, problems)
		return
	}
	page, err := a.selectFleet(r.Context(), identity(r), f)
	if err != nil {
		a.logger.Error("finding machines by attributes", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "finding machines by attributes in the registry store did not complete; retry"})
		return
	}
	if wantsCSV(r) {
		writeMachinesCSV(w, a.machines(page))
		return
	}
	writeFleet(w, page)
}

func (a *API) handleMachineGet(w http.ResponseWriter, r *http.Request) {
	m, err := a.getMachine(r, r.PathValue("id"))
	if err != nil {
		a.twinError(w, err)
		return
	}
	a.withAlarmStatus(&m)
	writeJSON(w, http.StatusOK, m)
}

func (a *API) handleMachinePut(w http.ResponseWriter, r *http.Request) {
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	in, err := twin.DecodeInfo(body)
	if err != nil {
		a.twinError(w, err)
		return
	}
	id := r.PathValue("id")
	if !a.mayPlace(w, r, id, in.Site) {
		return
	}
	if in.Site == "" {
		if ident := identity(r); len(ident.Sites) == 1 {
			in.Site = ident.Sites[0] // a one-site admin registers there
		}
	}
	if in.ID != "" && in.ID != id {
		a.twinError(w, fmt.Errorf("%w: id %q in the body differs from %q in the path", twin.ErrInvalid, in.ID, id))
		return
	}
	if reason := ingest.MachineIDProblem(id, a.opts.Limits.MaxMachineIDLen); reason != "" {
		badParam(w, "id", reason)
		return
	}
	before, _ := a.registry.Get(id)
	after, created, err := a.registry.Put(id, in)
	if err != nil {
		a.twinError(w, err)
		return
	}
	m := a.live.Machine(after)
	change := map[string]any{"after": after}
	if !created {
		change["before"] = before
	}
	note(r, id, "", change)
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, m)
}

func (a *API) handleMachinePatch(w http.ResponseWriter, r *http.Request) {
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	var change struct {
		Site *string `json:"site"`
	}
	_ = json.Unmarshal(body, &change) // Patch reports a malformed body
	site := ""
	if change.Site != nil {
		site = *change.Site
	}
	if _, err := a.getMachine(r, id); err != nil {
		a.twinError(w, err)
		return
	}
	if change.Site != nil && !a.mayPlace(w, r, id, site) {
		return
	}
	before, _ := a.registry.Get(id)
	after, err := a.registry.Patch(id, body)
	if err != nil {
		a.twinError(w, err)
		return
	}
	note(r, id, "", map[string]any{"before": before, "after": after})
	writeJSON(w, http.StatusOK, a.live.Machine(after))
}

func (a *API) handleMachineDelete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	before, err := a.getMachine(r, id)
	if err != nil {
		a.twinError(w, err)
		return
	}
	note(r, id, "", map[string]any{"before": before.Info})
	if err := a.registry.Delete(id); err != nil {
		a.twinError(w, err)
		return
	}
	if a.alarms != nil {
		if _, err := a.alarms.Forget(id, a.now()); err != nil {
			a.logger.Error("clearing the alarms of a deleted machine", "machine", id, "err", err)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleLatest is GET /api/v1/machines/{id}/latest: the twin's latest values.
func (a *API) handleLatest(w http.ResponseWriter, r *http.Request) {
	m, err := a.getMachine(r, r.PathValue("id"))
	if err != nil {
		a.twinError(w, err)
		return
	}
	a.withAlarmStatus(&m)
	if a.hot != nil {
		// Another replica may have processed newer samples of the machine
		// (at scale, processors and api replicas are apart): the hot window
		// has every replica's.
		if pts, err := a.hot.Latest(r.Context(), m.ID); err == nil {
			for metric, p := range pts {
				if v, ok := m.Metrics[metric]; !ok || p.Time > v.TS {
					// A newer value; the median stays the twin's.
					m.Metrics[metric] = twin.Value{Value: p.Value, TS: p.Time, Median: v.Median}
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, struct {
		Machine  string                     `json:"machine"`
		Status   string                     `json:"status"`
		Alarm    bool                       `json:"alarm"`
		LastSeen int64                      `json:"lastSeen,omitempty"`
		Metrics  map[string]twin.Value      `json:"metrics"`
		States   map[string]twin.StateValue `json:"states,omitempty"`
		Rate1m   float64                    `json:"rate1m"`
		Rate5m   float64                    `json:"rate5m"`
	}{m.ID, m.Status, m.Alarm, m.LastSeen, m.Metrics, m.States, m.Rate1m, m.Rate5m})
}

// seriesResponse is columnar: t[i] and v[i] form one point.
type seriesResponse struct {
	Machine string `json:"machine"`
	Metric  string `json:"metric"`
	From    int64  `json:"from"`
	To      int64  `json:"to"`
	Step    string `json:"step,omitempty"`
	Agg     string `json:"agg,omitempty"`
	Points  int    `json:"points,omitempty"`
	// Fn and Window name the transform of the raw samples, if any.
	Fn     string `json:"fn,omitempty"`
	Window int    `json:"window,omitempty"`
	// PartialFrom, with step, is the start of the first bucket that is
	// still open (its end is after the machine's watermark): that bucket and
	// the later ones may still change.
	PartialFrom *int64    `json:"partialFrom,omitempty"`
	T           []int64   `json:"t"`
	V           []float64 `json:"v"`
}

// handleSeries is GET /api/v1/machines/{id}/series: raw, aggregated by step,
// or downsampled to at most N points.
func (a *API) handleSeries(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	machine, err := a.getMachine(r, id)
	// A machine's first samples are stored (and acknowledged) a moment
	// before its twin registers it: an unknown machine is looked up in the
	// store too, and is not found only when the store has nothing of it.
	// A site-restricted identity sees registered machines only.
	unknown := errors.Is(err, twin.ErrNotFound) && !identity(r).Restricted()
	if err != nil && (!unknown || a.store == nil) {
		a.twinError(w, err)
		return
	}
	q := r.URL.Query()
	var problems []problem.InvalidParam
	bad := func(name, reason string) {
		problems = append(problems, problem.InvalidParam{Name: name, Reason: reason})
	}

	metric := q.Get("metric")
	if metric == "" {
		bad("metric", "required")
	}
	now := a.now()
	from, to := parseRange(q, now, time.Hour, bad)
	var step time.Duration
	if s := q.Get("step"); s != "" {
		if step, err = time.ParseDuration(s); err != nil || step < time.Millisecond {
			bad("step", fmt.Sprintf("%q is not a duration of at least 1ms, like 10s or 1m", s))
		}
	}
	var agg store.Agg
	if s := q.Get("agg"); s != "" {
		if agg, err = store.ParseAgg(s); err != nil {
			bad("agg", "must be one of avg, min, max, sum, count")
		} else if step == 0 && q.Get("step") == "" {
			bad("agg", "needs step")
		}
	} else {
		agg = store.AggAvg
	}
	points := 0
	if s := q.Get("points"); s != "" {
		if points, err = strconv.Atoi(s); err != nil || points < 2 || points > maxPoints {
			bad("points", fmt.Sprintf("must be an integer from 2 to %d", maxPoints))
		}
		if q.Get("step") != "" {
			bad("points", "cannot be combined with step")
		}
	}
	var tr store.Transform
	if s := q.Get("fn"); s != "" || q.Get("window") != "" {
		if tr, err = store.ParseTransform(s, q.Get("window")); err != nil {
			bad("fn", "must be delta, or rolling_avg with window 1 to "+strconv.Itoa(store.MaxRollingWindow)+" samples (window only with rolling_avg)")
		}
		if q.Get("step") != "" || q.Get("points") != "" {
			bad("fn", "applies to raw samples: cannot be combined with step or points")
		}
	}
	if f := q.Get("format"); f != "" && f != "json" && f != "csv" {
		bad("format", "must be json or csv")
	}
	if step > 0 && to.Sub(from)/step > maxPoints {
		bad("step", fmt.Sprintf("too small for the range: more than %d buckets", maxPoints))
	}
	if len(problems) > 0 {
		writeInvalidParams(w, problems)
		return
	}

	release, ok := a.querySlot(w)
	if !ok {
		return
	}
	defer release()
	key := store.SeriesKey{Machine: id, Metric: metric}
	f, t := from.UnixMilli(), to.UnixMilli()
	resp := seriesResponse{Machine: id, Metric: metric, From: f, To: t, T: []int64{}, V: []float64{}}
	var pts []store.Point
	switch {
	case step > 0:
		resp.Step, resp.Agg = step.String(), string(agg)
		if ag, ok := a.store.(store.Aggregator); ok {
			pts, err = ag.AggregateRange(r.Context(), key, f, t, step, agg)
		} else {
			pts, err = store.Aggregate(r.Context(), a.store, key, f, t, step, agg)
		}
		resp.PartialFrom = partialFrom(pts, step, machine, a.opts.Lateness, now.UnixMilli())
		if unknown && len(pts) > 0 {
			// No twin state yet: the newest bucket may still change.
			last := pts[len(pts)-1].Time
			resp.PartialFrom = &last
		}
	case points > 0:
		resp.Points = points
		if ds, ok := a.store.(store.Downsampler); ok {
			pts, err = ds.DownsampleRange(r.Context(), key, f, t, points)
		} else {
			pts, err = store.Downsample(r.Context(), a.store, key, f, t, points)
		}
	case tr.Fn != "":
		resp.Fn, resp.Window = tr.Fn, tr.Window
		if tf, ok := a.store.(store.Transformer); ok {
			pts, err = tf.TransformRange(r.Context(), key, f, t, tr, maxRawPoints)
		} else {
			err = a.store.Select(r.Context(), key, f, t, func(p store.Point) bool {
				pts = append(pts, p)
				return len(pts) <= maxRawPoints
			})
			pts = tr.Apply(pts)
		}
		if err == nil && len(pts) >= maxRawPoints {
			problem.Write(w, &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusBadRequest,
				Detail:        fmt.Sprintf("more than %d raw points in range; narrow it", maxRawPoints-1),
				InvalidParams: []problem.InvalidParam{{Name: "from", Reason: "range holds too many raw points"}}})
			return
		}
	default:
		if a.hot != nil {
			// The last minutes come from the hot window when it covers
			// the range: no store round trip (across replicas, Redis).
			if hp, covered, herr := a.hot.Range(r.Context(), key, f, t); herr == nil && covered && len(hp) < maxRawPoints {
				pts = hp
				break
			}
		}
		err = a.store.Select(r.Context(), key, f, t, func(p store.Point) bool {
			pts = append(pts, p)
			return len(pts) < maxRawPoints
		})
		if err == nil && len(pts) >= maxRawPoints {
			problem.Write(w, &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusBadRequest,
				Detail:        fmt.Sprintf("more than %d raw points in range; narrow it, or use points= or step=", maxRawPoints-1),
				InvalidParams: []problem.InvalidParam{{Name: "from", Reason: "range holds too many raw points"}}})
			return
		}
	}
	if err == nil && unknown && len(pts) == 0 {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: fmt.Sprintf("not found: machine %q", id)})
		return
	}
	if err != nil {
		a.logger.Error("querying series", "machine", id, "metric", metric, "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1, Detail: "querying the store: " + err.Error()})
		return
	}
	if wantsCSV(r) {
		writeSeriesCSV(w, key, f, t, pts) // NaN and ±Inf included
		return
	}
	for _, p := range pts {
		if math.IsNaN(p.Value) || math.IsInf(p.Value, 0) {
			continue // not representable in JSON
		}
		resp.T = append(resp.T, p.Time)
		resp.V = append(resp.V, p.Value)
	}
	writeJSON(w, http.StatusOK, resp)
}

// parseTime parses an RFC 3339 time or epoch milliseconds; "" gives def.
func parseTime(s string, def time.Time) (time.Time, error) {
	if s == "" {
		return def, nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor epoch milliseconds", s)
	}
	return t, nil
}

func readSmallBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRegistryBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			problem.Write(w, &problem.Problem{Type: problem.TypeBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
				Detail: fmt.Sprintf("body exceeds %d bytes", maxRegistryBody)})
			return nil, false
		}
		problem.Write(w, &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: "reading body: " + err.Error()})
		return nil, false
	}
	return b, true
}

// getMachine returns the twin id as the request's identity may see it: a
// machine of a site it does not see is not found, exactly as one that does
// not exist.
func (a *API) getMachine(r *http.Request, id string) (twin.Machine, error) {
	in, err := a.registry.Get(id)
	if err != nil {
		return twin.Machine{}, err
	}
	if !visible(r, in.Site) {
		return twin.Machine{}, fmt.Errorf("%w: machine %q", twin.ErrNotFound, id)
	}
	return a.live.Machine(in), nil
}

// mayPlace checks that the request's identity may put machine id at site:
// an existing machine it does not see is not found; a site-restricted
// identity places machines at its own sites only. It answers the refusal.
func (a *API) mayPlace(w http.ResponseWriter, r *http.Request, id, site string) bool {
	ident := identity(r)
	if !ident.Restricted() {
		return true
	}
	if cur, ok := a.registry.Site(id); ok && !ident.SeesSite(cur) {
		a.twinError(w, fmt.Errorf("%w: machine %q", twin.ErrNotFound, id))
		return false
	}
	if site == "" && len(ident.Sites) == 1 || ident.SeesSite(site) {
		return true
	}
	problem.Write(w, &problem.Problem{Type: problem.TypeForbidden, Status: http.StatusForbidden,
		Detail: "site " + strconv.Quote(site) + " is not one of yours: " + strings.Join(ident.Sites, ", ")})
	return false
}

func (a *API) twinError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, twin.ErrNotFound):
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: err.Error()})
	case errors.Is(err, twin.ErrInvalid):
		problem.Write(w, &problem.Problem{Type: problem.TypeInvalidMachine, Status: http.StatusBadRequest, Detail: err.Error()})
	default:
		a.logger.Error("updating registry", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1, Detail: "updating the registry did not complete; retry"})
	}
}

// partialFrom returns the start of the first bucket of pts whose end is
// after the machine's watermark, or nil. The watermark is its newest event
// time − lateness, or, once the machine has been quiet for the lateness
// (server time now), now − lateness: the engine closes its windows then.
func partialFrom(pts []store.Point, step time.Duration, m twin.Machine, lateness time.Duration, now int64) *int64 {
	newest := int64(math.MinInt64)
	for _, v := range m.Metrics {
		newest = max(newest, v.TS)
	}
	if newest == math.MinInt64 {
		return nil
	}
	if m.LastSeen != 0 && now-m.LastSeen > lateness.Milliseconds() {
		newest = max(newest, now)
	}
	watermark := newest - lateness.Milliseconds()
	for _, p := range pts {
		if p.Time+step.Milliseconds() > watermark {
			start := p.Time
			return &start
		}
	}
	return nil
}

// querySlot takes one of the history queries' slots (bounded: they read
// much); it answers 503 and returns false when none is free. release
// gives the slot back.
func (a *API) querySlot(w http.ResponseWriter) (release func(), ok bool) {
	select {
	case a.queries <- struct{}{}:
		return func() { <-a.queries }, true
	default:
		problem.Write(w, &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "too many history queries in flight; retry later"})
		return nil, false
	}
}

// parseRange reads the from and to parameters of a history query: to
// defaults to now, from to back before now; bad is told of every problem.
func parseRange(q url.Values, now time.Time, back time.Duration, bad func(name, reason string)) (from, to time.Time) {
	to, toErr := parseTime(q.Get("to"), now)
	if toErr != nil {
		bad("to", toErr.Error())
	}
	from, fromErr := parseTime(q.Get("from"), now.Add(-back))
	if fromErr != nil {
		bad("from", fromErr.Error())
	}
	if toErr == nil && fromErr == nil && from.After(to) {
		bad("from", "must not be after to")
	}
	return from, to
}
