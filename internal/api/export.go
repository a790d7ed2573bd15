package api

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/twinline/twinline/internal/export"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/twin"
)

const (
	// maxExportSeries bounds the series of one export (the list of them
	// is the only part of an export held whole in memory).
	maxExportSeries = 100_000
	// exportWriteIdle is how long an export waits for its client to take
	// the next block before it cuts the download.
	exportWriteIdle = time.Minute
	// maxExports bounds the exports running at once: each reads the
	// store for as long as its client downloads.
	maxExports = 2
	// exportRowsTrailer is the HTTP trailer of a complete export: its
	// row count. An export that fails after its first bytes is cut
	// instead (no trailer, no last chunk): see handleExport.
	exportRowsTrailer = "Twinline-Export-Rows"
	// parquetType is the media type of Parquet (IANA, 2024).
	parquetType = "application/vnd.apache.parquet"
)

// handleExport is GET /api/v1/export?site=&line=&machine=&metric=&from=&to=&format=csv|parquet:
// every sample of the selected series in [from, to] (to defaults to now,
// from to 24 hours before to), as one download, streamed series by series
// (docs/export.md). site, line, machine and metric may each be repeated
// (any of the values); a site-restricted identity gets only its sites'
// machines, and a machine it names of another site is not found.
//
// The status and headers leave before the data: once they have, an error
// (the store fails, the server stops) cannot change them. The answer is
// then cut — the connection closed without the last chunk
// (http.ErrAbortHandler) — so that clients report an incomplete download
// (curl: exit 18; Python requests: ChunkedEncodingError; a browser: a
// failed download) instead of keeping a truncated file that looks whole.
// A complete answer ends with the trailer Twinline-Export-Rows.
func (a *API) handleExport(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var problems []problem.InvalidParam
	bad := func(name, reason string) {
		problems = append(problems, problem.InvalidParam{Name: name, Reason: reason})
	}
	format := q.Get("format")
	switch format {
	case "":
		format = "csv"
		if acceptsParquet(r.Header.Get("Accept")) {
			format = "parquet"
		}
	case "csv", "parquet":
	default:
		bad("format", "must be csv or parquet")
	}
	now := a.now()
	from, to, timesOK := dayWindow(q, now, bad)
	if timesOK && from.After(to) {
		bad("from", "must not be after to")
	}
	for _, name := range []string{"site", "line", "machine", "metric"} {
		if slices.Contains(q[name], "") {
			bad(name, "must not be empty")
		}
	}
	if len(problems) > 0 {
		writeInvalidParams(w, problems)
		return
	}
	if a.store == nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable,
			Detail: "this server has no store to export from"})
		return
	}

	// Which machines the identity may export, with their site and line.
	id := identity(r)
	infos := map[string]twin.Info{}
	for _, in := range a.registry.List() {
		if id.SeesSite(in.Site) {
			infos[in.ID] = in
		}
	}
	for _, m := range q["machine"] {
		if _, ok := infos[m]; !ok && id.Restricted() {
			a.twinError(w, fmt.Errorf("%w: machine %q", twin.ErrNotFound, m))
			return
		}
	}
	f, t := from.UnixMilli(), to.UnixMilli()
	select {
	case a.exports <- struct{}{}:
		defer func() { <-a.exports }()
	default:
		problem.Write(w, &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 5,
			Detail: "exports run " + strconv.Itoa(maxExports) + " at a time; retry later"})
		return
	}
	keys, err := a.store.Series(r.Context(), f, t)
	if err != nil {
		a.logger.Error("listing series to export", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "listing the series: " + err.Error()})
		return
	}
	list := selectSeries(keys, infos, id.Restricted(), q["site"], q["line"], q["machine"], q["metric"])
	if len(list) > maxExportSeries {
		problem.Write(w, &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusBadRequest,
			Detail:        fmt.Sprintf("%d series selected, more than %d: narrow the selection", len(list), maxExportSeries),
			InvalidParams: []problem.InvalidParam{{Name: "machine", Reason: "too many series; name sites, lines, machines or metrics"}}})
		return
	}

	name := "twinline-export_" + from.UTC().Format("20060102T150405Z") + "_" + to.UTC().Format("20060102T150405Z")
	// The status (200) goes with the first bytes: an error before them
	// is still answered with a problem.
	sent := &sentWriter{w: w}
	var out export.Writer
	h := w.Header()
	switch format {
	case "parquet":
		h.Set("Content-Type", parquetType)
		h.Set("Content-Disposition", attachment(name+".parquet"))
		out = export.NewParquet(sent)
	default:
		h.Set("Content-Type", "text/csv; charset=utf-8")
		h.Set("Content-Disposition", attachment(name+".csv"))
		if out, err = export.NewCSV(sent); err != nil {
			panic(http.ErrAbortHandler) // not reached: the header row is buffered
		}
	}
	h.Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return // the headers of the download, without reading the store
	}
	h.Set("Trailer", exportRowsTrailer)
	rc := http.NewResponseController(w)
	// A client that takes nothing for exportWriteIdle is cut: it would
	// hold one of the few export slots for ever.
	_ = rc.SetWriteDeadline(time.Now().Add(exportWriteIdle))
	flush := func() error {
		sent.started = true
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		_ = rc.SetWriteDeadline(time.Now().Add(exportWriteIdle))
		return nil
	}
	n, err := export.Run(r.Context(), a.store.Select, list, f, t, out, flush)
	if err == nil {
		err = out.Close()
	}
	if err != nil {
		if r.Context().Err() == nil {
			a.logger.Error("exporting", "rows", n, "series", len(list), "err", err)
		}
		if !sent.started {
			for _, k := range []string{"Content-Disposition", "Cache-Control", "Trailer"} {
				h.Del(k)
			}
			problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
				Detail: "exporting: " + err.Error()})
			return
		}
		panic(http.ErrAbortHandler) // cut: see above
	}
	h.Set(exportRowsTrailer, strconv.FormatInt(n, 10))
}

