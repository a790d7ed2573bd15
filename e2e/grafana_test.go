package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/twinline/twinline/deploy"
)

// promResponse is the envelope of every Prometheus HTTP API answer.
type promResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Warnings  []string        `json:"warnings"`
	Data      json.RawMessage `json:"data"`
}

// promQuery is the data of a query or query_range answer.
type promQuery struct {
	ResultType string            `json:"resultType"`
	Result     []json.RawMessage `json:"result"`
}

// prom calls twinline's Prometheus query API the way Grafana's Prometheus
// datasource does with httpMethod POST (deploy/grafana/provisioning):
// a form body for query and query_range, GET for label values. It fails
// the test on anything but an answer with status "success", quoting
// Prometheus' errorType and error.
func (s *server) prom(method, path string, form url.Values) json.RawMessage {
	s.t.Helper()
	var r response
	if method == "POST" {
		r = s.do("POST", "/prometheus/api/v1/"+path, "application/x-www-form-urlencoded", []byte(form.Encode()))
	} else {
		r = s.get("/prometheus/api/v1/" + path + "?" + form.Encode())
	}
	if r.status == 404 && !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		s.t.Fatalf("%s /prometheus/api/v1/%s: this twinline serves no Prometheus query API "+
			"(/prometheus/api/v1/…, internal/promapi: issue 17, the query API part): 404 %s", method, path, bytes.TrimSpace(r.body))
	}
	var pr promResponse
	if err := json.Unmarshal(r.body, &pr); err != nil {
		s.t.Fatalf("%s /prometheus/api/v1/%s %v: %d, not Prometheus JSON (%v): %s", method, path, form, r.status, err, r.body)
	}
	if r.status != 200 || pr.Status != "success" {
		s.t.Fatalf("%s /prometheus/api/v1/%s %v: %d %s: %s: %s", method, path, form, r.status, pr.Status, pr.ErrorType, pr.Error)
	}
	for _, w := range pr.Warnings {
		s.t.Logf("%s /prometheus/api/v1/%s %v: warning: %s", method, path, form, w)
	}
	return pr.Data
}

func unixSeconds(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64)
}

// mayBeEmpty reports whether an expression may rightly select nothing: it
// filters with a comparison (temp > $threshold), which the demo fleet
// need not meet at the moment of the test.
func mayBeEmpty(t *testing.T, expr string) bool {
	e, err := deploy.NewParser().ParseExpr(expr)
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	filters := false
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if b, ok := n.(*parser.BinaryExpr); ok && b.Op.IsComparisonOperator() && !b.ReturnBool {
			filters = true
		}
		return nil
	})
	return filters
}

// TestGrafanaDashboardQueries runs every PromQL expression of the
// provisioned Grafana dashboards that reads twinline's own query API (the
// datasource "twinline": deploy.TwinlineQueries, the plant dashboard)
// against a server with the demo fleet, on the embedded store and on
// PostgreSQL, as Grafana sends them (Grafana's variables substituted by
// deploy: $__interval and friends 5m, "All" .*, the threshold its value):
// panels' range queries at the panels' 10 s interval and at 60 s (the
// step from which the PostgreSQL store may read its aggregates), instant
// queries, and the variables' label_values as label-values calls. Each
// must answer status "success"; each must return data unless it filters
// with a comparison; the variables list the demo fleet's sites, lines and
// machines; the heatmap has a row per machine.
func TestGrafanaDashboardQueries(t *testing.T) {
	for _, store := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"embedded", func(*testing.T) []string { return nil }},
		{"postgres", func(t *testing.T) []string { return []string{"--store", "postgres", "--postgres-url", pgDatabase(t)} }},
	} {
		t.Run(store.name, func(t *testing.T) {
			testDashboardQueries(t, store.args(t))
		})
	}
}

