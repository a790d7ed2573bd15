package deploy_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"go.yaml.in/yaml/v3"

	"github.com/twinline/twinline/deploy"
)

// queryAPILabels are the labels twinline's Prometheus query API gives
// every series (docs/prometheus-api.md); registry attributes may come on
// top, but the plant dashboard keeps to these.
var queryAPILabels = []string{model.MetricNameLabel, "machine", "site", "line"}

// fileRef is Grafana's $__file{path} in a provisioning value.
var fileRef = regexp.MustCompile(`\$__file\{([^}]+)\}`)

// TestTwinlineDatasource checks the Grafana datasource of twinline's own
// query API against the scale-out compose file: a Prometheus datasource
// on https://<a twinline serve replica that answers queries>:8080/prometheus,
// a host the certificate of init-secrets names and the server allows,
// trusting that certificate, with a bearer token read from a file of the
// twinline-secrets volume as Grafana mounts it, which init-secrets makes
// readable by Grafana's user; Grafana starts after init-secrets.
func TestTwinlineDatasource(t *testing.T) {
	cf := readCompose(t, "compose/docker-compose.scale.yml")
	b, err := os.ReadFile("grafana/provisioning/datasources/datasources.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds deploy.Datasources
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ds.Datasources, func(d deploy.ProvisionedDatasource) bool { return d.UID == deploy.TwinlineDatasource })
	if i < 0 {
		t.Fatalf("datasources.yaml: no datasource with uid %q", deploy.TwinlineDatasource)
	}
	d := ds.Datasources[i]
	if d.Type != "prometheus" || d.Access != "proxy" {
		t.Errorf("datasource %s: type %q, access %q, want prometheus, proxy (Grafana's server calls twinline)", d.Name, d.Type, d.Access)
	}
	if d.JSONData.ManageAlerts == nil || *d.JSONData.ManageAlerts {
		t.Errorf("datasource %s: manageAlerts must be false: twinline has no rules API for Grafana's alerting pages", d.Name)
	}
	u, err := url.Parse(d.URL)
	if err != nil {
		t.Fatalf("datasource %s: url %q: %v", d.Name, d.URL, err)
	}
	if u.Scheme != "https" || u.Port() != "8080" || u.Path != "/prometheus" {
		t.Errorf("datasource %s: url %q, want https://<service>:8080/prometheus (every twinline serves HTTPS here)", d.Name, d.URL)
	}
	svc := cf.services[u.Hostname()]
	if svc == nil {
		t.Fatalf("datasource %s: host %q is not a service of %s", d.Name, u.Hostname(), cf.path)
	}
	cmd := strList(svc["command"])
	if role, _ := flagValue(cmd, "--role"); len(cmd) == 0 || cmd[0] != "serve" || (role != "api" && role != "all") {
		t.Errorf("datasource %s: service %s runs %v: the query API is served by the roles api and all", d.Name, u.Hostname(), cmd)
	}
	env := composeEnv(t, u.Hostname(), svc["environment"])
	if !slices.Contains(strings.Split(env["TWINLINE_ALLOWED_HOSTS"], ","), u.Hostname()) {
		t.Errorf("datasource %s: host %s is not in the service's TWINLINE_ALLOWED_HOSTS %q", d.Name, u.Hostname(), env["TWINLINE_ALLOWED_HOSTS"])
	}
	initEnv := composeEnv(t, "init-secrets", cf.services["init-secrets"]["environment"])
	if !slices.Contains(strings.Split(initEnv["TLS_HOSTS"], ","), u.Hostname()) {
		t.Errorf("datasource %s: the certificate of init-secrets does not name %s (TLS_HOSTS %q)", d.Name, u.Hostname(), initEnv["TLS_HOSTS"])
	}

	graf := cf.services["grafana"]
	secretsAt := mountOf(graf, "twinline-secrets")
	if secretsAt == "" {
		t.Fatalf("grafana does not mount twinline-secrets (the certificate and the token)")
	}
	if dependsOn(graf)["init-secrets"] != "service_completed_successfully" {
		t.Errorf("grafana reads twinline-secrets at start: it must wait for init-secrets (condition service_completed_successfully)")
	}
	if dependsOn(graf)[u.Hostname()] == "" {
		t.Errorf("grafana: no depends_on %s, the service of the twinline datasource", u.Hostname())
	}
	// secret returns the file a secureJsonData value reads, as a name in
	// the twinline-secrets volume.
	secret := func(key, prefix string) string {
		v := d.SecureJSONData[key]
		m := fileRef.FindStringSubmatch(v)
		if m == nil || v != prefix+m[0] {
			t.Errorf("datasource %s: secureJsonData.%s %q, want %q$__file{<a file of twinline-secrets>}", d.Name, key, v, prefix)
			return ""
		}
		if path.Dir(m[1]) != secretsAt {
			t.Errorf("datasource %s: secureJsonData.%s reads %s, but twinline-secrets is mounted at %s", d.Name, key, m[1], secretsAt)
		}
		return path.Base(m[1])
	}
	if !d.JSONData.TLSAuthWithCACert {
		t.Errorf("datasource %s: tlsAuthWithCACert must be true (the self-signed certificate of init-secrets)", d.Name)
	}
	if f := secret("tlsCACert", ""); f != "" && f != "tls.crt" {
		t.Errorf("datasource %s: tlsCACert reads %s, want the certificate tls.crt", d.Name, f)
	}
	if d.JSONData.HTTPHeaderName1 != "Authorization" {
		t.Errorf("datasource %s: httpHeaderName1 %q, want Authorization", d.Name, d.JSONData.HTTPHeaderName1)
	}
	token := secret("httpHeaderValue1", "Bearer ")
	if token == "" {
		return
	}
	// init-secrets makes that file for the uid in QUERY_TOKEN_OWNER:
	// Grafana's user in the grafana/grafana image.
	script, err := os.ReadFile("compose/init-secrets.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(script), fmt.Sprintf(`copy_token %s "$QUERY_TOKEN_OWNER"`, token)) {
		t.Errorf("init-secrets.sh does not make %s for QUERY_TOKEN_OWNER", token)
	}
	const grafanaUID = "472"
	if got := initEnv["QUERY_TOKEN_OWNER"]; got != grafanaUID {
		t.Errorf("init-secrets: QUERY_TOKEN_OWNER %q, want %s (the grafana image's user)", got, grafanaUID)
	}
}

