package api

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/twin"
)

// influxVersion is what /ping reports, so InfluxDB 1.x clients that check
// the server version treat twinline as a 1.8-compatible write endpoint.
const influxVersion = "1.8.10"

// handlePing is GET|HEAD /ping, answered like InfluxDB.
func (a *API) handlePing(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Influxdb-Version", influxVersion)
	w.Header().Set("X-Influxdb-Build", "OSS")
	w.WriteHeader(http.StatusNoContent)
}

var (
	reShowDatabases  = regexp.MustCompile(`(?i)^\s*SHOW\s+DATABASES\s*$`)
	reCreateDatabase = regexp.MustCompile(`(?i)^\s*CREATE\s+DATABASE\s+("(?:[^"\\]|\\.)+"|[A-Za-z0-9_\-.]+)(\s+WITH\s+.*)?$`)
)

type influxResult struct {
	StatementID int            `json:"statement_id"`
	Series      []influxSeries `json:"series,omitempty"`
	Error       string         `json:"error,omitempty"`
}

type influxSeries struct {
	Name    string     `json:"name"`
	Columns []string   `json:"columns"`
	Values  [][]string `json:"values"`
}

// handleQuery is GET|POST /query. twinline stores telemetry, not InfluxQL
// databases: it answers the two statements write clients send before writing
// (SHOW DATABASES, CREATE DATABASE) as InfluxDB 1.x does, and reports any
// other statement as an error of that statement, as InfluxDB does.
func (a *API) handleQuery(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxRegistryBody)
	q := r.FormValue("q")
	if strings.TrimSpace(q) == "" {
		w.Header().Set("X-Influxdb-Version", influxVersion)
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": `missing required parameter "q"`})
		return
	}
	var results []influxResult
	for _, stmt := range strings.Split(q, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		res := influxResult{StatementID: len(results)}
		switch {
		case reShowDatabases.MatchString(stmt):
			s := influxSeries{Name: "databases", Columns: []string{"name"}, Values: [][]string{}}
			for _, db := range a.knownDatabases() {
				s.Values = append(s.Values, []string{db})
			}
			res.Series = []influxSeries{s}
		case reCreateDatabase.MatchString(stmt):
			name := reCreateDatabase.FindStringSubmatch(stmt)[1]
			a.addDatabase(strings.Trim(name, `"`))
		default:
			res.Error = "twinline answers only SHOW DATABASES and CREATE DATABASE; query data with GET /api/v1/machines/{id}/series"
		}
		results = append(results, res)
	}
	w.Header().Set("X-Influxdb-Version", influxVersion)
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

func (a *API) knownDatabases() []string {
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	return slices.Clone(a.databases)
}

// addDatabase records a database name; the list is bounded so clients
// cannot grow it without limit.
func (a *API) addDatabase(name string) {
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	if name == "" || slices.Contains(a.databases, name) || len(a.databases) >= 64 {
		return
	}
	a.databases = append(a.databases, name)
}

// tagRegistry is the registry's side of line-protocol tags: *twin.Registry.
type tagRegistry interface {
	MergeTags(id string, attrs map[string]string) (twin.TagMerge, error)
	OnDelete(fn func(id string))
}

// lineProtocol is the API's line-protocol state beyond the decoder
// options: the tags it applied to the registry, and its counters.
type lineProtocol struct {
	reg        tagRegistry // nil: tags are dropped
	tags       *ingest.TagCache
	dropped    prometheus.Counter
	tagChanges prometheus.Counter
	tagErrors  prometheus.Counter
	tagIgnored prometheus.Counter
	coalesced  prometheus.Counter

	mu    sync.Mutex          // guards marks; taken inside the cache's lock
	marks map[string]*tagMark // by machine
	prune int                 // len(marks) at which to drop the stale ones
}

// tagMark is what the API keeps of a machine whose tags changed or failed:
// when its last machine.tags audit entry was written and how many changes
// have gone unrecorded since, and when the registry last refused its tags.
type tagMark struct {
	audited   time.Time
	coalesced int
	failed    time.Time
}

const (
	// tagAuditEvery is the least time between two machine.tags audit
	// entries of a machine: the changes in between are counted in the
	// next entry's "coalesced".
	tagAuditEvery = 10 * time.Minute
	// tagRetryAfter is how long after the registry refused a machine's
	// tags (too large, invalid text) its changed tags are not tried.
	tagRetryAfter = time.Minute
)

// mark returns machine's tagMark, made if needed; lp.mu held. Marks that
// no longer matter are dropped as the map doubles.
func (lp *lineProtocol) mark(machine string, now time.Time) *tagMark {
	if m := lp.marks[machine]; m != nil {
		return m
	}
	if lp.marks == nil {
		lp.marks = map[string]*tagMark{}
	}
	if len(lp.marks) >= lp.prune {
		for id, m := range lp.marks {
			if m.coalesced == 0 && now.Sub(m.audited) >= tagAuditEvery && now.Sub(m.failed) >= tagRetryAfter {
				delete(lp.marks, id)
			}
		}
		lp.prune = max(1024, 2*len(lp.marks))
	}
	m := &tagMark{}
	lp.marks[machine] = m
	return m
}

