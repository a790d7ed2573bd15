package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/twinline/twinline/internal/oee"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/twin"
)

const (
	// maxOEEMachines bounds the machines of one OEE query, maxOEECells
	// its machine buckets (the size of the answer).
	maxOEEMachines = 10_000
	maxOEECells    = 250_000
	// oeeWorkers bounds the machines read from the store at once by one
	// query.
	oeeWorkers = 4
	// counterLookback is how far before from a counter's samples are read
	// for the value its first increase in range is counted from.
	counterLookback = 15 * time.Minute
)

// oeeMachine is one machine's OEE in the answer of GET /api/v1/oee.
type oeeMachine struct {
	Machine string `json:"machine"`
	Site    string `json:"site"`
	Line    string `json:"line"`
	oee.Series
}

type oeeLine struct {
	Site string `json:"site"`
	Line string `json:"line"`
	oee.Series
}

type oeeSite struct {
	Site string `json:"site"`
	oee.Series
}

type oeeResponse struct {
	From     int64        `json:"from"`
	To       int64        `json:"to"`
	Step     string       `json:"step"`
	Machines []oeeMachine `json:"machines"`
	Lines    []oeeLine    `json:"lines"`
	Sites    []oeeSite    `json:"sites"`
}

// handleOEE is GET /api/v1/oee: the OEE of the machines with an OEE spec
// (those of the identity's sites), by bucket, rolled up into lines and
// sites.
// dayWindow reads the from and to parameters of a report (OEE, export):
// to defaults to now, from to a day before to; bad is told of each one
// that does not parse, and ok is false then.
func dayWindow(q url.Values, now time.Time, bad func(name, reason string)) (from, to time.Time, ok bool) {
	to, toErr := parseTime(q.Get("to"), now)
	if toErr != nil {
		bad("to", toErr.Error())
	}
	from, fromErr := parseTime(q.Get("from"), to.Add(-24*time.Hour))
	if fromErr != nil {
		bad("from", fromErr.Error())
	}
	return from, to, toErr == nil && fromErr == nil
}

