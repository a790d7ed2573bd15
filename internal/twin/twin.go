// Package twin keeps the digital twin of every machine: its registry entry
// (name, site, line, thresholds, attributes), persisted by a RegistryStore,
// and its live state (latest metrics, last seen, status), built from the
// samples the processor hands over once they are durable. It also keeps the
// alarms (journaled to an AlarmStore) and the operator notes (a NoteStore).
//
// The stores are interfaces owned here: the files in the data directory
// (RegistryFile, AlarmFile, NoteFile) are the embedded default, and
// internal/store/postgres implements them on PostgreSQL. Every
// implementation passes the conformance suite in internal/twin/twintest.
package twin

import (
	"strings"

	"github.com/twinline/twinline/internal/auth"

	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

var (
	// ErrNotFound reports an unknown machine or alarm.
	ErrNotFound = errors.New("not found")
	// ErrInvalid reports a registry entry that does not validate.
	ErrInvalid = errors.New("invalid machine")
)

// Status values of a twin: its liveness only. Whether it is in alarm is
// told apart, by Machine.Alarm, so a machine may be offline and in alarm.
const (
	// StatusOnline: an event arrived within --offline-after.
	StatusOnline = "online"
	// StatusOffline: none did, or none was seen since the server started.
	StatusOffline = "offline"
)

// Liveness is a machine's status after a change to al: offline while al
// is its active offline alarm, else status, the twin's own view (which
// shows it online once the event that cleared the offline alarm has
// arrived). The offline alarm and the twin judge silence by the same
// --offline-after at slightly different instants: this keeps a status
// message consistent with the alarm it follows.
func Liveness(status string, al Alarm) string {
	if al.Kind == AlarmOffline && al.State == AlarmActive {
		return StatusOffline
	}
	return status
}

// Threshold is an alarm rule for one metric.
type Threshold struct {
	High     *float64 `json:"high,omitempty"`
	Low      *float64 `json:"low,omitempty"`
	Deadband float64  `json:"deadband,omitempty"`
	// For is how long the condition must hold before the alarm is raised,
	// as a Go duration ("10s").
	For string `json:"for,omitempty"`
}

// Info is a machine's registry entry.
type Info struct {
	ID         string               `json:"id"`
	Name       string               `json:"name,omitempty"`
	Site       string               `json:"site,omitempty"`
	Line       string               `json:"line,omitempty"`
	Thresholds map[string]Threshold `json:"thresholds,omitempty"`
	Attributes map[string]any       `json:"attributes,omitempty"`
	CreatedAt  time.Time            `json:"createdAt"`
	UpdatedAt  time.Time            `json:"updatedAt"`
}

// Value is the latest value of one metric: its value and event time (Unix
// ms), and the median of its last samples in event-time order.
type Value struct {
	Value  float64  `json:"value"`
	TS     int64    `json:"ts"`
	Median *float64 `json:"median,omitempty"`
}

// Machine is a twin as the API shows it: registry entry and live state.
type Machine struct {
	Info
	// Status is the liveness: StatusOnline or StatusOffline.
	Status string `json:"status"`
	// Alarm is set when the machine has an active alarm other than the
	// offline one (see Alarms.Alarmed); Twins leaves it false, the API
	// fills it in.
	Alarm bool `json:"alarm"`
	// LastSeen is the server time (Unix ms) of the machine's latest event,
	// or 0 if none was seen since the server started.
	LastSeen int64            `json:"lastSeen,omitempty"`
	Metrics  map[string]Value `json:"metrics"`
	// Rate1m and Rate5m are events per second over the last 1 and 5
	// minutes of server time.
	Rate1m float64 `json:"rate1m"`
	Rate5m float64 `json:"rate5m"`
}

type entry struct {
	info     Info
	lastSeen int64
	latest   map[string]latest
	rate     *stream.Rate // nil until the first event, and once trimmed
	medians  map[string]*stream.Median
}

// latest is the internal form of Value, without a pointer to allocate.
type latest struct {
	value, median float64
	ts            int64
	hasMedian     bool
}

// Twins is the set of twins. It is safe for concurrent use.
type Twins struct {
	reg          RegistryStore
	now          func() time.Time
	offlineAfter time.Duration
	medianWindow int
	logger       *slog.Logger

	mu       sync.RWMutex
	machines map[string]*entry
	fleet    stream.Rate // events of every machine
	dirty    bool        // auto-registered machines not yet persisted
	gen      uint64      // snapshots taken

	// saveMu orders registry writes; savedGen is the newest snapshot
	// written, so an older one never overwrites it.
	saveMu   sync.Mutex
	savedGen uint64

	// onDelete is told of each machine removed from the registry.
	onDelete func(id string)
}

// idleFactor times --offline-after (at least idleMin) is how long a
// machine must be silent before Trim drops its sliding medians.
const (
	idleFactor = 10
	idleMin    = time.Hour
)

// Open loads the registry at path (a missing file is an empty registry).
// medianWindow is the number of samples the sliding median covers.
func Open(path string, offlineAfter time.Duration, medianWindow int, now func() time.Time, logger *slog.Logger) (*Twins, error) {
	return OpenWith(context.Background(), NewRegistryFile(path), offlineAfter, medianWindow, now, logger)
}

// OpenWith loads the registry from reg, which then persists every registry
// write and the auto-registered machines (Flush, Run).
func OpenWith(ctx context.Context, reg RegistryStore, offlineAfter time.Duration, medianWindow int, now func() time.Time, logger *slog.Logger) (*Twins, error) {
	infos, err := reg.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading registry: %w", err)
	}
	t := &Twins{reg: reg, now: now, offlineAfter: offlineAfter, medianWindow: max(medianWindow, 1), logger: logger, machines: make(map[string]*entry, len(infos))}
	for _, in := range infos {
		t.machines[in.ID] = &entry{info: in, latest: map[string]latest{}}
	}
	return t, nil
}