// forget drops machine's mark (deleted from the registry).
func (lp *lineProtocol) forget(machine string) {
	lp.tags.Forget(machine)
	lp.mu.Lock()
	delete(lp.marks, machine)
	lp.mu.Unlock()
}

// initLineProtocol sets up the line-protocol options (--lp-missing-machine,
// tags as attributes) and returns the collectors to register.
func (a *API) initLineProtocol(opts Options, reg registry) []prometheus.Collector {
	a.decodeOpts.MissingMachine = opts.LPMissingMachine
	lp := &a.lp
	if tr, ok := reg.(tagRegistry); ok && tr != nil {
		lp.reg, lp.tags = tr, ingest.NewTagCache()
		a.decodeOpts.Tags = lp.tags
		// A machine deleted and sending again gets its tags back.
		tr.OnDelete(lp.forget)
	}
	lp.dropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_ingest_lines_dropped_total",
		Help: "Line-protocol lines without a machine id tag dropped under --lp-missing-machine=drop.",
	})
	lp.tagChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_ingest_tag_attribute_updates_total",
		Help: "Registry entries updated from line-protocol tags (a machine's first tags, or a tag that changed).",
	})
	lp.tagErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_ingest_tag_attribute_errors_total",
		Help: "Line-protocol tag sets not kept as attributes because the registry refused them (too large, invalid text).",
	})
	lp.tagIgnored = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_ingest_tag_keys_ignored_total",
		Help: "Line-protocol tags not kept as attributes because their machine already has the most attributes tags may give it (32) and the key is new.",
	})
	lp.coalesced = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_ingest_tag_audit_coalesced_total",
		Help: "Tag changes not written to the audit log as an entry of their own (at most one machine.tags entry per machine per 10 minutes; the next one counts them).",
	})
	return []prometheus.Collector{lp.dropped, lp.tagChanges, lp.tagErrors, lp.tagIgnored, lp.coalesced}
}

// lineStats takes what a line-protocol decode reports besides its events:
// ignored strings and dropped lines are counted, tags that differ from
// what the machines have are merged into their registry attributes (latest
// wins), and each change of an attribute's value is recorded in the audit
// log as machine.tags, by the identity that wrote the line.
//
// The tags of accepted lines are applied as they are decoded, before the
// events are durable: they describe the machine, not a sample, and a
// sender retrying a failed write sends them again.
func (a *API) lineStats(r *http.Request, st ingest.Stats) {
	a.ignoredStrings.Add(float64(st.IgnoredStringFields))
	lp := &a.lp
	if st.DroppedLines > 0 {
		lp.dropped.Add(float64(st.DroppedLines))
	}
	if len(st.Tags) == 0 || lp.reg == nil {
		return
	}
	var audits []auth.AuditEntry
	now := a.now()
	// Merged and remembered under the cache's lock: two requests with
	// different tags for one machine leave the registry and the cache
	// agreeing on the last. A set the registry refused is remembered too,
	// so that it is not tried on every request.
	lp.tags.Apply(st.Tags, func(set ingest.TagSet) bool {
		lp.mu.Lock()
		defer lp.mu.Unlock()
		mk := lp.marks[set.Machine]
		if mk != nil && now.Sub(mk.failed) < tagRetryAfter {
			lp.tagErrors.Inc()
			return true
		}
		res, err := lp.reg.MergeTags(set.Machine, set.Tags)
		if res.Ignored > 0 {
			lp.tagIgnored.Add(float64(res.Ignored))
		}
		if err != nil {
			lp.tagErrors.Inc()
			lp.mark(set.Machine, now).failed = now
			// At most once per machine per tagRetryAfter.
			a.logger.Warn("line-protocol tags not kept as attributes", "machine", set.Machine, "err", err)
			return true
		}
		if res.Changed {
			lp.tagChanges.Inc()
		}
		if len(res.Before) == 0 || a.auth == nil || a.auth.Audit == nil {
			return true
		}
		mk = lp.mark(set.Machine, now)
		if !mk.audited.IsZero() && now.Sub(mk.audited) < tagAuditEvery {
			mk.coalesced++
			lp.coalesced.Inc()
			return true
		}
		after := make(map[string]string, len(res.Before))
		for k := range res.Before {
			after[k] = set.Tags[k]
		}
		id := identity(r)
		audits = append(audits, auth.AuditEntry{
			At: now.UTC(), Actor: id.Name, ActorKind: id.Kind, Action: "machine.tags",
			Machine: set.Machine, Remote: info(r).remote, Outcome: "ok",
			Detail: map[string]any{"before": res.Before, "after": after, "coalesced": mk.coalesced},
		})
		mk.audited, mk.coalesced = now, 0
		return true
	})
	for _, e := range audits { // not under the lock: the audit log syncs
		a.appendAudit(r.Context(), e)
	}
}