// sentWriter records whether anything was written (which sends the
// status).
type sentWriter struct {
	w       http.ResponseWriter
	started bool
}

func (s *sentWriter) Write(p []byte) (int, error) {
	s.started = true
	return s.w.Write(p)
}

// selectSeries keeps the keys of machines in infos (or, unless
// restricted, of machines not registered, when no site or line is asked)
// that match every non-empty filter, sorted by machine and metric.
func selectSeries(keys []store.SeriesKey, infos map[string]twin.Info, restricted bool, sites, lines, machines, metrics []string) []export.Series {
	set := func(vs []string) map[string]bool {
		if len(vs) == 0 {
			return nil // no filter
		}
		m := make(map[string]bool, len(vs))
		for _, v := range vs {
			m[v] = true
		}
		return m
	}
	siteSet, lineSet, machineSet, metricSet := set(sites), set(lines), set(machines), set(metrics)
	miss := func(s map[string]bool, v string) bool { return s != nil && !s[v] }
	var list []export.Series
	for _, k := range keys {
		in, registered := infos[k.Machine]
		switch {
		case !registered && (restricted || siteSet != nil || lineSet != nil),
			miss(siteSet, in.Site), miss(lineSet, in.Line), miss(machineSet, k.Machine), miss(metricSet, k.Metric):
			continue
		}
		list = append(list, export.Series{Key: k, Site: in.Site, Line: in.Line})
	}
	slices.SortFunc(list, func(x, y export.Series) int {
		return cmp.Or(cmp.Compare(x.Key.Machine, y.Key.Machine), cmp.Compare(x.Key.Metric, y.Key.Metric))
	})
	return list
}

// acceptsParquet reports whether an Accept header prefers Parquet to CSV
// (a tie goes to CSV, the default).
func acceptsParquet(accept string) bool {
	pq := acceptQ(accept, parquetType)
	return pq > 0 && pq > acceptQ(accept, "text/csv")
}