// Observe updates the twins with durable samples that arrived in b. It
// auto-registers unknown machines. It does not retain samples.
func (t *Twins) Observe(b *telemetry.Batch, samples []telemetry.Sample) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var e *entry
	for i := range samples {
		s := &samples[i]
		if e == nil || e.info.ID != s.Machine {
			e = t.machines[s.Machine]
			if e == nil {
				e = t.register(s.Machine, time.UnixMilli(b.Received).UTC())
			}
			e.lastSeen = max(e.lastSeen, b.Received)
		}
		// An event's samples come together: count one hit per event.
		if i == 0 || samples[i-1].Machine != s.Machine || samples[i-1].Time != s.Time {
			if e.rate == nil {
				e.rate = new(stream.Rate)
			}
			e.rate.Hit(b.Received, 1)
			t.fleet.Hit(b.Received, 1)
		}
		if v, ok := e.latest[s.Metric]; !ok || s.Time >= v.ts {
			v.value, v.ts = s.Value, s.Time
			e.latest[s.Metric] = v
		}
	}
}

type seriesKey struct{ machine, metric string }

// MedianUpdate is a metric's sliding median after a group of released
// samples: the median, and the event time of the newest sample it covers.
type MedianUpdate struct {
	Machine string
	Metric  string
	Time    int64
	Median  float64
}

