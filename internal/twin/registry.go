package twin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/auth"
)

// FlushInterval is how often Registry.Run persists auto-registered
// machines.
const FlushInterval = 5 * time.Second

// Registry is the machine registry: each machine's entry (name, site,
// line, thresholds, attributes), persisted by a RegistryStore. Operators
// write it (Put, Patch, Delete); ingest registers unknown machines
// (AutoRegister, Locate) and asks it who may send (Admit, AdmitFor). It is
// safe for concurrent use.
type Registry struct {
	store  RegistryStore
	now    func() time.Time
	logger *slog.Logger

	mu    sync.RWMutex
	infos map[string]Info
	dirty bool   // auto-registered machines not yet persisted
	gen   uint64 // snapshots taken

	// saveMu orders registry writes; savedGen is the newest snapshot
	// written, so an older one never overwrites it.
	saveMu   sync.Mutex
	savedGen uint64

	// onDelete are told of each machine removed from the registry.
	onDelete []func(id string)

	// listing is Listing's answer, nil after a change; encoded keeps
	// each entry's JSON until the entry changes. Both are guarded by mu.
	listing []Entry
	encoded map[string][]byte
}

// OpenRegistry loads the registry from s, which then persists every
// registry write and the auto-registered machines (Flush, Run).
func OpenRegistry(ctx context.Context, s RegistryStore, now func() time.Time, logger *slog.Logger) (*Registry, error) {
	infos, err := s.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading registry: %w", err)
	}
	r := &Registry{store: s, now: now, logger: logger, infos: make(map[string]Info, len(infos)), encoded: map[string][]byte{}}
	for _, in := range infos {
		r.setLocked(in.ID, in)
	}
	return r, nil
}

// OpenRegistryFile loads the registry file at path (a missing file is an
// empty registry).
func OpenRegistryFile(path string, now func() time.Time, logger *slog.Logger) (*Registry, error) {
	return OpenRegistry(context.Background(), NewRegistryFile(path), now, logger)
}

// OnDelete adds a function told of every machine removed from the registry
// (Delete, or a removal Refresh found), after the removal, without the
// registry's lock held: the live state and the engines forget the machine.
// Call it before the Registry is shared.
func (r *Registry) OnDelete(fn func(id string)) { r.onDelete = append(r.onDelete, fn) }

// deleted tells the OnDelete functions of id's removal.
func (r *Registry) deleted(id string) {
	for _, fn := range r.onDelete {
		fn(id)
	}
}

// setLocked sets id's entry; r.mu must be held for writing.
func (r *Registry) setLocked(id string, in Info) {
	r.infos[id] = in
	delete(r.encoded, id)
	r.listing = nil
}

// dropLocked removes id's entry; r.mu must be held for writing.
func (r *Registry) dropLocked(id string) {
	delete(r.infos, id)
	delete(r.encoded, id)
	r.listing = nil
}

// Entry is a registry entry with its JSON encoding (what json.Marshal
// writes for the Info).
type Entry struct {
	Info
	JSON []byte
}

