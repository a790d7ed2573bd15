package api

import (
	"encoding/json"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/export"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/twin"
)

// CSV answers (docs/export.md): GET series, fleet, alarms and audit answer
// CSV for format=csv or an Accept that prefers text/csv, with a header row,
// RFC 4180 quoting (CRLF), times in RFC 3339 UTC with milliseconds, and
// every text cell that comes from users defused against spreadsheet
// formulas (export.Cell). NaN and ±Inf values, which JSON cannot carry,
// are written as NaN, +Inf and -Inf.

// wantsCSV reports whether r asks for CSV: format=csv, or (without a
// format) an Accept naming text/csv with a quality above that of
// application/json. A format other than csv or json is refused by
// csvFormat before.
func wantsCSV(r *http.Request) bool {
	if f := r.URL.Query().Get("format"); f != "" {
		return f == "csv"
	}
	return acceptsCSV(r.Header.Get("Accept"))
}

// acceptsCSV reports whether an Accept header prefers text/csv to JSON:
// text/csv named with q > 0, and application/json not named with a q as
// high (a tie goes to JSON, the default). Wildcards name neither.
func acceptsCSV(accept string) bool {
	csvQ := acceptQ(accept, "text/csv")
	return csvQ > 0 && csvQ > acceptQ(accept, "application/json")
}

// acceptQ returns the quality an Accept header gives the media type named
// exactly (1 without q), or -1 when it does not name it.
func acceptQ(accept, mediaType string) float64 {
	best := -1.0
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || mt != mediaType {
			continue
		}
		q := 1.0
		if s, ok := params["q"]; ok {
			if q, err = strconv.ParseFloat(s, 64); err != nil {
				continue
			}
		}
		best = max(best, q)
	}
	return best
}

// csvFormat checks the format parameter of a route that answers JSON or
// CSV; it answers 400 and returns false for any other.
func csvFormat(w http.ResponseWriter, r *http.Request) bool {
	switch r.URL.Query().Get("format") {
	case "", "json", "csv":
		return true
	}
	badParam(w, "format", "must be json or csv")
	return false
}

// attachment is the Content-Disposition of a download named name (made of
// letters, digits, '.', '_' and '-' only, so it is safe in any file system
// and needs no quoting rules).
func attachment(name string) string {
	safe := []byte(name)
	for i, c := range safe {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			safe[i] = '_'
		}
	}
	return `attachment; filename="` + string(safe) + `"`
}

// csvAnswer starts a 200 CSV answer downloaded as filename, header first.
func csvAnswer(w http.ResponseWriter, filename string, header ...string) *export.Table {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", attachment(filename))
	w.WriteHeader(http.StatusOK)
	t, _ := export.NewTable(w, header...) // the header is written on Flush
	return t
}

func csvTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return export.FormatTime(t.UnixMilli())
}

func csvTimePtr(t *time.Time) string {
	if t == nil {
		return ""
	}
	return csvTime(*t)
}

func csvMs(ms int64) string {
	if ms == 0 {
		return ""
	}
	return export.FormatTime(ms)
}

func csvFloatPtr(v *float64) string {
	if v == nil {
		return ""
	}
	return export.FormatValue(*v)
}

// writeSeriesCSV is the CSV of GET /api/v1/machines/{id}/series: a row per
// point (per bucket start, with step).
func writeSeriesCSV(w http.ResponseWriter, key store.SeriesKey, from, to int64, pts []store.Point) {
	t := csvAnswer(w, key.Machine+"_"+key.Metric+"_"+strconv.FormatInt(from, 10)+"-"+strconv.FormatInt(to, 10)+".csv",
		"time", "machine", "metric", "value")
	rec := []string{"", export.Cell(key.Machine), export.Cell(key.Metric), ""}
	for _, p := range pts {
		rec[0], rec[3] = export.FormatTime(p.Time), export.FormatValue(p.Value)
		_ = t.Write(rec)
	}
	_ = t.Flush()
}

// writeMachinesCSV is the CSV of the fleet: a row per machine, its latest
// value of every metric any of them has in a column "metric.NAME".
func writeMachinesCSV(w http.ResponseWriter, ms []twin.Machine) {
	var metrics []string
	seen := map[string]bool{}
	for _, m := range ms {
		for k := range m.Metrics {
			if !seen[k] {
				seen[k] = true
				metrics = append(metrics, k)
			}
		}
	}
	slices.Sort(metrics)
	header := []string{"id", "name", "site", "line", "status", "alarm", "lastSeen", "rate1m", "rate5m"}
	for _, k := range metrics {
		header = append(header, export.Cell("metric."+k))
	}
	t := csvAnswer(w, "fleet.csv", header...)
	rec := make([]string, len(header))
	for _, m := range ms {
		rec = append(rec[:0], export.Cell(m.ID), export.Cell(m.Name), export.Cell(m.Site), export.Cell(m.Line),
			m.Status, strconv.FormatBool(m.Alarm), csvMs(m.LastSeen), export.FormatValue(m.Rate1m), export.FormatValue(m.Rate5m))
		for _, k := range metrics {
			v := ""
			if mv, ok := m.Metrics[k]; ok {
				v = export.FormatValue(mv.Value)
			}
			rec = append(rec, v)
		}
		_ = t.Write(rec)
	}
	_ = t.Flush()
}

// writeAlarmsCSV is the CSV of GET /api/v1/alarms: a row per alarm.
func writeAlarmsCSV(w http.ResponseWriter, list []twin.Alarm) {
	t := csvAnswer(w, "alarms.csv", "id", "machine", "metric", "kind", "limit", "value", "state", "raisedAt", "clearedAt",
		"acknowledged", "acknowledgedAt", "acknowledgedBy", "acknowledgeNote")
	for _, al := range list {
		_ = t.Write([]string{export.Cell(al.ID), export.Cell(al.Machine), export.Cell(al.Metric), al.Kind,
			csvFloatPtr(al.Limit), csvFloatPtr(al.Value), al.State, csvTime(al.RaisedAt), csvTimePtr(al.ClearedAt),
			strconv.FormatBool(al.Acked), csvTimePtr(al.AckedAt), export.Cell(al.AckedBy), export.Cell(al.AckNote)})
	}
	_ = t.Flush()
}

// writeAuditCSV is the CSV of GET /api/v1/audit: a row per entry, its
// detail as a JSON object in one cell.
func writeAuditCSV(w http.ResponseWriter, entries []auth.AuditEntry) {
	t := csvAnswer(w, "audit.csv", "id", "at", "actor", "actorKind", "action", "machine", "target", "remote", "outcome", "detail")
	for _, e := range entries {
		detail := ""
		if len(e.Detail) > 0 {
			b, _ := json.Marshal(e.Detail)
			detail = string(b)
		}
		_ = t.Write([]string{strconv.FormatUint(e.ID, 10), csvTime(e.At), export.Cell(e.Actor), export.Cell(string(e.ActorKind)),
			export.Cell(e.Action), export.Cell(e.Machine), export.Cell(e.Target), export.Cell(e.Remote), export.Cell(e.Outcome),
			export.Cell(detail)})
	}
	_ = t.Flush()
}
