package twin

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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

// journalEntry is one line of the alarm journal: who did what, when, and
// the alarm as it stood after.
type journalEntry struct {
	Op    string    `json:"op"` // raise, clear, ack
	At    time.Time `json:"at"`
	By    string    `json:"by,omitempty"`
	Alarm Alarm     `json:"alarm"`
}

// ruleState is the evaluation state of one threshold rule.
type ruleState struct {
	th    Threshold
	rules []Rule
	open  []string // id of the active alarm of rules[i], or ""
}

// Alarms evaluates threshold and offline alarms, keeps them, and journals
// every change (raise, clear, acknowledge) to an append-only JSON-lines
// file fsynced per change, from which they come back after a restart.
type Alarms struct {
	offlineAfter time.Duration

	mu     sync.Mutex
	f      *os.File
	seq    uint64
	alarms map[string]*Alarm // active ones, and the latest cleared ones
	// activeBy counts the active alarms of each machine.
	activeBy map[string]int
	cleared  []string // ids of cleared alarms, oldest first
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
func OpenAlarms(path string, offlineAfter time.Duration) (*Alarms, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening alarm journal: %w", err)
	}
	a := &Alarms{
		offlineAfter: offlineAfter, f: f,
		alarms: map[string]*Alarm{}, activeBy: map[string]int{}, rules: map[string]map[string]*ruleState{}, offline: map[string]*offlineState{},
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line, good := 0, int64(0)
	for sc.Scan() {
		line++
		var e journalEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			if sc.Scan() {
				f.Close()
				return nil, fmt.Errorf("reading alarm journal %s line %d: %w", path, line, err)
			}
			// A torn last line: that change was never acknowledged.
			if err := f.Truncate(good); err != nil {
				f.Close()
				return nil, fmt.Errorf("truncating torn alarm entry: %w", err)
			}
			break
		}
		good += int64(len(sc.Bytes())) + 1
		al := e.Alarm
		a.keep(&al)
		if s, err := strconv.ParseUint(al.ID, 10, 64); err == nil {
			a.seq = max(a.seq, s)
		}
	}
	if err := sc.Err(); err != nil {
		f.Close()
		return nil, fmt.Errorf("reading alarm journal: %w", err)
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
		a.activeBy[prev.Machine]--
		if a.activeBy[prev.Machine] == 0 {
			delete(a.activeBy, prev.Machine)
		}
	}
	if al.State == AlarmActive {
		a.activeBy[al.Machine]++
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

func (a *Alarms) offlineOf(machine string) *offlineState {
	st := a.offline[machine]
	if st == nil {
		st = &offlineState{eval: Offline{After: a.offlineAfter}}
		a.offline[machine] = st
	}
	return st
}

// journal appends a change durably; a.mu must be held.
func (a *Alarms) journal(op, by string, at time.Time, al *Alarm) error {
	b, err := json.Marshal(journalEntry{Op: op, At: at, By: by, Alarm: *al})
	if err != nil {
		return fmt.Errorf("encoding alarm: %w", err)
	}
	if _, err := a.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("writing alarm journal: %w", err)
	}
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("syncing alarm journal: %w", err)
	}
	return nil
}

// Seen records that the machines of samples sent data at server time
// received (Unix ms): it clears their offline alarms, which it returns.
func (a *Alarms) Seen(samples []telemetry.Sample, received int64) []Alarm {
	a.mu.Lock()
	defer a.mu.Unlock()
	var changed []Alarm
	machine := ""
	for i := range samples {
		if i > 0 && samples[i].Machine == machine {
			continue
		}
		machine = samples[i].Machine
		if st := a.offlineOf(machine); st.eval.Seen(received) == Cleared {
			// A failed journal write leaves the alarm active; the next
			// event tries again.
			if al, err := a.clear(st.open, time.UnixMilli(received)); err == nil && al != nil {
				changed = append(changed, *al)
				st.open = ""
			} else if err != nil {
				st.eval.active = true
			}
		}
	}
	return changed
}

