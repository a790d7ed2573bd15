package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// part is one piece of the running platform, as a start/stop pair.
type part struct {
	// name says what stopping the part does ("draining the event log"):
	// a stop that outlasts the deadline is reported under it.
	name string
	// run runs the part until its context ends or stop makes it return;
	// nil: nothing runs (the part only releases something, in stop). An
	// error from run before the shutdown starts the shutdown.
	run func(ctx context.Context) error
	// stop makes run return, or releases what the part holds, within
	// ctx's deadline; nil: run's context is cancelled.
	stop func(ctx context.Context) error
}

// minStageGrace is the least time a stage is given to stop, even once
// the shutdown deadline has passed: the event log's drain gets a moment
// after clients took the whole deadline.
const minStageGrace = time.Second

// runGroup runs the parts of the platform together and stops them stage
// by stage, in the order the stages were added: the parts of one stage
// are stopped at once, and the next stage only once every run of this one
// has returned. It is oklog/run's actor list with an order on shutdown
// (oklog/run interrupts every actor at once), which the platform needs:
// clients drain before the event log, the log before the stores close.
type runGroup struct {
	stages [][]part
	// started is called once every run has been started; stopping when
	// the shutdown starts. Either may be nil.
	started, stopping func()
}

// add appends a stage of parts stopping together.
func (g *runGroup) add(parts ...part) {
	if len(parts) > 0 {
		g.stages = append(g.stages, parts)
	}
}

// running is a part's run under way.
type running struct {
	cancel context.CancelFunc // nil without run
	done   chan struct{}      // closed when run returned
	err    error              // run's result, once done
}

// run runs every part until ctx ends or a run fails, then stops the
// stages in order, all within one deadline, timeout from the start of the
// shutdown. It returns the errors of the runs, the stops and the stages
// that outlasted the deadline, joined.
func (g *runGroup) run(ctx context.Context, timeout time.Duration) error {
	base := context.WithoutCancel(ctx)
	failed := make(chan struct{}, 1)
	runs := make([][]*running, len(g.stages))
	for i, stage := range g.stages {
		runs[i] = make([]*running, len(stage))
		for j, p := range stage {
			r := &running{done: make(chan struct{})}
			runs[i][j] = r
			if p.run == nil {
				close(r.done)
				continue
			}
			var rctx context.Context
			rctx, r.cancel = context.WithCancel(base)
			go func() {
				defer close(r.done)
				if r.err = p.run(rctx); r.err != nil {
					select {
					case failed <- struct{}{}:
					default:
					}
				}
			}()
		}
	}
	if g.started != nil {
		g.started()
	}
	select {
	case <-ctx.Done():
	case <-failed:
	}
	if g.stopping != nil {
		g.stopping()
	}

	deadline := time.Now().Add(timeout)
	sdCtx, cancel := context.WithDeadline(base, deadline)
	defer cancel()
	var errs []error
	for i, stage := range g.stages {
		stopErrs := make([]error, len(stage))
		var wg sync.WaitGroup
		for j, p := range stage {
			r := runs[i][j]
			wg.Go(func() {
				switch {
				case p.stop != nil:
					stopErrs[j] = p.stop(sdCtx)
				case r.cancel != nil:
					r.cancel()
				}
			})
		}
		wg.Wait()
		errs = append(errs, stopErrs...)
		errs = append(errs, waitStage(stage, runs[i], max(time.Until(deadline), minStageGrace))...)
		for _, r := range runs[i] {
			if r.cancel != nil {
				r.cancel()
			}
			errs = append(errs, r.err)
		}
	}
	return errors.Join(errs...)
}

// waitStage waits for the runs of a stage to return, for at most grace;
// then it cancels those still running, waits for them, and reports each
// as timed out.
func waitStage(stage []part, runs []*running, grace time.Duration) []error {
	timer := time.NewTimer(grace)
	defer timer.Stop()
	for j, r := range runs {
		select {
		case <-r.done:
			continue
		case <-timer.C:
		}
		var errs []error
		for k, r := range runs[j:] {
			select {
			case <-r.done:
			default:
				r.cancel()
				<-r.done
				errs = append(errs, fmt.Errorf("%s: timed out", stage[j+k].name))
			}
		}
		return errs
	}
	return nil
}