// Listing returns every registry entry, sorted by id, with its JSON
// encoding. The slice and the encodings are shared: read them only. It is
// rebuilt after a change, and an entry is encoded again only when it
// changed, so listing an unchanged fleet copies, sorts and encodes
// nothing.
func (r *Registry) Listing() []Entry {
	r.mu.RLock()
	l := r.listing
	r.mu.RUnlock()
	if l != nil {
		return l
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.listing != nil {
		return r.listing
	}
	l = make([]Entry, 0, len(r.infos))
	for id, in := range r.infos {
		b, ok := r.encoded[id]
		if !ok {
			var err error
			if b, err = json.Marshal(in); err != nil {
				// Validated entries always encode; keep the id at least.
				b, _ = json.Marshal(Info{ID: in.ID, CreatedAt: in.CreatedAt, UpdatedAt: in.UpdatedAt})
			}
			r.encoded[id] = b
		}
		l = append(l, Entry{Info: in, JSON: b})
	}
	slices.SortFunc(l, func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
	r.listing = l
	return l
}

// Get returns a machine's registry entry, or an error wrapping ErrNotFound.
func (r *Registry) Get(id string) (Info, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	in, ok := r.infos[id]
	if !ok {
		return Info{}, fmt.Errorf("%w: machine %q", ErrNotFound, id)
	}
	return in, nil
}

// List returns every registry entry, sorted by id.
func (r *Registry) List() []Info {
	r.mu.RLock()
	out := make([]Info, 0, len(r.infos))
	for _, in := range r.infos {
		out = append(out, in)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b Info) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// IDs returns the id of every registered machine, sorted.
func (r *Registry) IDs() []string {
	r.mu.RLock()
	out := make([]string, 0, len(r.infos))
	for id := range r.infos {
		out = append(out, id)
	}
	r.mu.RUnlock()
	slices.Sort(out)
	return out
}

// Site returns the site of a registered machine, and whether it is
// registered. Cheap: it runs per ingested machine for site-restricted
// identities.
func (r *Registry) Site(id string) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	in, ok := r.infos[id]
	return in.Site, ok
}

// Thresholds returns the alarm thresholds of a machine's registry entry.
// The map is shared: registry writes replace it, never change it.
func (r *Registry) Thresholds(id string) map[string]Threshold {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.infos[id].Thresholds
}

// Admit says why a machine may not send data, or "" when it may: a known
// machine always may; a new one while the fleet has fewer than limit
// machines (0: no limit). Concurrent admissions may overshoot the limit by
// the number of requests in flight: it guards memory, it is not a quota.
func (r *Registry) Admit(id string, limit int) string {
	if limit <= 0 {
		return ""
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.infos[id]; ok || len(r.infos) < limit {
		return ""
	}
	return fmt.Sprintf("unknown machine and the fleet is at its limit of %d machines (--max-machines): delete machines no longer in use, or raise the limit", limit)
}

// AdmitFor says why id may not write for machine ("" when it may), for
// every ingest path (HTTP, line protocol, MQTT): a device certificate
// writes for its own machine only; a site-restricted identity for machines
// of its sites, and a machine it is the first to send is registered at its
// site when it has exactly one. The reason does not tell another site's
// machine from an unknown one.
func (r *Registry) AdmitFor(id auth.Identity, machine string) string {
	if id.Machine != "" && machine != id.Machine {
		return "this certificate writes for machine " + id.Machine + " only"
	}
	if !id.Restricted() {
		return ""
	}
	site, ok := r.Site(machine)
	switch {
	case ok && id.SeesSite(site):
		return ""
	case !ok && len(id.Sites) == 1:
		r.Locate(machine, id.Sites[0], "")
		return ""
	}
	return "not a machine of your sites (" + strings.Join(id.Sites, ", ") + "): register it at one of them first"
}

// AutoRegister registers a machine the first time data of it is seen, at
// at; a registered machine is left as it is. Flush persists it. Cheap
// when the machine is known.
func (r *Registry) AutoRegister(id string, at time.Time) {
	r.mu.RLock()
	_, ok := r.infos[id]
	r.mu.RUnlock()
	if ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.infos[id]; !ok {
		r.registerLocked(id, at)
	}
}

// registerLocked adds an auto-registered machine; r.mu must be held.
func (r *Registry) registerLocked(id string, at time.Time) Info {
	at = at.UTC()
	in := Info{ID: id, CreatedAt: at, UpdatedAt: at}
	r.setLocked(id, in)
	r.dirty = true
	return in
}

// Locate records where a machine is, as its data source names it (an MQTT
// topic's site and line): it registers an unknown machine there, and fills
// in a known one's site or line when unset. A site or line an operator set
// is kept. Cheap when nothing changes: it runs per message.
func (r *Registry) Locate(id, site, line string) {
	r.mu.RLock()
	in, ok := r.infos[id]
	same := ok && (site == "" || in.Site != "") && (line == "" || in.Line != "")
	r.mu.RUnlock()
	if same {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok = r.infos[id]
	if !ok {
		in = r.registerLocked(id, r.now())
	}
	if in.Site == "" && site != "" {
		in.Site, r.dirty = site, true
	}
	if in.Line == "" && line != "" {
		in.Line, r.dirty = line, true
	}
	r.setLocked(id, in)
}

// Put creates or replaces a machine's registry entry and persists it. It
// reports whether the machine was created.
func (r *Registry) Put(id string, in Info) (Info, bool, error) {
	in.ID = id
	if err := in.validate(); err != nil {
		return Info{}, false, err
	}
	return r.update(id, true, func(old *Info) (Info, error) {
		in.CreatedAt, in.UpdatedAt = old.CreatedAt, old.UpdatedAt
		return in, nil
	})
}

// Patch applies a JSON merge patch (RFC 7386) to a machine's registry entry.
func (r *Registry) Patch(id string, patch []byte) (Info, error) {
	in, _, err := r.update(id, false, func(old *Info) (Info, error) {
		return mergePatch(*old, patch)
	})
	return in, err
}

func (r *Registry) update(id string, create bool, change func(*Info) (Info, error)) (Info, bool, error) {
	now := r.now().UTC()
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, ok := r.infos[id]
	if !ok && !create {
		return Info{}, false, fmt.Errorf("%w: machine %q", ErrNotFound, id)
	}
	old := Info{ID: id, CreatedAt: now}
	if ok {
		old = prev
	}
	in, err := change(&old)
	if err != nil {
		return Info{}, false, err
	}
	in.ID, in.CreatedAt, in.UpdatedAt = id, old.CreatedAt, now
	if in.CreatedAt.IsZero() {
		in.CreatedAt = now
	}
	r.setLocked(id, in)
	if err := r.persistLocked(); err != nil {
		// Keep memory and store in step: undo.
		if ok {
			r.setLocked(id, prev)
		} else {
			r.dropLocked(id)
		}
		return Info{}, false, err
	}
	return in, !ok, nil
}

// RegisterMissing adds the entries whose machines are not registered yet,
// in one persisted write, and returns how many it added. Registered
// machines keep their entries.
func (r *Registry) RegisterMissing(infos []Info) (int, error) {
	for _, in := range infos {
		if err := in.validate(); err != nil {
			return 0, err
		}
	}
	now := r.now().UTC()
	r.mu.Lock()
	defer r.mu.Unlock()
	var added []string
	for _, in := range infos {
		if _, ok := r.infos[in.ID]; ok {
			continue
		}
		in.CreatedAt, in.UpdatedAt = now, now
		r.setLocked(in.ID, in)
		added = append(added, in.ID)
	}
	if len(added) == 0 {
		return 0, nil
	}
	if err := r.persistLocked(); err != nil {
		for _, id := range added {
			r.dropLocked(id)
		}
		return 0, err
	}
	return len(added), nil
}

// Delete removes a machine from the registry, then tells the OnDelete
// functions. Its stored samples stay until retention removes them; a new
// event registers it again.
func (r *Registry) Delete(id string) error {
	if err := r.delete(id); err != nil {
		return err
	}
	r.deleted(id)
	return nil
}

// delete is Delete without the hooks.
func (r *Registry) delete(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok := r.infos[id]
	if !ok {
		return fmt.Errorf("%w: machine %q", ErrNotFound, id)
	}
	r.dropLocked(id)
	if err := r.persistLocked(); err != nil {
		r.setLocked(id, in)
		return err
	}
	return nil
}

// SharedStore is a RegistryStore other replicas write too, which announces
// their changes: PostgreSQL (LISTEN/NOTIFY).
type SharedStore interface {
	// OnChange sets the function told of the ids of each change; nil ids
	// means any machine may have changed (a lost notification channel).
	OnChange(fn func(ids []string))
	// Get returns a machine's entry as stored, or an error wrapping
	// ErrNotFound.
	Get(ctx context.Context, id string) (Info, error)
	// Snapshot returns every entry as stored.
	Snapshot(ctx context.Context) ([]Info, error)
}

// Follow keeps the registry in line with the changes other replicas make
// to s (the store it was opened on): each announced change is read back
// with Refresh, and a failure logged. Call it before the Registry is
// shared.
func (r *Registry) Follow(s SharedStore) {
	s.OnChange(func(ids []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Refresh(ctx, ids, s.Get, s.Snapshot); err != nil {
			r.logger.Warn("refreshing registry entries changed by another replica", "err", err)
		}
	})
}

// Refresh brings the registry entries of ids in line with the registry
// store after another replica changed them: get returns an entry as stored,
// or an error wrapping ErrNotFound for a machine removed; ids nil means every
// machine, read with load (which adds and updates, but removes nothing: a
// machine auto-registered here may not be stored yet). Nothing is written
// back.
func (r *Registry) Refresh(ctx context.Context, ids []string, get func(context.Context, string) (Info, error), load func(context.Context) ([]Info, error)) error {
	if ids == nil {
		all, err := load(ctx)
		if err != nil {
			return err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, in := range all {
			r.setLocked(in.ID, in)
		}
		return nil
	}
	for _, id := range ids {
		in, err := get(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
			r.mu.Lock()
			_, had := r.infos[id]
			r.dropLocked(id)
			r.mu.Unlock()
			if had {
				r.deleted(id)
			}
		case err != nil:
			return err
		default:
			r.mu.Lock()
			r.setLocked(in.ID, in)
			r.mu.Unlock()
		}
	}
	return nil
}

// Flush persists auto-registered machines. It writes the registry without
// holding the lock AutoRegister needs, so ingest never waits for the disk
// (or the database).
func (r *Registry) Flush() error {
	r.mu.Lock()
	if !r.dirty {
		r.mu.Unlock()
		return nil
	}
	infos, gen := r.snapshotLocked()
	r.dirty = false
	r.mu.Unlock()
	if err := r.save(infos, gen); err != nil {
		r.mu.Lock()
		r.dirty = true
		r.mu.Unlock()
		return err
	}
	return nil
}

// persistLocked writes the registry while r.mu is held: registry writes
// (rare) keep memory and store in step by undoing a change that could not
// be saved.
func (r *Registry) persistLocked() error {
	infos, gen := r.snapshotLocked()
	if err := r.save(infos, gen); err != nil {
		return err
	}
	r.dirty = false
	return nil
}

// snapshotLocked copies the registry entries and numbers the copy; r.mu
// must be held.
func (r *Registry) snapshotLocked() ([]Info, uint64) {
	infos := make([]Info, 0, len(r.infos))
	for _, in := range r.infos {
		infos = append(infos, in)
	}
	slices.SortFunc(infos, func(a, b Info) int { return cmp.Compare(a.ID, b.ID) })
	r.gen++
	return infos, r.gen
}

// save writes a snapshot unless a newer one was written already.
func (r *Registry) save(infos []Info, gen uint64) error {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	if gen <= r.savedGen {
		return nil
	}
	if err := r.store.Save(context.Background(), infos); err != nil {
		return err
	}
	r.savedGen = gen
	return nil
}

// Run persists auto-registered machines every FlushInterval until ctx
// ends, then once more, and returns that last write's error.
func (r *Registry) Run(ctx context.Context) error {
	tick := time.NewTicker(FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := r.Flush(); err != nil {
				return fmt.Errorf("persisting registry: %w", err)
			}
			return nil
		case <-tick.C:
			if err := r.Flush(); err != nil {
				r.logger.Error("persisting registry", "err", err)
			}
		}
	}
}

// MaxTagAttributes bounds the attributes a machine's tags can give it: a
// tag whose key is not yet an attribute of the machine is ignored (counted
// in TagMerge.Ignored) once the machine has this many attributes, whatever
// set them. A tag of a key the machine has is always applied.
const MaxTagAttributes = 32

// TagMerge is what MergeTags did.
type TagMerge struct {
	// Before are the previous values of the attributes that had one and
	// changed (nil when none did).
	Before map[string]string
	// Changed says whether anything changed.
	Changed bool
	// Ignored counts the new keys left out over MaxTagAttributes.
	Ignored int
}

// MergeAttributes is MergeTags without the count of ignored keys.
func (r *Registry) MergeAttributes(id string, attrs map[string]string) (map[string]string, bool, error) {
	m, err := r.MergeTags(id, attrs)
	return m.Before, m.Changed, err
}

// MergeTags sets string attributes of a machine from its data
// (line-protocol tags): each key of attrs takes its value, latest wins, and
// the machine's other attributes are kept; a new key is added only while
// the machine has fewer than MaxTagAttributes attributes (in key order).
// An unknown machine is registered. A change is persisted by Flush (Run),
// as auto-registration is. Cheap when nothing changes (a read lock). It
// fails, changing nothing, when the attributes would grow over the
// registry's size limit or a value is not valid text.
func (r *Registry) MergeTags(id string, attrs map[string]string) (TagMerge, error) {
	r.mu.RLock()
	in, ok := r.infos[id]
	same, ignored := false, 0
	if ok {
		same, ignored = sameAttributes(in.Attributes, attrs)
	}
	r.mu.RUnlock()
	if same {
		return TagMerge{Ignored: ignored}, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok = r.infos[id]
	if !ok {
		in = Info{ID: id}
	} else if same, ignored := sameAttributes(in.Attributes, attrs); same {
		return TagMerge{Ignored: ignored}, nil
	}
	var res TagMerge
	merged := make(map[string]any, len(in.Attributes)+len(attrs))
	for k, v := range in.Attributes {
		merged[k] = v
	}
	var added []string
	for k, v := range attrs {
		old, had := merged[k]
		if !had {
			added = append(added, k)
			continue
		}
		if old != v {
			if res.Before == nil {
				res.Before = map[string]string{}
			}
			res.Before[k] = fmt.Sprint(old)
		}
		merged[k] = v
	}
	slices.Sort(added)
	for _, k := range added {
		if len(merged) >= MaxTagAttributes {
			res.Ignored++
			continue
		}
		merged[k] = attrs[k]
	}
	next := in
	next.Attributes = merged
	if err := next.validate(); err != nil {
		return TagMerge{}, err
	}
	if !ok {
		next = r.registerLocked(id, r.now())
		next.Attributes = merged
	}
	next.UpdatedAt = r.now().UTC()
	r.setLocked(id, next)
	r.dirty = true
	res.Changed = true
	return res, nil
}

// sameAttributes reports whether merging want into have would change
// nothing: have holds every key of want with its value, as a string, but
// for new keys beyond MaxTagAttributes (it returns how many).
func sameAttributes(have map[string]any, want map[string]string) (bool, int) {
	ignored := 0
	for k, v := range want {
		old, ok := have[k]
		switch {
		case !ok && len(have) >= MaxTagAttributes:
			ignored++
		case !ok:
			return false, 0
		default:
			if s, isString := old.(string); !isString || s != v {
				return false, 0
			}
		}
	}
	return true, ignored
}
