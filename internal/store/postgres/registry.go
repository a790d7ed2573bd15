package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twinline/twinline/internal/twin"
)

// RegistryOptions configure a Registry. The zero value gives the defaults.
type RegistryOptions struct {
	// CacheSize bounds the entries of the lookup cache (Get). Default
	// 10 000.
	CacheSize int
	// RetryInterval is how long Run waits before it reconnects after
	// losing its LISTEN connection. Default 1 second.
	RetryInterval time.Duration
	// PingInterval is how often Run checks an idle LISTEN connection, so
	// that a connection lost silently is noticed. Default 30 seconds.
	PingInterval time.Duration
}

// Registry is the machine registry in the table machines: a
// twin.RegistryStore, and a cached lookup (Get) for the ingest hot path of
// every replica. It is safe for concurrent use.
//
// Save writes only what changed since the registry this Registry last
// loaded or saved, in one transaction: changed entries are upserted, removed
// ones retired (retired_at set: the row and the machine's history stay, Load
// and Get no longer see it; a machine registered again is active again). An
// upsert never overwrites a row whose updated_at is newer than the entry's,
// so a replica holding an older copy of an entry does not undo another
// replica's newer write of it; a retired row comes back only for an entry
// written after its last update (a copy held from before the retirement
// does not resurrect it).
//
// Every Save invalidates the changed ids in its own cache and NOTIFYs them
// on the channel <schema>_machines; Run LISTENs there and invalidates the
// cache of every other Registry on the database.
type Registry struct {
	pool     *pgxpool.Pool
	machines string // qualified table name
	channel  string
	timeout  time.Duration
	opts     RegistryOptions
	logger   *slog.Logger
	cache    *Cache[string, *twin.Info] // nil value: no such machine

	mu    sync.Mutex             // one Save at a time
	known bool                   // last holds the stored registry
	last  map[string]*savedEntry // each entry as last loaded or saved

	loads atomic.Int64 // database lookups made by Get

	// onChange, when set, hears the ids of every notified change (nil:
	// everything may have changed), after the cache dropped them.
	onChange func(ids []string)

	testHookLookup      func()               // Get is about to query
	testHookListening   func()               // Run is listening
	testHookInvalidated func(payload string) // Run handled a notification
}

var _ twin.RegistryStore = (*Registry)(nil)

// savedEntry is an entry as stored, and its JSON.
type savedEntry struct {
	info twin.Info
	json []byte
}

// sameInfo reports whether a and b are surely equal without encoding them:
// same texts and times, and the same maps (twin.Registry replaces the maps of
// an entry it changes, never changes them in place).
func sameInfo(a, b *twin.Info) bool {
	return a.ID == b.ID && a.Name == b.Name && a.Site == b.Site && a.Line == b.Line &&
		a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		sameMap(a.Thresholds, b.Thresholds) && sameMap(a.Attributes, b.Attributes) &&
		a.DesiredSchema == b.DesiredSchema && sameMap(a.Commands, b.Commands) && a.OEE == b.OEE
}

// control is the control column of a registry row: the entry's desired
// schema, commands and OEE specification.
type control struct {
	DesiredSchema *twin.Schema                `json:"desiredSchema,omitempty"`
	Commands      map[string]twin.CommandSpec `json:"commands,omitempty"`
	OEE           *twin.OEESpec               `json:"oee,omitempty"`
}

