package api

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
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
