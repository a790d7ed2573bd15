package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Control is the server side of the twin as a simulated device sees it:
// its desired document, its reported document and its commands. The HTTP
// implementation (NewHTTPControl) serves `twinline simulate`; the
// in-process demo binds ControlFuncs to the server's twins and commands.
type Control interface {
	// Desired returns the machine's desired document once its version is
	// past after, or — when it does not change for a while (a long-poll
	// timeout) — the current one, whose version may be after itself.
	Desired(ctx context.Context, machine string, after uint64) (version uint64, desired map[string]any, err error)
	// Report merges patch (RFC 7396) into the machine's reported document.
	Report(ctx context.Context, machine string, patch map[string]any) error
	// Commands returns the machine's pending commands and marks them
	// delivered, waiting up to wait for one to come.
	Commands(ctx context.Context, machine string, wait time.Duration) ([]Cmd, error)
	// Respond answers a command: state is accepted, rejected, succeeded or
	// failed.
	Respond(ctx context.Context, machine, id, state string, result any, reason string) error
}

// Cmd is a command a device received.
type Cmd struct {
	ID     string
	Name   string
	Params map[string]any
}

// ControlFuncs is a Control made of functions, to bind one in-process.
type ControlFuncs struct {
	DesiredFunc  func(ctx context.Context, machine string, after uint64) (uint64, map[string]any, error)
	ReportFunc   func(ctx context.Context, machine string, patch map[string]any) error
	CommandsFunc func(ctx context.Context, machine string, wait time.Duration) ([]Cmd, error)
	RespondFunc  func(ctx context.Context, machine, id, state string, result any, reason string) error
}

// Desired calls DesiredFunc.
func (f ControlFuncs) Desired(ctx context.Context, machine string, after uint64) (uint64, map[string]any, error) {
	return f.DesiredFunc(ctx, machine, after)
}

// Report calls ReportFunc.
func (f ControlFuncs) Report(ctx context.Context, machine string, patch map[string]any) error {
	return f.ReportFunc(ctx, machine, patch)
}

// Commands calls CommandsFunc.
func (f ControlFuncs) Commands(ctx context.Context, machine string, wait time.Duration) ([]Cmd, error) {
	return f.CommandsFunc(ctx, machine, wait)
}

// Respond calls RespondFunc.
func (f ControlFuncs) Respond(ctx context.Context, machine, id, state string, result any, reason string) error {
	return f.RespondFunc(ctx, machine, id, state, result, reason)
}

// Command answers.
const (
	Accepted  = "accepted"
	Rejected  = "rejected"
	Succeeded = "succeeded"
	Failed    = "failed"
)

// Commands the simulated machines understand.
const (
	cmdStop  = "stop"
	cmdStart = "start"
	cmdReset = "reset"
)

// FirmwareVersion is what the simulated machines report as "fw".
const FirmwareVersion = "sim-1"

// ControlConfig configures the device side of a Simulator. A zero field
// takes its default.
type ControlConfig struct {
	// Machines is how many machines — the first ones — follow their
	// desired document and take commands. Each costs two goroutines (one
	// long-poll for its desired document, one for its commands), so the
	// device side of a large fleet is a bounded subset of it. 0 is all of
	// the fleet, up to MaxControlMachines.
	Machines int
	// Wait is how long a command long-poll waits for a command (default
	// 30s); Control.Desired keeps its own.
	Wait time.Duration
	// Apply bounds how long a command waits for its machine's next event to
	// carry it out (default 30s; a silent machine does not): past it the
	// command fails.
	Apply time.Duration
	// Retry is the pause after a Control error and between two polls that
	// brought nothing (default 1s), so a Control that does not block
	// cannot make a device spin.
	Retry time.Duration
}

// Defaults and limits of ControlConfig.
const (
	DefaultControlWait  = 30 * time.Second
	DefaultControlApply = 30 * time.Second
	DefaultControlRetry = time.Second
	MaxControlMachines  = 1000
)