func sameMap[V any](a, b map[string]V) bool {
	return len(a) == len(b) && reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// maxNotifyPayload is the largest NOTIFY payload Save sends (PostgreSQL
// takes up to 8000 bytes); past it, it sends "*": forget every entry.
const maxNotifyPayload = 7900

// NewRegistry returns the registry in the tables of s.
func NewRegistry(s *Store, opts RegistryOptions) (*Registry, error) {
	if opts.CacheSize == 0 {
		opts.CacheSize = 10_000
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = time.Second
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 30 * time.Second
	}
	r := &Registry{
		pool:     s.pool,
		machines: pgx.Identifier{s.schema, "machines"}.Sanitize(),
		channel:  registryChannel(s.schema),
		timeout:  s.opts.WriteTimeout,
		opts:     opts,
		logger:   s.base.With("component", "postgres_registry"),
	}
	c, err := NewCache(opts.CacheSize, r.lookup)
	if err != nil {
		return nil, fmt.Errorf("creating registry: %w", err)
	}
	r.cache = c
	return r, nil
}

// registryChannel is the NOTIFY channel of schema's registry:
// <schema>_machines, or a hashed name when that is longer than an
// identifier may be.
func registryChannel(schema string) string { return notifyChannel(schema, "machines") }

const machineColumns = `id, name, site, line, thresholds, attributes, control, created_at, updated_at`

func scanInfo(row pgx.Row) (twin.Info, error) {
	var (
		in          twin.Info
		ths, attrs  []byte
		ctl         []byte
		created, up time.Time
	)
	if err := row.Scan(&in.ID, &in.Name, &in.Site, &in.Line, &ths, &attrs, &ctl, &created, &up); err != nil {
		return twin.Info{}, err
	}
	if err := json.Unmarshal(ths, &in.Thresholds); err != nil {
		return twin.Info{}, fmt.Errorf("decoding thresholds of machine %q: %w", in.ID, err)
	}
	if err := json.Unmarshal(attrs, &in.Attributes); err != nil {
		return twin.Info{}, fmt.Errorf("decoding attributes of machine %q: %w", in.ID, err)
	}
	var c control
	if err := json.Unmarshal(ctl, &c); err != nil {
		return twin.Info{}, fmt.Errorf("decoding control of machine %q: %w", in.ID, err)
	}
	in.DesiredSchema, in.Commands, in.OEE = c.DesiredSchema, c.Commands, c.OEE
	if len(in.Thresholds) == 0 {
		in.Thresholds = nil
	}
	if len(in.Attributes) == 0 {
		in.Attributes = nil
	}
	in.CreatedAt, in.UpdatedAt = created.UTC(), up.UTC()
	return in, nil
}

// Load implements twin.RegistryStore: the active machines, in id order
// (bytewise, as Go sorts). They become the baseline later Saves write the
// changes against.
func (r *Registry) Load(ctx context.Context) ([]twin.Info, error) {
	infos, err := r.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	last := make(map[string]*savedEntry, len(infos))
	for _, in := range infos {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("loading registry: encoding machine %q: %w", in.ID, err)
		}
		last[in.ID] = &savedEntry{info: in, json: b}
	}
	r.mu.Lock()
	r.last, r.known = last, true
	r.mu.Unlock()
	return infos, nil
}

