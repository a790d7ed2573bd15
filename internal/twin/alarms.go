package twin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/twinline/twinline/internal/telemetry"
)

// Alarm states.
const (
	AlarmActive  = "active"
	AlarmCleared = "cleared"
)

// ErrConflict reports an action that the alarm's state does not allow.
var ErrConflict = errors.New("conflict")

// maxClearedInMemory bounds the cleared alarms kept in memory for listing;
// the journal on disk keeps every change.
const maxClearedInMemory = 10_000

// Alarm is one occurrence of an alarm condition of a machine: raised,
// perhaps cleared, perhaps acknowledged (states active/cleared ×
// acknowledged or not).
type Alarm struct {
	ID      string `json:"id"`
	Machine string `json:"machine"`
	// Metric is empty for an offline alarm.
	Metric string `json:"metric,omitempty"`
	Kind   string `json:"kind"` // high, low, offline
	// Limit and Value: the threshold and the value that crossed it.
	Limit     *float64   `json:"limit,omitempty"`
	Value     *float64   `json:"value,omitempty"`
	State     string     `json:"state"`
	RaisedAt  time.Time  `json:"raisedAt"`
	ClearedAt *time.Time `json:"clearedAt,omitempty"`
	Acked     bool       `json:"acknowledged"`
	AckedAt   *time.Time `json:"acknowledgedAt,omitempty"`
	AckedBy   string     `json:"acknowledgedBy,omitempty"`
	AckNote   string     `json:"acknowledgeNote,omitempty"`
}

// ruleState is the evaluation state of one threshold rule.
type ruleState struct {
	th    Threshold
	rules []Rule
	open  []string // id of the active alarm of rules[i], or ""
}

// Alarms evaluates threshold and offline alarms, keeps them, and journals
// every change (raise, clear, acknowledge) to an AlarmStore (by default an
// append-only JSON-lines file), made durable once per call, from which they
// come back after a restart.
type Alarms struct {
	offlineAfter time.Duration
	logger       *slog.Logger

	mu       sync.Mutex
	store    AlarmStore
	outbox   AlarmOutbox
	onChange func(Alarm, bool)
	seq      uint64
	alarms   map[string]*Alarm // active ones, and the latest cleared ones
	// activeBy counts the active alarms of each machine; alarmedBy those
	// other than the offline alarm (see Alarmed).
	activeBy, alarmedBy map[string]int
	cleared             []string // ids of cleared alarms, oldest first
	// rules by machine then metric; offline by machine.
	rules   map[string]map[string]*ruleState
	offline map[string]*offlineState
}

type offlineState struct {
	eval Offline
	open string // id of the active offline alarm, or ""
}

// OpenAlarms opens (creating it if needed) the journal at path and restores
// the alarms it records: an alarm active before a restart is active again.
// Run logs nothing.
func OpenAlarms(path string, offlineAfter time.Duration) (*Alarms, error) {
	s := NewAlarmFile(path)
	a, err := NewAlarms(context.Background(), s, offlineAfter, slog.New(slog.DiscardHandler))
	if err != nil {
		s.Close()
		return nil, err
	}
	return a, nil
}

