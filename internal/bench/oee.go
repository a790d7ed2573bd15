package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The oee scenario measures GET /api/v1/oee over a fleet with history:
// Machines machines, registered with an OEE specification, each with
// History of events every 10 s carrying its state (RUNNING, IDLE, DOWN:
// a change every few minutes) and its part counters; then, one at a time
// and in turn for Duration, the OEE of the whole fleet by the hour
// (rolled up per line and site) and of one machine.

// oeeSpec is the registry entry of an oee scenario machine: line n mod 20.
func oeeSpec(line int) string {
	return fmt.Sprintf(`{"site":"bench","line":"line-%02d","oee":{"stateMetric":"state","runningStates":["RUNNING"],`+
		`"plannedStopStates":["PLANNED"],"totalCount":"parts_total","goodCount":"parts_good","idealCycleSeconds":2.5}}`, line)
}

func runOEE(ctx context.Context, o Options, r *Result) error {
	m := newMeter(time.Now())
	rep := startReporter(ctx, o.Progress, o.Terminal, o.Scenario, m, time.Second)
	defer rep.stop()
	names := machineList(o.Prefix, o.Machines)
	client := newHTTPClient(o.Workers, o.Token)
	defer client.CloseIdleConnections()

	m.setPhase("register")
	for i, name := range names {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, o.Target+"/api/v1/machines/"+name, bytes.NewReader([]byte(oeeSpec(i%20))))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("registering %s: %w", name, err)
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("registering %s: %s: %s", name, resp.Status, msg)
		}
	}

	// Preload: worker w posts the history of machines w, w+W, … in event
	// time order, Batch events a request.
	m.setPhase("preload")
	p := newPoster(o, formatJSON, m)
	defer p.close()
	const every = 10 * time.Second
	end := time.Now().Truncate(every).Add(-every)
	first := end.Add(-o.History + every)
	n := int(o.History / every)
	preloadStart := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, o.Workers)
	for w := range o.Workers {
		wg.Go(func() {
			var buf []byte
			for h := w; h < len(names); h += o.Workers {
				rng := rand.New(rand.NewPCG(uint64(h), 7))
				state, until := "RUNNING", 0
				total, good := 0, 0
				for i := 0; i < n && ctx.Err() == nil; i += o.Batch {
					cnt := min(o.Batch, n-i)
					buf = append(buf[:0], '[')
					for j := range cnt {
						k := i + j
						if k >= until { // a new state for 1 to 30 minutes
							switch x := rng.IntN(10); {
							case x < 7:
								state = "RUNNING"
							case x < 9:
								state = "IDLE"
							default:
								state = "DOWN"
							}
							until = k + 6 + rng.IntN(180)
						}
						if state == "RUNNING" {
							made := 3 + rng.IntN(2)
							total += made
							good += made - rng.IntN(2)*rng.IntN(2)
						}
						if j > 0 {
							buf = append(buf, ',')
						}
						buf = fmt.Appendf(buf, `{"machineId":%q,"timestamp":%d,"state":%q,"parts_total":%d,"parts_good":%d}`,
							names[h], first.Add(time.Duration(k)*every).UnixMilli(), state, total, good)
					}
					buf = append(buf, ']')
					if err := postAll(ctx, p, w, buf, cnt); err != nil {
						errc <- err
						return
					}
				}
			}
		})
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
	r.Notes = append(r.Notes, fmt.Sprintf("preloaded %s events (two part counters and a state each) in %.1f s",
		FormatCount(float64(r.Ingest.Events)), preload.Seconds()))

	from, to := strconv.FormatInt(first.UnixMilli(), 10), strconv.FormatInt(end.UnixMilli()+1, 10)
	fleet := "/api/v1/oee?site=bench&from=" + from + "&to=" + to + "&step=1h"
	machine := "/api/v1/oee?machine=" + names[0] + "&from=" + from + "&to=" + to + "&step=1h"
	return runQueries(ctx, o, r, m, []queryKind{
		{"oee-fleet", func(int) string { return fleet }, false},
		{"oee-machine", func(int) string { return machine }, false},
	})
}