func (c ControlConfig) withDefaults(fleet int) ControlConfig {
	if c.Machines == 0 || c.Machines > fleet {
		c.Machines = fleet
	}
	c.Machines = min(c.Machines, MaxControlMachines)
	if c.Wait <= 0 {
		c.Wait = DefaultControlWait
	}
	if c.Apply <= 0 {
		c.Apply = DefaultControlApply
	}
	if c.Retry <= 0 {
		c.Retry = DefaultControlRetry
	}
	return c
}

// Validate reports every problem of c at once, joined.
func (c ControlConfig) Validate() error {
	var errs []error
	if c.Machines < 0 || c.Machines > MaxControlMachines {
		errs = append(errs, fmt.Errorf("control-machines: must be between 0 and %d, got %d", MaxControlMachines, c.Machines))
	}
	for name, d := range map[string]time.Duration{"control-wait": c.Wait, "control-apply": c.Apply, "control-retry": c.Retry} {
		if d < 0 || d > 10*time.Minute {
			errs = append(errs, fmt.Errorf("%s: must be between 0 and 10m, got %s", name, d))
		}
	}
	return errors.Join(errs...)
}

// RunControl runs the device side of the first cfg.Machines machines
// against ctl until ctx ends, and returns nil then: each follows its
// desired document — tempSetpoint and mode — and reports what it applied,
// and carries out its commands: accepted at once, then succeeded or failed
// when the machine's next event carried it out; unknown ones are rejected.
// Errors of ctl are logged and retried. It may run beside Run, before it
// or after it; the commands take effect while Run runs.
func (s *Simulator) RunControl(ctx context.Context, ctl Control, cfg ControlConfig, logger *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("validating device config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults(len(s.fleet.machines))
	logger = logger.With("component", "sim_device")
	var wg sync.WaitGroup
	for _, m := range s.fleet.machines[:cfg.Machines] {
		d := &device{m: m, ctl: ctl, cfg: cfg, logger: logger.With("machine", m.id)}
		wg.Go(func() { d.followDesired(ctx) })
		wg.Go(func() { d.takeCommands(ctx) })
	}
	wg.Wait()
	return nil
}

// device is the device side of one machine.
type device struct {
	m      *machine
	ctl    Control
	cfg    ControlConfig
	logger *slog.Logger
}

// pause waits d or until ctx ends, and reports whether ctx is still alive.
func pause(ctx context.Context, d time.Duration) bool {
	return sleepCtx(ctx, d) == nil
}

// maxControlBackoff caps the pause after errors in a row.
const maxControlBackoff = 30 * time.Second

// failures paces one device loop through errors in a row (a server
// without the control routes, one that is down): the pause doubles from
// ControlConfig.Retry up to 30s, and only the first error of a streak is
// logged as a warning.
type failures struct {
	n int
}

// failed logs err and pauses; it reports whether ctx is still alive.
func (f *failures) failed(ctx context.Context, d *device, msg string, err error, attrs ...any) bool {
	f.n++
	attrs = append(attrs, "err", err, "in_a_row", f.n)
	if f.n == 1 {
		d.logger.Warn(msg, attrs...)
	} else {
		d.logger.Debug(msg, attrs...)
	}
	return pause(ctx, min(d.cfg.Retry<<min(f.n-1, 16), maxControlBackoff))
}

func (f *failures) ok() { f.n = 0 }

// followDesired reports the machine's boot state — mode auto, no
// setpoint, its firmware — then long-polls its desired document, hands
// each new version to the machine and reports what it applied.
func (d *device) followDesired(ctx context.Context) {
	var f failures
	boot := map[string]any{"mode": ModeAuto, "tempSetpoint": nil, "fw": FirmwareVersion}
	for {
		err := d.ctl.Report(ctx, d.m.id, boot)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			break
		}
		if !f.failed(ctx, d, "reporting the twin at boot", err) {
			return
		}
	}
	f.ok()
	var version uint64
	for ctx.Err() == nil {
		v, desired, err := d.ctl.Desired(ctx, d.m.id, version)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			f.failed(ctx, d, "polling the desired twin", err)
			continue
		}
		if v <= version {
			f.ok()
			pause(ctx, d.cfg.Retry) // no change before the long-poll ended
			continue
		}
		patch := d.applyDesired(desired)
		if err := d.ctl.Report(ctx, d.m.id, patch); err != nil {
			if ctx.Err() != nil {
				return
			}
			// Applied but not reported: report again after a pause.
			f.failed(ctx, d, "reporting the twin", err, "version", v)
			continue
		}
		f.ok()
		version = v
	}
}