// NewAlarms replays the journal of s and restores the alarms it records: an
// alarm active before a restart is active again. Close closes s. Run logs
// the journaling errors of the offline alarms it raises to logger.
func NewAlarms(ctx context.Context, s AlarmStore, offlineAfter time.Duration, logger *slog.Logger) (*Alarms, error) {
	a := &Alarms{
		offlineAfter: offlineAfter,
		logger:       logger,
		store:        s,
		alarms:       map[string]*Alarm{}, activeBy: map[string]int{}, alarmedBy: map[string]int{}, rules: map[string]map[string]*ruleState{}, offline: map[string]*offlineState{},
	}
	err := s.Replay(ctx, func(e AlarmEntry) error {
		al := e.Alarm
		if s, err := strconv.ParseUint(al.ID, 10, 64); err == nil {
			a.seq = max(a.seq, s)
		}
		if e.Op != OpSeq {
			a.keep(&al)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("restoring alarms: %w", err)
	}
	// A journal written before compaction existed, or grown since the last
	// one, is compacted now: the next start replays the snapshot.
	if err := a.compact(ctx); err != nil {
		return nil, fmt.Errorf("restoring alarms: %w", err)
	}
	// Active alarms resume their evaluation state.
	for _, al := range a.alarms {
		if al.State != AlarmActive {
			continue
		}
		if al.Kind == AlarmOffline {
			st := a.offlineOf(al.Machine)
			st.eval.active, st.open = true, al.ID
		}
	}
	return a, nil
}

// keep records al as the latest state of its alarm; a.mu must be held (or
// the Alarms not yet shared).
func (a *Alarms) keep(al *Alarm) {
	prev, ok := a.alarms[al.ID]
	if ok && prev.State == AlarmActive {
		decrement(a.activeBy, prev.Machine)
		if prev.Kind != AlarmOffline {
			decrement(a.alarmedBy, prev.Machine)
		}
	}
	if al.State == AlarmActive {
		a.activeBy[al.Machine]++
		if al.Kind != AlarmOffline {
			a.alarmedBy[al.Machine]++
		}
	}
	a.alarms[al.ID] = al
	if al.State == AlarmCleared && (!ok || prev.State != AlarmCleared) {
		a.cleared = append(a.cleared, al.ID)
		if len(a.cleared) > maxClearedInMemory {
			drop := a.cleared[0]
			a.cleared = a.cleared[1:]
			if old := a.alarms[drop]; old != nil && old.State == AlarmCleared {
				delete(a.alarms, drop)
			}
		}
	}
}

// decrement counts one less for key, dropping it at zero.
func decrement(m map[string]int, key string) {
	if m[key]--; m[key] <= 0 {
		delete(m, key)
	}
}

func (a *Alarms) offlineOf(machine string) *offlineState {
	st := a.offline[machine]
	if st == nil {
		st = &offlineState{eval: Offline{After: a.offlineAfter}}
		a.offline[machine] = st
	}
	return st
}

// journal appends a change; a.mu must be held. The store is synced once
// per public call (a.sync), not per change: an outage taking many machines
// offline costs one fsync (or one transaction).
func (a *Alarms) journal(op, by string, at time.Time, al *Alarm) error {
	e := AlarmEntry{Op: op, At: at, By: by, Alarm: *al}
	if err := a.store.Append(context.Background(), e); err != nil {
		return err
	}
	if a.outbox != nil {
		a.outbox.Add(e)
	}
	return nil
}

// AlarmOutbox receives every alarm change this process journals (not the
// ones Apply records: their replica journaled them), in order, to deliver
// them elsewhere. Add is called with the Alarms' lock held, after the
// journal took the change; Sync after the journal's own sync, before the
// call that made the changes returns, so a change is in the outbox before
// it is reported done.
type AlarmOutbox interface {
	Add(AlarmEntry)
	Sync(ctx context.Context) error
}

// SetOutbox sets the outbox of the alarm changes (nil: none).
func (a *Alarms) SetOutbox(o AlarmOutbox) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.outbox = o
}

// sync makes the journaled changes durable, then compacts the journal if
// it is due; a.mu must be held.
func (a *Alarms) sync() error {
	ctx := context.Background()
	if err := a.store.Sync(ctx); err != nil {
		return err
	}
	if a.outbox != nil {
		if err := a.outbox.Sync(ctx); err != nil {
			return err
		}
	}
	return a.compact(ctx)
}

// compact replaces the journal by a snapshot of the alarms kept, if the
// store compacts and the journal has grown past a few times that; a.mu
// must be held (or the Alarms not yet shared), and the journal synced.
// The cost, O(alarms kept), is paid once per alarmCompactFactor times as
// many changes: amortised O(1) per change.
func (a *Alarms) compact(ctx context.Context) error {
	c, ok := a.store.(AlarmCompactor)
	if !ok || !c.CompactDue(len(a.alarms)) {
		return nil
	}
	if err := c.Compact(ctx, a.snapshot()); err != nil {
		return fmt.Errorf("compacting alarm journal: %w", err)
	}
	return nil
}

// snapshot returns journal entries that restore the alarms' state when
// replayed: the numbering, the cleared alarms in the order they were
// cleared (so the same ones drop out first), then the active ones by id;
// a.mu must be held.
func (a *Alarms) snapshot() []AlarmEntry {
	out := make([]AlarmEntry, 0, len(a.alarms)+1)
	out = append(out, AlarmEntry{Op: OpSeq, Alarm: Alarm{ID: strconv.FormatUint(a.seq, 10)}})
	entry := func(al *Alarm) AlarmEntry {
		at := al.RaisedAt
		for _, t := range []*time.Time{al.ClearedAt, al.AckedAt} {
			if t != nil && t.After(at) {
				at = *t
			}
		}
		return AlarmEntry{Op: OpSnapshot, At: at, Alarm: *al}
	}
	for _, id := range a.cleared {
		if al := a.alarms[id]; al != nil && al.State == AlarmCleared {
			out = append(out, entry(al))
		}
	}
	var active []*Alarm
	for _, al := range a.alarms {
		if al.State == AlarmActive {
			active = append(active, al)
		}
	}
	slices.SortFunc(active, func(x, y *Alarm) int {
		xi, _ := strconv.ParseUint(x.ID, 10, 64)
		yi, _ := strconv.ParseUint(y.ID, 10, 64)
		return cmp.Compare(xi, yi)
	})
	for _, al := range active {
		out = append(out, entry(al))
	}
	return out
}

// changed reports a change to the OnChange callback, under a.mu, so that
// callbacks come in the order of the changes.
func (a *Alarms) changed(al *Alarm) {
	if a.onChange != nil {
		a.onChange(*al, a.alarmedBy[al.Machine] > 0)
	}
}

// OnChange sets the function told of every alarm change (raise, clear,
// acknowledge), in order, with whether the machine is still in alarm after
// it (Alarmed: an active alarm other than the offline one). It is called
// with the Alarms' lock held: it must not call back into the Alarms, and
// should not block.
func (a *Alarms) OnChange(fn func(al Alarm, alarmed bool)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.onChange = fn
}

// Expect starts the offline clocks of known machines at server time now,
// as if they had just been seen: after a restart, a machine that stays
// silent raises its offline alarm once --offline-after has passed.
func (a *Alarms) Expect(machines []string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range machines {
		st := a.offlineOf(m)
		if st.eval.lastSeen == 0 {
			st.eval.lastSeen = now.UnixMilli()
		}
	}
}

// Seen records that the machines of samples sent data at server time
// received (Unix ms): it clears their offline alarms, which it returns.
func (a *Alarms) Seen(samples []telemetry.Sample, received int64) ([]Alarm, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var (
		out  []Alarm
		errs []error
	)
	machine := ""
	for i := range samples {
		if i > 0 && samples[i].Machine == machine {
			continue
		}
		machine = samples[i].Machine
		st := a.offlineOf(machine)
		if st.eval.Seen(received) != Cleared {
			continue
		}
		al, err := a.clear(st.open, time.UnixMilli(received))
		if err != nil {
			st.eval.active = true // the next event tries again
			errs = append(errs, err)
			continue
		}
		st.open = ""
		if al != nil {
			out = append(out, *al)
		}
	}
	errs = append(errs, a.sync())
	return out, errors.Join(errs...)
}

// Observe evaluates the threshold rules of the samples' machines (from
// thresholds, the machine's registry entry); samples must come per machine
// in event-time order. An active alarm whose rule went away (the threshold
// or its high or low limit was removed) is cleared by the machine's next
// sample of that metric. It returns the alarms that changed.
func (a *Alarms) Observe(samples []telemetry.Sample, thresholds func(machine string) map[string]Threshold) ([]Alarm, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var (
		out     []Alarm
		errs    []error
		machine string
		ths     map[string]Threshold
	)
	keep := func(al *Alarm, err error) {
		if err != nil {
			errs = append(errs, err)
		} else if al != nil {
			out = append(out, *al)
		}
	}
	for i := range samples {
		s := &samples[i]
		if i == 0 || s.Machine != machine {
			machine = s.Machine
			ths = thresholds(machine)
		}
		th, ok := ths[s.Metric]
		if !ok {
			if byMetric := a.rules[machine]; byMetric != nil {
				if rs := byMetric[s.Metric]; rs != nil {
					for _, id := range rs.open {
						keep(a.clear(id, time.UnixMilli(s.Time)))
					}
					delete(byMetric, s.Metric)
				}
			}
			continue
		}
		rs := a.ruleStateOf(machine, s.Metric, th, time.UnixMilli(s.Time), keep)
		for j := range rs.rules {
			r := &rs.rules[j]
			switch r.Observe(s.Time, s.Value) {
			case Raised:
				limit, v := r.Limit, s.Value
				al := &Alarm{Machine: machine, Metric: s.Metric, Kind: r.Kind, Limit: &limit, Value: &v,
					State: AlarmActive, RaisedAt: time.UnixMilli(s.Time).UTC()}
				if err := a.raise(al); err != nil {
					// Not journaled: the breach raises again next sample.
					r.active, r.pending, r.since = false, true, s.Time-r.For.Milliseconds()
					errs = append(errs, err)
					continue
				}
				rs.open[j] = al.ID
				out = append(out, *al)
			case Cleared:
				al, err := a.clear(rs.open[j], time.UnixMilli(s.Time))
				if err != nil {
					r.active = true // still active: the next sample tries again
					errs = append(errs, err)
					continue
				}
				rs.open[j] = ""
				if al != nil {
					out = append(out, *al)
				}
			}
		}
	}
	errs = append(errs, a.sync())
	return out, errors.Join(errs...)
}

// ruleStateOf returns the rules of one metric, rebuilt when the threshold
// changed (or first used since a restart). An active alarm carries over to
// the new rule of its kind; one whose kind is gone is cleared at time at.
func (a *Alarms) ruleStateOf(machine, metric string, th Threshold, at time.Time, keep func(*Alarm, error)) *ruleState {
	byMetric := a.rules[machine]
	if byMetric == nil {
		byMetric = map[string]*ruleState{}
		a.rules[machine] = byMetric
	}
	rs := byMetric[metric]
	if rs != nil && sameThreshold(rs.th, th) {
		return rs
	}
	rules, err := Rules(th) // validated on registry writes
	if err != nil {
		rules = nil
	}
	next := &ruleState{th: th, rules: rules, open: make([]string, len(rules))}
	// The active alarms of this metric: from the old rules, or after a
	// restart from the journal.
	open := map[string]string{} // kind → id
	if rs != nil {
		for k, id := range rs.open {
			if id != "" {
				open[rs.rules[k].Kind] = id
			}
		}
	} else {
		for _, al := range a.alarms {
			if al.State == AlarmActive && al.Machine == machine && al.Metric == metric {
				open[al.Kind] = al.ID
			}
		}
	}
	for j := range next.rules {
		if id := open[next.rules[j].Kind]; id != "" {
			next.rules[j].active, next.open[j] = true, id
			delete(open, next.rules[j].Kind)
		}
	}
	for _, id := range open {
		keep(a.clear(id, at))
	}
	byMetric[metric] = next
	return next
}

func sameThreshold(x, y Threshold) bool {
	eq := func(p, q *float64) bool { return (p == nil) == (q == nil) && (p == nil || *p == *q) }
	return eq(x.High, y.High) && eq(x.Low, y.Low) && x.Deadband == y.Deadband && x.For == y.For
}

// raise numbers, journals and keeps a new active alarm; a.mu must be held.
func (a *Alarms) raise(al *Alarm) error {
	if n, ok := a.store.(AlarmNumberer); ok {
		id, err := n.NextAlarmID(context.Background())
		if err != nil {
			return fmt.Errorf("numbering alarm: %w", err)
		}
		a.seq = max(a.seq, id)
		al.ID = strconv.FormatUint(id, 10)
	} else {
		a.seq++
		al.ID = strconv.FormatUint(a.seq, 10)
	}
	if err := a.journal(OpRaise, "", al.RaisedAt, al); err != nil {
		return err
	}
	a.keep(al)
	a.changed(al)
	return nil
}

// clear clears the active alarm id (if any) at time at; a.mu must be held.
func (a *Alarms) clear(id string, at time.Time) (*Alarm, error) {
	old := a.alarms[id]
	if id == "" || old == nil || old.State != AlarmActive {
		return nil, nil
	}
	al := *old
	at = at.UTC()
	al.State, al.ClearedAt = AlarmCleared, &at
	if err := a.journal(OpClear, "", at, &al); err != nil {
		return nil, err
	}
	a.keep(&al)
	a.changed(&al)
	return &al, nil
}

// Forget clears the active alarms of a deleted machine and drops its
// evaluation state.
func (a *Alarms) Forget(machine string, at time.Time) ([]Alarm, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var (
		out  []Alarm
		errs []error
	)
	for _, al := range a.alarms {
		if al.Machine != machine || al.State != AlarmActive {
			continue
		}
		c, err := a.clear(al.ID, at)
		if err != nil {
			errs = append(errs, err)
		} else if c != nil {
			out = append(out, *c)
		}
	}
	delete(a.rules, machine)
	delete(a.offline, machine)
	errs = append(errs, a.sync())
	return out, errors.Join(errs...)
}

// Tick raises offline alarms at server time now and returns them.
func (a *Alarms) Tick(now time.Time) ([]Alarm, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var (
		out  []Alarm
		errs []error
	)
	for machine, st := range a.offline {
		if st.eval.Tick(now.UnixMilli()) != Raised {
			continue
		}
		al := &Alarm{Machine: machine, Kind: AlarmOffline, State: AlarmActive, RaisedAt: now.UTC()}
		if err := a.raise(al); err != nil {
			st.eval.active = false // raise again next tick
			errs = append(errs, err)
			continue
		}
		st.open = al.ID
		out = append(out, *al)
	}
	errs = append(errs, a.sync())
	return out, errors.Join(errs...)
}

// OfflineTick is how often Run checks the machines for silence.
const OfflineTick = time.Second

// Run raises offline alarms every OfflineTick until ctx ends: a machine
// expected (Expect) or seen (Seen) that stays silent for --offline-after
// gets its offline alarm. Run it where data is processed: a replica that
// sees none would take every machine for offline. A journaling error is
// logged, and the alarm raised again on the next tick.
func (a *Alarms) Run(ctx context.Context) error {
	t := time.NewTicker(OfflineTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if _, err := a.Tick(now); err != nil {
				a.logger.Error("journaling alarms", "err", err)
			}
		}
	}
}