// TestPlantDashboard checks the plant dashboard: every query goes to the
// twinline datasource and reads only the query API's labels; the site,
// line and machine variables come from label_values and narrow the
// panels; there is a heatmap of the fleet's temperature by machine, a
// per-line panel and a top-k of alarms.
func TestPlantDashboard(t *testing.T) {
	const file = "twinline-plant.json"
	dashboards, err := deploy.ReadDashboards()
	if err != nil {
		t.Fatal(err)
	}
	d, ok := dashboards[file]
	if !ok {
		t.Fatalf("no grafana/dashboards/%s", file)
	}
	qs, err := deploy.Queries()
	if err != nil {
		t.Fatal(err)
	}
	p := deploy.NewParser()
	var (
		labelVars = map[string]bool{}
		heatmap   bool
		byLine    bool
		topk      bool
		n         int
	)
	for _, q := range qs {
		if !strings.HasPrefix(q.Where, "deploy/grafana/dashboards/"+file+":") {
			continue
		}
		n++
		if q.Datasource != deploy.TwinlineDatasource {
			t.Errorf("%s: datasource %q, want %q", q.Where, q.Datasource, deploy.TwinlineDatasource)
		}
		expr, err := p.ParseExpr(q.Expr)
		if err != nil {
			t.Errorf("%s: %s: %v", q.Where, q.Expr, err)
			continue
		}
		if q.Label != "" {
			labelVars[q.Label] = true
		}
		narrowed := map[string]bool{}
		for _, sel := range selectorsOf(expr) {
			for _, m := range sel.LabelMatchers {
				if !slices.Contains(queryAPILabels, m.Name) {
					t.Errorf("%s: matcher on %s: the query API's labels are %v", q.Where, m.Name, queryAPILabels)
				}
				narrowed[m.Name] = true
			}
		}
		if q.Label == "" {
			for _, l := range []string{"site", "line", "machine"} {
				if !narrowed[l] {
					t.Errorf("%s: %s ignores the %s variable", q.Where, q.Expr, l)
				}
			}
		}
		heatmap = heatmap || strings.Contains(q.Where, `"Fleet temperature`) && strings.Contains(q.Expr, "by (machine)")
		byLine = byLine || strings.Contains(q.Expr, "by (site, line)")
		topk = topk || strings.Contains(q.Expr, "topk(")
	}
	if n == 0 {
		t.Fatalf("%s: no queries", file)
	}
	for _, l := range []string{"site", "line", "machine"} {
		if !labelVars[l] {
			t.Errorf("%s: no label_values(…, %s) variable", file, l)
		}
	}
	if !heatmap || !byLine || !topk {
		t.Errorf("%s: fleet temperature heatmap by machine %v, per-line panels %v, top alarms (topk) %v: want all", file, heatmap, byLine, topk)
	}
	var types []string
	for _, pn := range d.Panels {
		types = append(types, pn.Type)
	}
	if !slices.Contains(types, "heatmap") {
		t.Errorf("%s: panel types %v, no heatmap", file, types)
	}
}