func (a *API) handleOEE(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var problems []problem.InvalidParam
	bad := func(name, reason string) {
		problems = append(problems, problem.InvalidParam{Name: name, Reason: reason})
	}
	now := a.now()
	from, to, timesOK := dayWindow(q, now, bad)
	var step time.Duration
	if s := q.Get("step"); s != "" {
		var err error
		if step, err = oee.ParseStep(s); err != nil {
			bad("step", fmt.Sprintf("%q is not a duration of at least 1ms, like 15m, 1h, 8h or 1d", s))
		}
	}
	var g oee.Grid
	if timesOK {
		switch {
		case !from.Before(to):
			bad("from", "must be before to")
		default:
			var err error
			if g, err = oee.NewGrid(from.UnixMilli(), to.UnixMilli(), step.Milliseconds()); err != nil {
				bad("step", fmt.Sprintf("too small for the range: more than %d buckets", oee.MaxBuckets))
			}
		}
	}
	names := q["machine"]
	if len(names) > maxOEEMachines {
		bad("machine", fmt.Sprintf("more than %d machines", maxOEEMachines))
	}
	if len(problems) > 0 {
		writeInvalidParams(w, problems)
		return
	}

	// The machines: those named (each must exist, be visible and have an
	// OEE spec), or every one with a spec, filtered by site and line.
	id := identity(r)
	site, line := q.Get("site"), q.Get("line")
	named := map[string]bool{}
	for _, m := range names {
		in, err := a.registry.Get(m)
		if err == nil && !id.SeesSite(in.Site) {
			err = fmt.Errorf("%w: machine %q", twin.ErrNotFound, m)
		}
		if err != nil {
			a.twinError(w, err)
			return
		}
		if in.OEE == nil {
			badParam(w, "machine", fmt.Sprintf("machine %q declares no oee spec", m))
			return
		}
		named[m] = true
	}
	var infos []twin.Info
	for _, in := range a.registry.List() {
		if in.OEE == nil || !id.SeesSite(in.Site) || site != "" && in.Site != site || line != "" && in.Line != line ||
			len(named) > 0 && !named[in.ID] {
			continue
		}
		infos = append(infos, in)
	}
	slices.SortFunc(infos, func(x, y twin.Info) int { return cmp.Compare(x.ID, y.ID) })
	if len(infos) > maxOEEMachines || len(infos)*g.Len() > maxOEECells {
		badParam(w, "site", fmt.Sprintf("%d machines × %d buckets is more than %d machines or %d machine buckets; narrow with site, line, machine or a larger step",
			len(infos), g.Len(), maxOEEMachines, maxOEECells))
		return
	}

	resp := oeeResponse{From: g.From, To: g.To, Step: oee.FormatStep(time.Duration(cmp.Or(g.Step, g.To-g.From)) * time.Millisecond),
		Machines: []oeeMachine{}, Lines: []oeeLine{}, Sites: []oeeSite{}}
	if len(infos) == 0 {
		writeJSON(w, http.StatusOK, resp)
		return
	}
	states, ok := a.store.(store.StateStore)
	if !ok {
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusNotImplemented,
			Detail: "this server's store keeps no state series, which OEE is computed from"})
		return
	}
	release, ok := a.querySlot(w)
	if !ok {
		return
	}
	defer release()

	series, err := a.computeOEE(r.Context(), g, infos, states, now.UnixMilli())
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return // the client went away
		}
		a.logger.Error("computing oee", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "reading the store: " + err.Error()})
		return
	}
	type lineKey struct{ site, line string }
	byLine := map[lineKey][]*oee.Series{}
	for i, in := range infos {
		resp.Machines = append(resp.Machines, oeeMachine{Machine: in.ID, Site: in.Site, Line: in.Line, Series: series[i]})
		k := lineKey{in.Site, in.Line}
		byLine[k] = append(byLine[k], &series[i])
	}
	keys := make([]lineKey, 0, len(byLine))
	for k := range byLine {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y lineKey) int { return cmp.Or(cmp.Compare(x.site, y.site), cmp.Compare(x.line, y.line)) })
	resp.Lines = make([]oeeLine, 0, len(keys)) // siteParts point into it: no reallocation
	var siteParts []*oee.Series
	for i, k := range keys {
		resp.Lines = append(resp.Lines, oeeLine{Site: k.site, Line: k.line, Series: oee.Rollup(g, byLine[k])})
		siteParts = append(siteParts, &resp.Lines[len(resp.Lines)-1].Series)
		if i+1 == len(keys) || keys[i+1].site != k.site {
			resp.Sites = append(resp.Sites, oeeSite{Site: k.site, Series: oee.Rollup(g, siteParts)})
			siteParts = nil
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// computeOEE reads the state changes and counters of each machine and
// computes its OEE, oeeWorkers machines at a time.
func (a *API) computeOEE(ctx context.Context, g oee.Grid, infos []twin.Info, states store.StateStore, now int64) ([]oee.Series, error) {
	out := make([]oee.Series, len(infos))
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(oeeWorkers)
	for i, in := range infos {
		eg.Go(func() error {
			spec := *in.OEE
			changes, err := states.States(ctx, in.ID, spec.StateMetric, g.From, min(g.To, now))
			if err != nil {
				return fmt.Errorf("reading the states %s/%s: %w", in.ID, spec.StateMetric, err)
			}
			counter := func(metric string) ([]float64, error) {
				if metric == "" {
					return nil, nil
				}
				c := oee.NewCounter(g)
				err := a.store.Select(ctx, store.SeriesKey{Machine: in.ID, Metric: metric}, g.From-counterLookback.Milliseconds(), g.To,
					func(p store.Point) bool { c.Add(p); return true })
				if err != nil {
					return nil, fmt.Errorf("reading the counter %s/%s: %w", in.ID, metric, err)
				}
				return c.Increases(), nil
			}
			total, err := counter(spec.TotalCount)
			if err != nil {
				return err
			}
			good, err := counter(spec.GoodCount)
			if err != nil {
				return err
			}
			out[i] = oee.Compute(g, spec, changes, total, good, now)
			return nil
		})
	}
	return out, eg.Wait()
}

// writeInvalidParams answers 400 naming every bad parameter.
func writeInvalidParams(w http.ResponseWriter, problems []problem.InvalidParam) {
	detail := "invalid parameter " + problems[0].Name + ": " + problems[0].Reason
	if len(problems) > 1 {
		detail += " (and " + strconv.Itoa(len(problems)-1) + " more)"
	}
	problem.Write(w, &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusBadRequest, Detail: detail, InvalidParams: problems})
}