// ObserveReleased feeds the sliding medians with samples released in
// event-time order, and appends to dst each touched series' median after
// the group (one entry per machine and metric, in the order first seen).
func (t *Twins) ObserveReleased(samples []telemetry.Sample, dst []MedianUpdate) []MedianUpdate {
	t.mu.Lock()
	defer t.mu.Unlock()
	at := make(map[seriesKey]int) // index in dst of each touched series
	var e *entry
	for i := range samples {
		s := &samples[i]
		if e == nil || e.info.ID != s.Machine {
			if e = t.machines[s.Machine]; e == nil {
				continue // deleted meanwhile
			}
		}
		m := e.medians[s.Metric]
		if m == nil {
			if e.medians == nil {
				e.medians = map[string]*stream.Median{}
			}
			m = stream.NewMedian(t.medianWindow)
			e.medians[s.Metric] = m
		}
		m.Add(s.Value)
		med, _ := m.Median()
		if v, ok := e.latest[s.Metric]; ok {
			v.median = med
			v.hasMedian = true
			e.latest[s.Metric] = v
		}
		k := seriesKey{s.Machine, s.Metric}
		if j, ok := at[k]; ok {
			dst[j].Time, dst[j].Median = s.Time, med
		} else {
			at[k] = len(dst)
			dst = append(dst, MedianUpdate{Machine: s.Machine, Metric: s.Metric, Time: s.Time, Median: med})
		}
	}
	return dst
}

// FleetRate returns the fleet's events per second over window (1m or 5m)
// of server time.
func (t *Twins) FleetRate(window time.Duration) float64 {
	now := t.now().UnixMilli()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fleet.PerSecond(now, window)
}

// Restore seeds latest values from stored samples (at start-up), without
// touching lastSeen: a restarted server does not claim machines are online.
func (t *Twins) Restore(samples []telemetry.Sample) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range samples {
		e := t.machines[s.Machine]
		if e == nil {
			e = t.register(s.Machine, time.UnixMilli(s.Time).UTC())
		}
		if v, ok := e.latest[s.Metric]; !ok || s.Time >= v.ts {
			v.value, v.ts = s.Value, s.Time
			e.latest[s.Metric] = v
		}
	}
}

// register adds an auto-registered machine; t.mu must be held.
func (t *Twins) register(id string, at time.Time) *entry {
	e := &entry{info: Info{ID: id, CreatedAt: at, UpdatedAt: at}, latest: map[string]latest{}}
	t.machines[id] = e
	t.dirty = true
	return e
}

// Admit says why a machine may not send data, or "" when it may: a known
// machine always may; a new one while the fleet has fewer than limit
// machines (0: no limit). Concurrent admissions may overshoot the limit by
// the number of requests in flight: it guards memory, it is not a quota.
func (t *Twins) Admit(id string, limit int) string {
	if limit <= 0 {
		return ""
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if _, ok := t.machines[id]; ok || len(t.machines) < limit {
		return ""
	}
	return fmt.Sprintf("unknown machine and the fleet is at its limit of %d machines (--max-machines): delete machines no longer in use, or raise the limit", limit)
}

// Site returns the site of a registered machine, and whether it is
// registered. Cheap: it runs per ingested machine for site-restricted
// identities.
func (t *Twins) Site(id string) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if e := t.machines[id]; e != nil {
		return e.info.Site, true
	}
	return "", false
}

// AdmitFor says why id may not write for machine ("" when it may), for
// every ingest path (HTTP, line protocol, MQTT): a device certificate
// writes for its own machine only; a site-restricted identity for machines
// of its sites, and a machine it is the first to send is registered at its
// site when it has exactly one. The reason does not tell another site's
// machine from an unknown one.
func (t *Twins) AdmitFor(id auth.Identity, machine string) string {
	if id.Machine != "" && machine != id.Machine {
		return "this certificate writes for machine " + id.Machine + " only"
	}
	if !id.Restricted() {
		return ""
	}
	site, ok := t.Site(machine)
	switch {
	case ok && id.SeesSite(site):
		return ""
	case !ok && len(id.Sites) == 1:
		t.Locate(machine, id.Sites[0], "")
		return ""
	}
	return "not a machine of your sites (" + strings.Join(id.Sites, ", ") + "): register it at one of them first"
}

