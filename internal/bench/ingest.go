package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// runIngest is the closed-loop ingest scenario: each worker posts its next
// body as soon as the previous one is answered. Worker w owns the machines
// w, w+W, w+2W, …, and each machine's event times go up by 1 ms per event
// from an hour ago, so every event is new (no duplicates) and each
// machine's events arrive in order, as a live sensor's do.
func runIngest(ctx context.Context, o Options, r *Result) error {
	f := formatJSON
	tsbs := o.Scenario == "ingest-lp" && o.LPShape == ShapeTSBSIoT
	switch {
	case tsbs:
		f = formatTSBS
	case o.Scenario == "ingest-lp":
		f = formatLP
	}
	m := newMeter(time.Now())
	rep := startReporter(ctx, o.Progress, o.Terminal, o.Scenario, m, time.Second)
	defer rep.stop()
	p := newPoster(o, f, m)
	defer p.close()

	metrics := metricList(o.Metrics)
	names := machineList(o.Prefix, o.Machines)
	base := time.Now().Add(-time.Hour).UnixMilli()
	var tags []string
	var pairs atomic.Int64 // TSBS: readings/diagnostics pairs handed out
	if tsbs {
		// Trucks report every 10 s: start far enough back that a run of a
		// few million lines stays in the past.
		base = time.Now().Add(-tsbsBacklog).UnixMilli()
		p.metrics = tsbsFieldsPerLine
		tags = make([]string, len(names))
		for i, n := range names {
			tags[i] = tsbsTags(n, i)
		}
	}

	cpu0, cpuErr := serverCPU(o.Server)
	watch := startPhase(ctx, metricsSources(o), o.Token, time.Second)
	m.setPhase("measure")
	start := time.Now()
	deadline := start.Add(o.Duration)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, o.Workers)
	for w := range o.Workers {
		var own []int
		for i := w; i < o.Machines; i += o.Workers {
			own = append(own, i)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := make([]int64, len(own)) // per owned machine: next event time offset
			var buf []byte
			pos := 0
			var i int64
			for time.Now().Before(deadline) && runCtx.Err() == nil {
				var err error
				if tsbs {
					// As tsbs_load_influx reads its file: the batches go
					// out in time order, every truck at one interval
					// before the next, whatever worker sends them.
					first := pairs.Add(int64(o.Batch+1)/2) - int64(o.Batch+1)/2
					buf = tsbsBody(buf, o.Batch, tags, func(j int) (int, int64, int64) {
						p := first + int64(j)
						return int(p % int64(len(tags))), base + p/int64(len(tags))*tsbsInterval, p
					})
					if _, err := p.post(runCtx, w, buf, (o.Batch+1)/2*2); err != nil {
						return
					}
					if err := p.failedOut(m); err != nil {
						errc <- err
						cancel()
						return
					}
					continue
				}
				buf, err = f.body(buf, o.Batch, metrics, func(int) (string, int64, int64) {
					k := pos % len(own)
					pos++
					ts := base + next[k]
					next[k]++
					i++
					return names[own[k]], ts, i
				})
				if err != nil {
					errc <- err
					cancel()
					return
				}
				if _, err := p.post(runCtx, w, buf, o.Batch); err != nil {
					return
				}
				if err := p.failedOut(m); err != nil {
					errc <- err
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var notes []string
	r.Legs, r.Pipeline, notes = watch.finish(context.WithoutCancel(ctx))
	r.Notes = append(r.Notes, notes...)
	m.setPhase("done")
	r.Seconds = elapsed.Seconds()
	r.Ingest = p.result(m, r.Seconds)
	if tsbs {
		r.Notes = append(r.Notes, "line protocol, TSBS iot shape: events are lines (readings and diagnostics in turn), samples are data points (5 fields per line on average)")
	} else if f.path == formatLP.path {
		// Lines are events; points are samples.
		r.Notes = append(r.Notes, "line protocol: events are lines, samples are data points (fields)")
	}
	r.Server = serverResult(o.Server, cpu0, cpuErr, r.Ingest.Samples)
	select {
	case err := <-errc:
		return err
	default:
	}
	return ctx.Err()
}

// serverCPU reads the server's CPU time, when it is known.
func serverCPU(p *Process) (time.Duration, error) {
	if p == nil {
		return 0, nil
	}
	return p.CPU()
}

// serverResult is the server's CPU use since cpu0 and its RSS now; nil when
// the server process is unknown or cannot be read.
func serverResult(p *Process, cpu0 time.Duration, cpuErr error, samples int64) *ServerResult {
	if p == nil || cpuErr != nil {
		return nil
	}
	cpu1, err := p.CPU()
	if err != nil {
		return nil
	}
	s := &ServerResult{PID: p.PID, CPUSeconds: (cpu1 - cpu0).Seconds()}
	if samples > 0 {
		s.CPUPerSample = s.CPUSeconds / float64(samples)
	}
	if rss, err := p.RSS(); err == nil {
		s.RSS = rss
	}
	return s
}