func testDashboardQueries(t *testing.T, args []string) {
	qs, err := deploy.TwinlineQueries()
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) == 0 {
		t.Fatal("no dashboard query reads the twinline datasource")
	}
	const machines = 12
	s := start(t, "", append([]string{"--demo", "--demo-machines", strconv.Itoa(machines), "--demo-rate", "240"}, args...)...)

	// The API answers at all (a clear failure before the query API is
	// merged), then every demo machine has a few temperature samples:
	// rate() and the *_over_time functions need two and more in their
	// windows.
	s.prom("POST", "query", url.Values{"query": {"vector(1)"}})
	const ready = "count(count_over_time(temp[5m]) >= 3)"
	eventually(t, 60*time.Second, fmt.Sprintf("%s = %d (the demo machines' temp in the query API)", ready, machines), func() bool {
		var d promQuery
		if err := json.Unmarshal(s.prom("POST", "query", url.Values{"query": {ready}}), &d); err != nil {
			t.Fatal(err)
		}
		if len(d.Result) != 1 {
			return false
		}
		var v struct {
			Value [2]any `json:"value"`
		}
		if err := json.Unmarshal(d.Result[0], &v); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(v.Value[1]) == strconv.Itoa(machines)
	})

	heatmap := false
	for _, q := range qs {
		end := time.Now()
		switch {
		case q.Label != "":
			// Grafana's label_values(metric, label): the label's values
			// among the series of metric.
			var values []string
			if err := json.Unmarshal(s.prom("GET", "label/"+q.Label+"/values", url.Values{
				"match[]": {q.Expr}, "start": {unixSeconds(end.Add(-time.Hour))}, "end": {unixSeconds(end)},
			}), &values); err != nil {
				t.Fatalf("%s: %v", q.Where, err)
			}
			if len(values) == 0 || q.Label == "machine" && len(values) != machines {
				t.Errorf("%s: label_values(%s, %s) = %v, want the demo fleet's (%d machines)", q.Where, q.Expr, q.Label, values, machines)
			}
		case q.Instant:
			var d promQuery
			if err := json.Unmarshal(s.prom("POST", "query", url.Values{"query": {q.Expr}, "time": {unixSeconds(end)}}), &d); err != nil {
				t.Fatalf("%s: %v", q.Where, err)
			}
			if d.ResultType != "vector" {
				t.Errorf("%s: %s: resultType %q, want vector (a table of labels)", q.Where, q.Expr, d.ResultType)
			}
			if len(d.Result) == 0 && !mayBeEmpty(t, q.Expr) {
				t.Errorf("%s: %s: no data at %s", q.Where, q.Expr, end.Format(time.RFC3339))
			}
		default:
			for _, step := range []time.Duration{10 * time.Second, time.Minute} {
				var d promQuery
				if err := json.Unmarshal(s.prom("POST", "query_range", url.Values{
					"query": {q.Expr}, "start": {unixSeconds(end.Add(-10 * time.Minute))}, "end": {unixSeconds(end)}, "step": {strconv.Itoa(int(step.Seconds()))},
				}), &d); err != nil {
					t.Fatalf("%s: %v", q.Where, err)
				}
				if d.ResultType != "matrix" {
					t.Errorf("%s: %s: resultType %q, want matrix", q.Where, q.Expr, d.ResultType)
				}
				if len(d.Result) == 0 && !mayBeEmpty(t, q.Expr) {
					t.Errorf("%s: %s (step %s): no data over the last 10 minutes", q.Where, q.Expr, step)
				}
				if strings.Contains(q.Where, `"Fleet temperature`) {
					heatmap = true
					if len(d.Result) != machines {
						t.Errorf("%s: %s (step %s): %d rows, want one per demo machine (%d)", q.Where, q.Expr, step, len(d.Result), machines)
					}
				}
			}
		}
	}
	if !heatmap {
		t.Error(`no query of a panel "Fleet temperature …" (the plant dashboard's heatmap)`)
	}
}