// Observe evaluates the threshold rules of the samples' machines (from
// thresholds, the machine's registry entry); samples must come per machine
// in event-time order. It returns the alarms that changed, as they stand
// now.
func (a *Alarms) Observe(samples []telemetry.Sample, thresholds func(machine string) map[string]Threshold) ([]Alarm, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var (
		changed []Alarm
		errs    []error
		machine string
		ths     map[string]Threshold
	)
	for i := range samples {
		s := &samples[i]
		if i == 0 || s.Machine != machine {
			machine = s.Machine
			ths = thresholds(machine)
		}
		th, ok := ths[s.Metric]
		if !ok {
			continue
		}
		rs := a.ruleStateOf(machine, s.Metric, th)
		for j := range rs.rules {
			r := &rs.rules[j]
			switch r.Observe(s.Time, s.Value) {
			case Raised:
				limit, v := r.Limit, s.Value
				al := &Alarm{Machine: machine, Metric: s.Metric, Kind: r.Kind, Limit: &limit, Value: &v,
					State: AlarmActive, RaisedAt: time.UnixMilli(s.Time).UTC()}
				if err := a.raise(al); err != nil {
					errs = append(errs, err)
					continue
				}
				rs.open[j] = al.ID
				changed = append(changed, *al)
			case Cleared:
				al, err := a.clear(rs.open[j], time.UnixMilli(s.Time))
				if err != nil {
					errs = append(errs, err)
				} else if al != nil {
					changed = append(changed, *al)
				}
				rs.open[j] = ""
			}
		}
	}
	return changed, errors.Join(errs...)
}

// ruleStateOf returns the rules of one metric, rebuilt when the threshold
// changed (an active alarm of a rule that goes away is cleared by the next
// sample that no longer breaches the new limits: it stays active until then).
func (a *Alarms) ruleStateOf(machine, metric string, th Threshold) *ruleState {
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
	// Carry over the active alarm of a rule of the same kind, or one that
	// was active before a restart.
	for j := range next.rules {
		r := &next.rules[j]
		id := ""
		if rs != nil {
			for k := range rs.rules {
				if rs.rules[k].Kind == r.Kind && rs.open[k] != "" {
					id = rs.open[k]
				}
			}
		} else {
			for _, al := range a.alarms {
				if al.State == AlarmActive && al.Machine == machine && al.Metric == metric && al.Kind == r.Kind {
					id = al.ID
				}
			}
		}
		if id != "" {
			r.active, next.open[j] = true, id
		}
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
	a.seq++
	al.ID = strconv.FormatUint(a.seq, 10)
	if err := a.journal("raise", "", al.RaisedAt, al); err != nil {
		return err
	}
	a.keep(al)
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
	if err := a.journal("clear", "", at, &al); err != nil {
		return nil, err
	}
	a.keep(&al)
	return &al, nil
}

// Tick raises offline alarms at server time now and returns them.
func (a *Alarms) Tick(now time.Time) ([]Alarm, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var (
		changed []Alarm
		errs    []error
	)
	for machine, st := range a.offline {
		if st.eval.Tick(now.UnixMilli()) != Raised {
			continue
		}
		al := &Alarm{Machine: machine, Kind: AlarmOffline, State: AlarmActive, RaisedAt: now.UTC()}
		if err := a.raise(al); err != nil {
			errs = append(errs, err)
			continue
		}
		st.open = al.ID
		changed = append(changed, *al)
	}
	return changed, errors.Join(errs...)
}

// Ack acknowledges an alarm, active or cleared.
func (a *Alarms) Ack(id, by, note string, now time.Time) (Alarm, error) {
	if utf8.RuneCountInString(by) > maxNoteAuthor || utf8.RuneCountInString(note) > maxNoteText {
		return Alarm{}, fmt.Errorf("%w: by is at most %d characters, note at most %d", ErrInvalid, maxNoteAuthor, maxNoteText)
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
	if err := a.journal("ack", by, now, &al); err != nil {
		return Alarm{}, err
	}
	a.keep(&al)
	return al, nil
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

// Close closes the journal.
func (a *Alarms) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Close()
}