// Get returns the alarm id, if it is kept (active, or recently cleared).
func (a *Alarms) Get(id string) (Alarm, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if al := a.alarms[id]; al != nil {
		return *al, true
	}
	return Alarm{}, false
}

// Ack acknowledges an alarm, active or cleared.
func (a *Alarms) Ack(id, by, note string, now time.Time) (Alarm, error) {
	if utf8.RuneCountInString(by) > maxNoteAuthor || utf8.RuneCountInString(note) > maxNoteText {
		return Alarm{}, fmt.Errorf("%w: by is at most %d characters, note at most %d", ErrInvalid, maxNoteAuthor, maxNoteText)
	}
	if p := textProblem(by); p != "" {
		return Alarm{}, fmt.Errorf("%w: by %s", ErrInvalid, p)
	}
	if p := textProblem(note); p != "" {
		return Alarm{}, fmt.Errorf("%w: note %s", ErrInvalid, p)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.alarms[id]
	if old == nil {
		return Alarm{}, fmt.Errorf("%w: alarm %q", ErrNotFound, id)
	}
	if old.Acked {
		return Alarm{}, fmt.Errorf("%w: alarm %s was acknowledged by %q at %s", ErrConflict, id, old.AckedBy, old.AckedAt.Format(time.RFC3339))
	}
	al := *old
	now = now.UTC()
	al.Acked, al.AckedAt, al.AckedBy, al.AckNote = true, &now, by, note
	if err := a.journal(OpAck, by, now, &al); err != nil {
		return Alarm{}, err
	}
	if err := a.sync(); err != nil {
		return Alarm{}, err
	}
	a.keep(&al)
	a.changed(&al)
	return al, nil
}

// Apply records the state of an alarm another replica raised, cleared or
// acknowledged (and journaled): this replica's list shows it, and its own
// acknowledgement of it is possible. States only move forward — an alarm
// cleared or acknowledged here stays so — and nothing is journaled or
// reported to OnChange: the other replica did both.
func (a *Alarms) Apply(al Alarm) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.alarms[al.ID]; old != nil {
		merged := *old
		if al.State == AlarmCleared && merged.State != AlarmCleared {
			merged.State, merged.ClearedAt = AlarmCleared, al.ClearedAt
		}
		if al.Acked && !merged.Acked {
			merged.Acked, merged.AckedAt, merged.AckedBy, merged.AckNote = true, al.AckedAt, al.AckedBy, al.AckNote
		}
		al = merged
	}
	a.keep(&al)
	// Adopt another replica's offline alarm: not raised twice here, and
	// cleared here too when the machine is seen again.
	if al.Kind == AlarmOffline {
		st := a.offlineOf(al.Machine)
		switch {
		case al.State == AlarmActive && st.open == "":
			st.open, st.eval.active = al.ID, true
		case al.State == AlarmCleared && st.open == al.ID:
			st.open, st.eval.active = "", false
		}
	}
}

// List returns the alarms, newest first: only active ones unless all, of
// one machine unless machine is "".
func (a *Alarms) List(all bool, machine string) []Alarm {
	a.mu.Lock()
	out := make([]Alarm, 0, len(a.alarms))
	for _, al := range a.alarms {
		if (all || al.State == AlarmActive) && (machine == "" || al.Machine == machine) {
			out = append(out, *al)
		}
	}
	a.mu.Unlock()
	slices.SortFunc(out, func(x, y Alarm) int {
		xi, _ := strconv.ParseUint(x.ID, 10, 64)
		yi, _ := strconv.ParseUint(y.ID, 10, 64)
		return cmp.Compare(yi, xi)
	})
	return out
}

// Active reports whether machine has an active alarm.
func (a *Alarms) Active(machine string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.activeBy[machine] > 0
}

// Alarmed reports whether machine is in alarm: it has an active alarm
// other than the offline one. Being offline is liveness, which the twin's
// status shows; a machine may be offline and in alarm at once.
func (a *Alarms) Alarmed(machine string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.alarmedBy[machine] > 0
}

// Close closes the store.
func (a *Alarms) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.store.Close()
}
