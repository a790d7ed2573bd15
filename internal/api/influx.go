package api

import (
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/ingest"
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
	MergeAttributes(id string, attrs map[string]string) (map[string]string, bool, error)
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
		tr.OnDelete(lp.tags.Forget)
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
	return []prometheus.Collector{lp.dropped, lp.tagChanges, lp.tagErrors}
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
	// Merged and remembered under the cache's lock: two requests with
	// different tags for one machine leave the registry and the cache
	// agreeing on the last.
	lp.tags.Apply(st.Tags, func(set ingest.TagSet) bool {
		before, changed, err := lp.reg.MergeAttributes(set.Machine, set.Tags)
		if err != nil {
			lp.tagErrors.Inc()
			a.logger.Warn("line-protocol tags not kept as attributes", "machine", set.Machine, "err", err)
			return false
		}
		if changed {
			lp.tagChanges.Inc()
		}
		if len(before) > 0 && a.auth != nil && a.auth.Audit != nil {
			after := make(map[string]string, len(before))
			for k := range before {
				after[k] = set.Tags[k]
			}
			id := identity(r)
			audits = append(audits, auth.AuditEntry{
				At: a.now().UTC(), Actor: id.Name, ActorKind: id.Kind, Action: "machine.tags",
				Machine: set.Machine, Remote: info(r).remote, Outcome: "ok",
				Detail: map[string]any{"before": before, "after": after},
			})
		}
		return true
	})
	for _, e := range audits { // not under the lock: the audit log syncs
		a.appendAudit(r.Context(), e)
	}
}
