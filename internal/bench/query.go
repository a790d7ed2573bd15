package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// runQuery preloads History of 1 Hz samples for HistoryMachines machines
// and one recent event for every other machine (so the fleet list has
// Machines entries with their latest metrics), then runs the queries one
// at a time, in turn, for Duration.
func runQuery(ctx context.Context, o Options, r *Result) error {
	m := newMeter(time.Now())
	rep := startReporter(ctx, o.Progress, o.Terminal, o.Scenario, m, time.Second)
	defer rep.stop()
	p := newPoster(o, formatJSON, m)
	defer p.close()
	metrics := metricList(o.Metrics)
	names := machineList(o.Prefix, o.Machines)

	// Preload: worker w posts the history of machines w, w+W, … in event
	// time order.
	m.setPhase("preload")
	end := time.Now().Truncate(time.Second).Add(-time.Second)
	first := end.Add(-o.History + time.Second)
	n := int64(o.History / time.Second)
	preloadStart := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, o.Workers)
	for w := range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for h := w; h < o.HistoryMachines; h += o.Workers {
				for i := int64(0); i < n && ctx.Err() == nil; i += int64(o.Batch) {
					cnt := int(min(int64(o.Batch), n-i))
					var err error
					buf, err = formatJSON.body(buf, cnt, metrics, func(j int) (string, int64, int64) {
						k := i + int64(j)
						return names[h], first.UnixMilli() + k*1000, k
					})
					if err != nil {
						errc <- err
						return
					}
					if err := postAll(ctx, p, w, buf, cnt); err != nil {
						errc <- err
						return
					}
				}
			}
			// The rest of the fleet: one event each, now.
			rest := o.Machines - o.HistoryMachines
			now := time.Now().UnixMilli()
			for i := w * o.Batch; i < rest; i += o.Workers * o.Batch {
				cnt := min(o.Batch, rest-i)
				var err error
				buf, err = formatJSON.body(buf, cnt, metrics, func(j int) (string, int64, int64) {
					return names[o.HistoryMachines+i+j], now, int64(i + j)
				})
				if err != nil {
					errc <- err
					return
				}
				if err := postAll(ctx, p, w, buf, cnt); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("preloading: %w", err)
	default:
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	preload := time.Since(preloadStart)
	r.Ingest = p.result(m, preload.Seconds())
	r.Notes = append(r.Notes, fmt.Sprintf("preloaded %s events (%s samples) in %.1f s",
		FormatCount(float64(r.Ingest.Events)), FormatCount(float64(r.Ingest.Samples)), preload.Seconds()))

	// Queries, in turn.
	from, to := strconv.FormatInt(first.UnixMilli(), 10), strconv.FormatInt(end.UnixMilli()+1, 10)
	kinds := []queryKind{
		{"history-points", func(i int) string {
			return "/api/v1/machines/" + names[i%o.HistoryMachines] + "/series?metric=" + metrics[0] + "&from=" + from + "&to=" + to + "&points=1000"
		}, true},
		{"history-step", func(i int) string {
			return "/api/v1/machines/" + names[i%o.HistoryMachines] + "/series?metric=" + metrics[0] + "&from=" + from + "&to=" + to + "&step=10s&agg=avg"
		}, true},
		{"fleet", func(int) string { return "/api/v1/machines" }, false},
	}
	return runQueries(ctx, o, r, m, kinds)
}

// queryKind is one query of the query phase: its name, its path for the
// i-th time it runs, and whether its answer is a series whose points are
// counted.
type queryKind struct {
	name   string
	path   func(i int) string
	series bool
}

// runQueries runs kinds one at a time and in turn for o.Duration and
// records each one's latency, rate, errors, answer size and (series)
// points in r. An error answer to a kind's first run ends it: the
// scenario is wrong, not the server slow.
func runQueries(ctx context.Context, o Options, r *Result, m *meter, kinds []queryKind) error {
	hists := make([]*Histogram, len(kinds))
	points := make([]int64, len(kinds))
	counts := make([]int64, len(kinds))
	sizes := make([]int64, len(kinds))
	errs := make([]errCounts, len(kinds))
	for k := range hists {
		hists[k] = NewHistogram()
	}
	client := newHTTPClient(1, o.Token)
	defer client.CloseIdleConnections()
	m.setPhase("queries")
	cpu0, cpuErr := serverCPU(o.Server)
	start := time.Now()
	deadline := start.Add(o.Duration)
	for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
		k := i % len(kinds)
		d, body, status, err := get(ctx, client, o.Target+kinds[k].path(i/len(kinds)))
		m.queries.Add(1)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				break
			}
			errs[k].add("transport")
			m.errors.Add(1)
		case status != http.StatusOK:
			errs[k].add(strconv.Itoa(status))
			m.errors.Add(1)
			if i < len(kinds) {
				return fmt.Errorf("query %s: %d: %.300s", kinds[k].name, status, body)
			}
		default:
			hists[k].Record(d)
			counts[k]++
			sizes[k] += int64(len(body))
			if kinds[k].series {
				points[k] += countPoints(body)
			}
		}
	}
	elapsed := time.Since(start)
	r.Seconds = elapsed.Seconds()
	for k, kind := range kinds {
		u, _ := url.Parse(kind.path(0))
		q := QueryResult{Name: kind.name, Path: u.Path + "?" + u.RawQuery, Summary: hists[k].Summary(), Errors: errs[k].snapshot()}
		if counts[k] > 0 {
			q.Bytes = float64(sizes[k]) / float64(counts[k])
			if kind.series {
				q.Points = float64(points[k]) / float64(counts[k])
			}
		}
		q.PerS = float64(counts[k]) / elapsed.Seconds()
		r.Queries = append(r.Queries, q)
	}
	r.Server = serverResult(o.Server, cpu0, cpuErr, 0)
	return ctx.Err()
}

// postAll posts one preload body and fails unless every event was
// acknowledged (retrying a 503 after a pause).
func postAll(ctx context.Context, p *poster, w int, body []byte, n int) error {
	for attempt := 0; ; attempt++ {
		before := p.m.errors.Load()
		acked, err := p.post(ctx, w, body, n)
		if err != nil {
			return err
		}
		if acked == int64(n) {
			return nil
		}
		if p.errs.snapshot()["503"] > 0 && p.m.errors.Load() > before && attempt < 20 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		hint := ""
		if p.errs.snapshot()["400"] > 0 {
			hint = " (history older than the server's --retention is rejected: raise it on the server, or shorten --history)"
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		return fmt.Errorf("%d of %d events acknowledged; first error: %s%s", acked, n, p.firstErr, hint)
	}
}

// get fetches u and returns the time to the last byte of the answer.
func get(ctx context.Context, c *http.Client, u string) (time.Duration, []byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, 0, err
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	return d, body, resp.StatusCode, err
}

// countPoints returns the length of a series answer's "t" array (0 for
// other answers).
func countPoints(body []byte) int64 {
	var s struct {
		T []json.RawMessage `json:"t"`
	}
	if json.Unmarshal(body, &s) != nil {
		return 0
	}
	return int64(len(s.T))
}