// Snapshot returns the active machines, in id order, without changing the
// baseline of Save: for a replica refreshing its view after other
// replicas' changes.
func (r *Registry) Snapshot(ctx context.Context) ([]twin.Info, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	rows, err := r.pool.Query(ctx, `SELECT `+machineColumns+` FROM `+r.machines+
		` WHERE retired_at IS NULL ORDER BY id COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("loading registry: %w", err)
	}
	infos, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (twin.Info, error) { return scanInfo(row) })
	if err != nil {
		return nil, fmt.Errorf("loading registry: %w", err)
	}
	if len(infos) == 0 {
		return nil, nil
	}
	return infos, nil
}

// bare reports whether in is an auto-registration: an id and nothing else.
func bare(in *twin.Info) bool {
	return in.Name == "" && in.Site == "" && in.Line == "" && len(in.Thresholds) == 0 && len(in.Attributes) == 0 &&
		in.DesiredSchema == nil && len(in.Commands) == 0 && in.OEE == nil
}

// Save implements twin.RegistryStore: it writes what changed since the
// last Load or Save, in one transaction, and NOTIFYs the changed ids.
func (r *Registry) Save(ctx context.Context, all []twin.Info) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	enc := make(map[string]*savedEntry, len(all))
	var changed, fresh []json.RawMessage
	var ids []string
	for _, in := range all {
		old, ok := r.last[in.ID]
		if r.known && ok && sameInfo(&old.info, &in) {
			enc[in.ID] = old
			continue
		}
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("saving registry: encoding machine %q: %w", in.ID, err)
		}
		if !validName(in.ID) || bytes.Contains(b, []byte(`\u0000`)) {
			return fmt.Errorf("saving registry: machine %q: texts must be UTF-8 without NUL: %w", in.ID, twin.ErrInvalid)
		}
		enc[in.ID] = &savedEntry{info: in, json: b}
		switch {
		case !ok && bare(&in):
			// A machine this replica registered itself on its first sample,
			// unknown here until now: another replica may have stored it,
			// with a name, thresholds…, in the meantime. Insert it only if
			// nobody has; the stored entry comes back by NOTIFY.
			fresh = append(fresh, b)
			ids = append(ids, in.ID)
		case !r.known || !ok || !bytes.Equal(old.json, b):
			changed = append(changed, b)
			ids = append(ids, in.ID)
		}
	}
	var removed []string
	if r.known {
		for id := range r.last {
			if _, ok := enc[id]; !ok {
				removed = append(removed, id)
			}
		}
		if len(changed) == 0 && len(fresh) == 0 && len(removed) == 0 {
			r.last = enc
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("saving registry: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if !r.known {
		// Never loaded: the stored registry is the baseline.
		rows, err := tx.Query(ctx, `SELECT id FROM `+r.machines+` WHERE retired_at IS NULL`)
		if err != nil {
			return fmt.Errorf("saving registry: reading ids: %w", err)
		}
		stored, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("saving registry: reading ids: %w", err)
		}
		for _, id := range stored {
			if _, ok := enc[id]; !ok {
				removed = append(removed, id)
			}
		}
		if len(changed) == 0 && len(fresh) == 0 && len(removed) == 0 {
			r.last, r.known = enc, true
			return nil
		}
	}
	if len(changed) > 0 {
		doc, err := json.Marshal(changed)
		if err != nil {
			return fmt.Errorf("saving registry: encoding: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO `+r.machines+` AS m (id, name, site, line, thresholds, attributes, control, created_at, updated_at, retired_at)
			SELECT x.id, coalesce(x.name, ''), coalesce(x.site, ''), coalesce(x.line, ''),
				coalesce(x.thresholds, '{}'), coalesce(x.attributes, '{}'),
				jsonb_strip_nulls(jsonb_build_object('desiredSchema', x."desiredSchema", 'commands', x.commands, 'oee', x.oee)),
				x."createdAt", x."updatedAt", NULL
			FROM jsonb_to_recordset($1::jsonb) AS x(id text, name text, site text, line text,
				thresholds jsonb, attributes jsonb, "desiredSchema" jsonb, commands jsonb, oee jsonb,
				"createdAt" timestamptz, "updatedAt" timestamptz)
			ON CONFLICT (id) DO UPDATE SET
				name = EXCLUDED.name, site = EXCLUDED.site, line = EXCLUDED.line,
				thresholds = EXCLUDED.thresholds, attributes = EXCLUDED.attributes, control = EXCLUDED.control,
				created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, retired_at = NULL
			WHERE CASE WHEN m.retired_at IS NOT NULL THEN m.updated_at < EXCLUDED.updated_at
				ELSE m.updated_at <= EXCLUDED.updated_at END`, string(doc)); err != nil {
			return fmt.Errorf("saving registry: upserting %d machines: %w", len(changed), err)
		}
	}
	if len(fresh) > 0 {
		doc, err := json.Marshal(fresh)
		if err != nil {
			return fmt.Errorf("saving registry: encoding: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO `+r.machines+` (id, name, site, line, thresholds, attributes, control, created_at, updated_at, retired_at)
			SELECT x.id, '', '', '', '{}', '{}', '{}', x."createdAt", x."updatedAt", NULL
			FROM jsonb_to_recordset($1::jsonb) AS x(id text, "createdAt" timestamptz, "updatedAt" timestamptz)
			ON CONFLICT (id) DO NOTHING`, string(doc)); err != nil {
			return fmt.Errorf("saving registry: registering %d machines: %w", len(fresh), err)
		}
	}
	if len(removed) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE `+r.machines+` SET retired_at = now()
			WHERE id = ANY($1) AND retired_at IS NULL`, removed); err != nil {
			return fmt.Errorf("saving registry: retiring %d machines: %w", len(removed), err)
		}
		ids = append(ids, removed...)
	}
	payload := notifyPayload(ids)
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, r.channel, payload); err != nil {
		return fmt.Errorf("saving registry: notifying: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("saving registry: committing: %w", err)
	}
	r.last, r.known = enc, true
	for _, id := range ids {
		r.cache.Invalidate(id)
	}
	return nil
}