func selectorsOf(expr parser.Expr) []*parser.VectorSelector {
	var out []*parser.VectorSelector
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			out = append(out, vs)
		}
		return nil
	})
	return out
}

// plantSeries are 20 minutes of demo-like telemetry at 10 s, labelled as
// the query API labels it: four machines on two lines of two sites, one of
// them overheating past 90 °C, with the metrics the demo fleet sends.
const plantSeries = `
load 10s
  temp{machine="press-01", site="lyon", line="l1"}     50+0.5x120
  temp{machine="press-02", site="lyon", line="l1"}     48+0x120
  temp{machine="oven-01", site="lyon", line="l2"}      52+0.01x120
  temp{machine="pump-01", site="porto", line="p1"}     45-0.01x120
  parts_total{machine="press-01", site="lyon", line="l1"}  0+4x120
  parts_total{machine="press-02", site="lyon", line="l1"}  0+4x120
  parts_total{machine="oven-01", site="lyon", line="l2"}   0+0x120
  parts_total{machine="pump-01", site="porto", line="p1"}  0+1x120
  vibration{machine="press-01", site="lyon", line="l1"}    3.2+0x120
  vibration{machine="pump-01", site="porto", line="p1"}    2.6+0x120
  power{machine="press-01", site="lyon", line="l1"}        35+0x120
  power{machine="oven-01", site="lyon", line="l2"}         85+0x120
  power{machine="pump-01", site="porto", line="p1"}        15+0x120
`

// TestTwinlineQueriesEvaluate runs every query of the twinline datasource
// (variables substituted as for the parse checks) on Prometheus' own
// engine over plantSeries: as instant or range queries (10 s and 60 s
// steps) like their panels, the variables' label_values as selectors.
// Each must evaluate without error and, with a machine overheating,
// return data. The end-to-end test (e2e TestGrafanaDashboardQueries)
// runs them on twinline's query API over the demo fleet.
func TestTwinlineQueriesEvaluate(t *testing.T) {
	qs, err := deploy.TwinlineQueries()
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) == 0 {
		t.Fatal("no query reads the twinline datasource")
	}
	st := promqltest.LoadedStorage(t, plantSeries)
	ng := promql.NewEngine(promql.EngineOpts{MaxSamples: 1_000_000, Timeout: time.Minute, Parser: deploy.NewParser()})
	t.Cleanup(func() { ng.Close() })
	ctx := context.Background()
	end := time.Unix(0, 0).Add(20 * time.Minute)
	for _, q := range qs {
		var runs []promql.Query
		switch {
		case q.Label != "" || q.Instant:
			qry, err := ng.NewInstantQuery(ctx, st, nil, q.Expr, end)
			if err != nil {
				t.Errorf("%s: %s: %v", q.Where, q.Expr, err)
				continue
			}
			runs = append(runs, qry)
		default:
			for _, step := range []time.Duration{10 * time.Second, time.Minute} {
				qry, err := ng.NewRangeQuery(ctx, st, nil, q.Expr, end.Add(-10*time.Minute), end, step)
				if err != nil {
					t.Errorf("%s: %s: %v", q.Where, q.Expr, err)
					continue
				}
				runs = append(runs, qry)
			}
		}
		for _, qry := range runs {
			res := qry.Exec(ctx)
			switch {
			case res.Err != nil:
				t.Errorf("%s: %s: %v", q.Where, q.Expr, res.Err)
			case q.Label != "":
				vec, _ := res.Vector()
				values := map[string]bool{}
				for _, s := range vec {
					if v := s.Metric.Get(q.Label); v != "" {
						values[v] = true
					}
				}
				if len(values) == 0 {
					t.Errorf("%s: label_values(%s, %s): none", q.Where, q.Expr, q.Label)
				}
			default:
				n := 0
				switch v := res.Value.(type) {
				case promql.Vector:
					n = len(v)
				case promql.Matrix:
					n = len(v)
				default:
					t.Errorf("%s: %s: a %s, want a vector or a matrix", q.Where, q.Expr, res.Value.Type())
				}
				if n == 0 {
					t.Errorf("%s: %s: no data", q.Where, q.Expr)
				}
			}
			qry.Close()
		}
	}
}