// Thresholds returns the alarm thresholds of a machine's registry entry.
// The map is shared: registry writes replace it, never change it.
func (t *Twins) Thresholds(id string) map[string]Threshold {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if e := t.machines[id]; e != nil {
		return e.info.Thresholds
	}
	return nil
}

// List returns every twin, sorted by id.
func (t *Twins) List() []Machine {
	now := t.now().UnixMilli()
	t.mu.RLock()
	out := make([]Machine, 0, len(t.machines))
	for _, e := range t.machines {
		out = append(out, t.view(e, now))
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b Machine) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Get returns one twin.
func (t *Twins) Get(id string) (Machine, error) {
	now := t.now().UnixMilli()
	t.mu.RLock()
	defer t.mu.RUnlock()
	e, ok := t.machines[id]
	if !ok {
		return Machine{}, fmt.Errorf("%w: machine %q", ErrNotFound, id)
	}
	return t.view(e, now), nil
}

// view copies e; t.mu must be held.
func (t *Twins) view(e *entry, now int64) Machine {
	status := StatusOffline
	if e.lastSeen > 0 && now-e.lastSeen <= t.offlineAfter.Milliseconds() {
		status = StatusOnline
	}
	metrics := make(map[string]Value, len(e.latest))
	for name, v := range e.latest {
		mv := Value{Value: v.value, TS: v.ts}
		if v.hasMedian {
			med := v.median
			mv.Median = &med
		}
		metrics[name] = mv
	}
	m := Machine{Info: e.info, Status: status, LastSeen: e.lastSeen, Metrics: metrics}
	if e.rate != nil {
		m.Rate1m, m.Rate5m = e.rate.PerSecond(now, time.Minute), e.rate.PerSecond(now, 5*time.Minute)
	}
	return m
}

// Put creates or replaces a machine's registry entry and persists it. It
// reports whether the machine was created.
func (t *Twins) Put(id string, in Info) (Machine, bool, error) {
	in.ID = id
	if err := in.validate(); err != nil {
		return Machine{}, false, err
	}
	return t.update(id, true, func(old *Info) (Info, error) {
		in.CreatedAt, in.UpdatedAt = old.CreatedAt, old.UpdatedAt
		return in, nil
	})
}

// Patch applies a JSON merge patch (RFC 7386) to a machine's registry entry.
func (t *Twins) Patch(id string, patch []byte) (Machine, error) {
	m, _, err := t.update(id, false, func(old *Info) (Info, error) {
		return mergePatch(*old, patch)
	})
	return m, err
}

func (t *Twins) update(id string, create bool, change func(*Info) (Info, error)) (Machine, bool, error) {
	now := t.now().UTC()
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.machines[id]
	if !ok && !create {
		return Machine{}, false, fmt.Errorf("%w: machine %q", ErrNotFound, id)
	}
	old := Info{ID: id, CreatedAt: now}
	if ok {
		old = e.info
	}
	in, err := change(&old)
	if err != nil {
		return Machine{}, false, err
	}
	in.ID, in.CreatedAt, in.UpdatedAt = id, old.CreatedAt, now
	if in.CreatedAt.IsZero() {
		in.CreatedAt = now
	}
	if !ok {
		e = &entry{latest: map[string]latest{}}
	}
	prev := e.info
	e.info = in
	t.machines[id] = e
	if err := t.persistLocked(); err != nil {
		// Keep memory and disk in step: undo.
		if ok {
			e.info = prev
		} else {
			delete(t.machines, id)
		}
		return Machine{}, false, err
	}
	return t.view(e, now.UnixMilli()), !ok, nil
}

// Locate records where a machine is, as its data source names it (an MQTT
// topic's site and line): it registers an unknown machine there, and fills
// in a known one's site or line when unset. A site or line an operator set
// is kept. Cheap when nothing changes: it runs per message.
func (t *Twins) Locate(id, site, line string) {
	t.mu.RLock()
	e := t.machines[id]
	same := e != nil && (site == "" || e.info.Site != "") && (line == "" || e.info.Line != "")
	t.mu.RUnlock()
	if same {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e = t.machines[id]; e == nil {
		e = t.register(id, t.now().UTC())
	}
	if e.info.Site == "" && site != "" {
		e.info.Site, t.dirty = site, true
	}
	if e.info.Line == "" && line != "" {
		e.info.Line, t.dirty = line, true
	}
}

// Refresh brings the registry entries of ids in line with the registry
// store after another replica changed them: get returns an entry as stored,
// or an error wrapping ErrNotFound for a machine removed; ids nil means every
// machine, read with load (which adds and updates, but removes nothing: a
// machine auto-registered here may not be stored yet). Live state (latest
// values, medians, rates) is kept; nothing is written back.
func (t *Twins) Refresh(ctx context.Context, ids []string, get func(context.Context, string) (Info, error), load func(context.Context) ([]Info, error)) error {
	if ids == nil {
		all, err := load(ctx)
		if err != nil {
			return err
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		for _, in := range all {
			t.setInfoLocked(in)
		}
		return nil
	}
	for _, id := range ids {
		in, err := get(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
			t.mu.Lock()
			_, had := t.machines[id]
			delete(t.machines, id)
			t.mu.Unlock()
			if had && t.onDelete != nil {
				t.onDelete(id)
			}
		case err != nil:
			return err
		default:
			t.mu.Lock()
			t.setInfoLocked(in)
			t.mu.Unlock()
		}
	}
	return nil
}

// setInfoLocked sets a machine's registry entry, registering it if new;
// t.mu must be held.
func (t *Twins) setInfoLocked(in Info) {
	e := t.machines[in.ID]
	if e == nil {
		e = &entry{latest: map[string]latest{}}
		t.machines[in.ID] = e
	}
	e.info = in
}

// RegisterMissing adds the entries whose machines are not registered yet,
// in one persisted write, and returns how many it added. Registered
// machines keep their entries.
func (t *Twins) RegisterMissing(infos []Info) (int, error) {
	for _, in := range infos {
		if err := in.validate(); err != nil {
			return 0, err
		}
	}
	now := t.now().UTC()
	t.mu.Lock()
	defer t.mu.Unlock()
	var added []string
	for _, in := range infos {
		if _, ok := t.machines[in.ID]; ok {
			continue
		}
		in.CreatedAt, in.UpdatedAt = now, now
		t.machines[in.ID] = &entry{info: in, latest: map[string]latest{}}
		added = append(added, in.ID)
	}
	if len(added) == 0 {
		return 0, nil
	}
	if err := t.persistLocked(); err != nil {
		for _, id := range added {
			delete(t.machines, id)
		}
		return 0, err
	}
	return len(added), nil
}

// OnDelete sets the function told of every machine removed from the
// registry (Delete, or a removal Refresh found), after the removal, without
// the Twins' lock held: the engine drops its state of the machine. Call it
// before the Twins is shared.
func (t *Twins) OnDelete(fn func(id string)) { t.onDelete = fn }

// Trim drops the sliding medians and the event rate of machines silent
// (server time now) for idleFactor × --offline-after, at least idleMin,
// and reports how many machines it trimmed: their registry entry, latest
// values and last median stay, and a machine that comes back starts its
// medians afresh. Its rate answers 0 either way (a Rate covers the last
// MaxRateWindow, far less than idleMin; unless the server clock goes back
// by more than idleMin), and the Rate its next event creates counts as the
// dropped one would have (a hit after a gap longer than the window starts
// it afresh). It costs O(machines); Run calls it.
func (t *Twins) Trim(now time.Time) (trimmed int) {
	cutoff := now.Add(-max(idleFactor*t.offlineAfter, idleMin)).UnixMilli()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.machines {
		if (e.medians != nil || e.rate != nil) && e.lastSeen < cutoff {
			e.medians, e.rate = nil, nil
			trimmed++
		}
	}
	return trimmed
}

// Delete removes a machine from the registry and forgets its live state.
// Its stored samples stay until retention removes them; a new event
// registers it again.
func (t *Twins) Delete(id string) error {
	if err := t.delete(id); err != nil {
		return err
	}
	if t.onDelete != nil {
		t.onDelete(id)
	}
	return nil
}

// delete is Delete without the hook.
func (t *Twins) delete(id string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.machines[id]
	if !ok {
		return fmt.Errorf("%w: machine %q", ErrNotFound, id)
	}
	delete(t.machines, id)
	if err := t.persistLocked(); err != nil {
		t.machines[id] = e
		return err
	}
	return nil
}

// Flush persists auto-registered machines. It writes the registry without
// holding the lock Observe needs, so the processor never waits for the disk
// (or the database).
func (t *Twins) Flush() error {
	t.mu.Lock()
	if !t.dirty {
		t.mu.Unlock()
		return nil
	}
	infos, gen := t.snapshotLocked()
	t.dirty = false
	t.mu.Unlock()
	if err := t.save(infos, gen); err != nil {
		t.mu.Lock()
		t.dirty = true
		t.mu.Unlock()
		return err
	}
	return nil
}

// persistLocked writes the registry while t.mu is held: registry writes
// (rare) keep memory and store in step by undoing a change that could not
// be saved.
func (t *Twins) persistLocked() error {
	infos, gen := t.snapshotLocked()
	if err := t.save(infos, gen); err != nil {
		return err
	}
	t.dirty = false
	return nil
}

// snapshotLocked copies the registry entries and numbers the copy; t.mu
// must be held.
func (t *Twins) snapshotLocked() ([]Info, uint64) {
	infos := make([]Info, 0, len(t.machines))
	for _, e := range t.machines {
		infos = append(infos, e.info)
	}
	slices.SortFunc(infos, func(a, b Info) int { return cmp.Compare(a.ID, b.ID) })
	t.gen++
	return infos, t.gen
}

// save writes a snapshot unless a newer one was written already.
func (t *Twins) save(infos []Info, gen uint64) error {
	t.saveMu.Lock()
	defer t.saveMu.Unlock()
	if gen <= t.savedGen {
		return nil
	}
	if err := t.reg.Save(context.Background(), infos); err != nil {
		return err
	}
	t.savedGen = gen
	return nil
}

// Run persists auto-registered machines every interval until ctx ends, then
// once more.
func (t *Twins) Run(ctx context.Context, interval time.Duration) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return t.Flush()
		case now := <-tick.C:
			if err := t.Flush(); err != nil {
				t.logger.Error("persisting registry", "err", err)
			}
			t.Trim(now)
		}
	}
}

// mergePatch applies an RFC 7386 JSON merge patch to in.
func mergePatch(in Info, patch []byte) (Info, error) {
	var p any
	if err := json.Unmarshal(patch, &p); err != nil {
		return Info{}, fmt.Errorf("%w: body is not JSON: %v", ErrInvalid, err)
	}
	if _, ok := p.(map[string]any); !ok {
		return Info{}, fmt.Errorf("%w: a merge patch must be a JSON object", ErrInvalid)
	}
	cur, err := json.Marshal(in)
	if err != nil {
		return Info{}, fmt.Errorf("encoding machine: %w", err)
	}
	var doc any
	if err := json.Unmarshal(cur, &doc); err != nil {
		return Info{}, fmt.Errorf("decoding machine: %w", err)
	}
	merged, err := json.Marshal(merge(doc, p))
	if err != nil {
		return Info{}, fmt.Errorf("encoding patched machine: %w", err)
	}
	out, err := DecodeInfo(merged)
	if err != nil {
		return Info{}, err
	}
	out.CreatedAt, out.UpdatedAt = in.CreatedAt, in.UpdatedAt
	return out, out.validate()
}

func merge(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = merge(tm[k], v)
	}
	return tm
}