// notifyPayload is the JSON array of ids, or "*" when too long.
func notifyPayload(ids []string) string {
	b, err := json.Marshal(ids)
	if err != nil || len(b) > maxNotifyPayload {
		return "*"
	}
	return string(b)
}

// Get returns the registry entry of an active machine, from the cache or
// else the database (concurrent misses of one id make one query); an
// unknown machine is an error wrapping twin.ErrNotFound, and is cached too.
// The entry is shared: do not change its maps.
func (r *Registry) Get(ctx context.Context, id string) (twin.Info, error) {
	in, err := r.cache.Get(ctx, id)
	if err != nil {
		return twin.Info{}, fmt.Errorf("getting machine %q: %w", id, err)
	}
	if in == nil {
		return twin.Info{}, fmt.Errorf("%w: machine %q", twin.ErrNotFound, id)
	}
	return *in, nil
}

// lookup is the cache's load function.
func (r *Registry) lookup(ctx context.Context, id string) (*twin.Info, error) {
	r.loads.Add(1)
	if r.testHookLookup != nil {
		r.testHookLookup()
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	in, err := scanInfo(r.pool.QueryRow(ctx, `SELECT `+machineColumns+` FROM `+r.machines+
		` WHERE id = $1 AND retired_at IS NULL`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &in, nil
}

// selectWithAttributes finds the active machines whose attributes contain
// $1, with the partial GIN index machines_active_attributes_idx (the
// EXPLAIN test checks it); %s is the table. Ordered as Go orders strings.
const selectWithAttributes = `SELECT id FROM %s
		WHERE retired_at IS NULL AND attributes @> $1::jsonb ORDER BY id COLLATE "C"`

// WithAttributes returns the ids of the active machines whose attributes
// contain attrs (JSONB containment, served by the partial GIN index), in id
// order.
func (r *Registry) WithAttributes(ctx context.Context, attrs map[string]any) ([]string, error) {
	doc, err := json.Marshal(attrs)
	if err != nil {
		return nil, fmt.Errorf("finding machines by attributes: %w: %v", twin.ErrInvalid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	rows, err := r.pool.Query(ctx, fmt.Sprintf(selectWithAttributes, r.machines), string(doc))
	if err != nil {
		return nil, fmt.Errorf("finding machines by attributes: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("finding machines by attributes: %w", err)
	}
	return ids, nil
}

// Run LISTENs for the registry changes of other replicas and invalidates
// their ids in the cache, until ctx ends; it returns nil then. It keeps a
// connection of its own, outside the pool, and reconnects when it loses
// it; while it is not listening, the cache is emptied (a change may have
// been missed) and Get reads through to the database.
func (r *Registry) Run(ctx context.Context) error {
	l := &listener{
		connConfig: r.pool.Config().ConnConfig,
		channel:    r.channel,
		timeout:    r.timeout,
		retry:      r.opts.RetryInterval,
		ping:       r.opts.PingInterval,
		logger:     r.logger,
		what:       "registry changes",
		listening: func() {
			r.cache.Purge()
			if r.onChange != nil {
				r.onChange(nil)
			}
			if r.testHookListening != nil {
				r.testHookListening()
			}
		},
		notified: func(payload string) {
			r.invalidate(payload)
			if r.testHookInvalidated != nil {
				r.testHookInvalidated(payload)
			}
		},
		stopped: r.cache.Purge,
	}
	return l.run(ctx)
}

// OnChange makes Run call fn with the ids of each change notified by any
// Registry on the database, this one included — nil when everything may
// have changed: a long list, and each time LISTEN takes effect (at start
// and after a lost connection: changes made meanwhile were not notified) —
// once the cache forgot them, so fn may read them back. Call it before Run.
func (r *Registry) OnChange(fn func(ids []string)) { r.onChange = fn }

// invalidate drops the ids of a notification's payload from the cache.
func (r *Registry) invalidate(payload string) {
	var ids []string
	if payload == "*" || json.Unmarshal([]byte(payload), &ids) != nil {
		r.cache.Purge()
		ids = nil
	} else {
		for _, id := range ids {
			r.cache.Invalidate(id)
		}
	}
	if r.onChange != nil {
		r.onChange(ids)
	}
}