// applyDesired hands the desired settings to the machine and returns the
// reported patch saying what it applied: a tempSetpoint out of range is
// clamped, one that is not a number is ignored (reported null), a mode
// other than auto and manual leaves auto.
func (d *device) applyDesired(desired map[string]any) map[string]any {
	sp, hasSP := desired["tempSetpoint"].(float64)
	if hasSP {
		sp = min(max(sp, MinSetpoint), MaxSetpoint)
	}
	mode := ModeAuto
	if desired["mode"] == ModeManual {
		mode = ModeManual
	}
	d.m.in.setDesired(hasSP, sp, mode)
	patch := map[string]any{"mode": mode, "tempSetpoint": nil}
	if hasSP {
		patch["tempSetpoint"] = sp
	}
	return patch
}

// takeCommands long-polls the machine's commands and carries them out one
// after another.
func (d *device) takeCommands(ctx context.Context) {
	var f failures
	for ctx.Err() == nil {
		cmds, err := d.ctl.Commands(ctx, d.m.id, d.cfg.Wait)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			f.failed(ctx, d, "polling commands", err)
			continue
		}
		f.ok()
		switch {
		case len(cmds) == 0:
			pause(ctx, d.cfg.Retry)
			continue
		}
		for _, c := range cmds {
			if ctx.Err() != nil {
				return
			}
			d.execute(ctx, c)
		}
	}
}

// execute carries out one command and answers it.
func (d *device) execute(ctx context.Context, c Cmd) {
	respond := func(state string, result any, reason string) bool {
		err := d.ctl.Respond(ctx, d.m.id, c.ID, state, result, reason)
		if err != nil && ctx.Err() == nil {
			d.logger.Warn("answering a command", "command", c.ID, "name", c.Name, "state", state, "err", err)
		}
		return err == nil
	}
	if reason := refuse(c); reason != "" {
		respond(Rejected, nil, reason)
		return
	}
	if !respond(Accepted, nil, "") {
		return // expired or answered meanwhile: leave it
	}
	done := make(chan opResult, 1)
	d.m.in.push(op{name: c.Name, done: done})
	timer := time.NewTimer(d.cfg.Apply)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
		if d.m.in.cancel(done) {
			respond(Failed, nil, fmt.Sprintf("the machine did not carry it out within %s", d.cfg.Apply))
			return
		}
		d.report(c, <-done, respond) // carried out just now
	case r := <-done:
		d.report(c, r, respond)
	}
}

// report answers a command its machine carried out.
func (d *device) report(c Cmd, r opResult, respond func(state string, result any, reason string) bool) {
	if r.Err != "" {
		respond(Failed, map[string]any{"state": r.State}, r.Err)
		return
	}
	result := map[string]any{"state": r.State}
	if c.Name == cmdReset {
		result["counter"] = "parts"
	}
	respond(Succeeded, result, "")
}

// refuse says why a command is rejected, or "".
func refuse(c Cmd) string {
	switch c.Name {
	case cmdStop, cmdStart:
		return ""
	case cmdReset:
		if v, ok := c.Params["counter"]; ok && v != "parts" {
			return fmt.Sprintf("reset: unknown counter %v (only \"parts\")", v)
		}
		return ""
	}
	return fmt.Sprintf("unknown command %q (stop, start, reset)", c.Name)
}
