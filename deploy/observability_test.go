package deploy_test

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/twinline/twinline/deploy"
)

var update = flag.Bool("update", false, "rewrite prometheus/metrics.txt and k8s/scale/prometheusrule.yaml from the rule files and dashboards")

var (
	recordName = regexp.MustCompile(`^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$`)
	alertName  = regexp.MustCompile(`^Twinline[A-Z][A-Za-z0-9]+$`)
)

// TestRuleFiles loads every rule file with Prometheus' own rule parser
// (strict: unknown fields are errors) and checks the house rules: recorded
// names level:metric:operations and defined once, alerts named Twinline…
// with a severity (page or ticket), a summary, a description and a runbook
// that exists in docs/; every recorded name a query reads is defined.
func TestRuleFiles(t *testing.T) {
	rules, err := deploy.Rules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) == 0 {
		t.Fatal("no rule files under prometheus/rules")
	}
	recorded := map[string]string{}
	groups := map[string]string{}
	for _, file := range sortedKeys(rules) {
		for _, g := range rules[file].Groups {
			if other, ok := groups[g.Name]; ok {
				t.Errorf("%s: group %s is also in %s", file, g.Name, other)
			}
			groups[g.Name] = file
			for _, r := range g.Rules {
				where := fmt.Sprintf("%s: group %s: %s%s", file, g.Name, r.Record, r.Alert)
				if r.Record != "" {
					if !recordName.MatchString(r.Record) {
						t.Errorf("%s: recorded name is not level:metric:operations", where)
					}
					if other, ok := recorded[r.Record]; ok {
						t.Errorf("%s: also recorded in %s", where, other)
					}
					recorded[r.Record] = where
					continue
				}
				if !alertName.MatchString(r.Alert) {
					t.Errorf("%s: alert names start with Twinline", where)
				}
				if s := r.Labels["severity"]; s != "page" && s != "ticket" {
					t.Errorf("%s: severity %q, want page or ticket (alertmanager.yml routes on it)", where, s)
				}
				for _, a := range []string{"summary", "description", "runbook_url"} {
					if r.Annotations[a] == "" {
						t.Errorf("%s: no %s annotation", where, a)
					}
				}
				// A runbook in this repository's docs/ must exist, with its
				// heading.
				u, err := url.Parse(r.Annotations["runbook_url"])
				if err != nil {
					t.Errorf("%s: runbook_url: %v", where, err)
					continue
				}
				if _, doc, ok := strings.Cut(u.Path, "/blob/main/"); ok {
					b, err := os.ReadFile("../" + doc)
					if err != nil {
						t.Errorf("%s: runbook %s: %v", where, u, err)
					} else if !slices.Contains(docAnchors(string(b)), u.Fragment) {
						t.Errorf("%s: runbook %s: %s has no heading #%s", where, u, doc, u.Fragment)
					}
				}
			}
		}
	}
	sels, err := deploy.Selectors()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sels {
		if strings.Contains(s.Metric, ":") && recorded[s.Metric] == "" {
			t.Errorf("%s: reads %s, which no recording rule defines", s.Where, s.Metric)
		}
	}
}

// docAnchors returns the GitHub anchors of a Markdown document's headings.
func docAnchors(doc string) []string {
	var out []string
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		var b strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				b.WriteRune(r)
			}
		}
		out = append(out, b.String())
	}
	return out
}

// TestMetricsUsed parses every PromQL expression of the rules, dashboards
// and datasources with Prometheus' parser and keeps the list of the
// metrics they read from twinline (prometheus/metrics.txt, -update to
// rewrite): the contract between the server and its monitoring, reviewed
// in every diff. internal/app's TestObservability checks each one exists
// on a running server's /metrics.
func TestMetricsUsed(t *testing.T) {
	sels, err := deploy.ServerSelectors()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, s := range sels {
		if !strings.HasPrefix(s.Metric, "twinline_") && !strings.HasPrefix(s.Metric, "go_") && !strings.HasPrefix(s.Metric, "process_") {
			t.Errorf("%s: %s is neither twinline's (twinline_, go_, process_), nor recorded, nor Prometheus' own", s.Where, s.Metric)
		}
		used[s.Metric] = true
	}
	var b strings.Builder
	b.WriteString("# The metrics deploy/prometheus/rules, deploy/grafana/dashboards and the\n" +
		"# datasources read from twinline's /metrics: written by\n" +
		"# `go test ./deploy/ -run TestMetricsUsed -update`; each one must exist on\n" +
		"# a running server (internal/app TestObservability).\n")
	for _, m := range sortedKeys(used) {
		b.WriteString(m + "\n")
	}
	const golden = "prometheus/metrics.txt"
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), b.String()); diff != "" {
		t.Errorf("%s is stale (go test ./deploy/ -run TestMetricsUsed -update) (-file +queries):\n%s", golden, diff)
	}
}

// tool returns the path of a command-line tool; without it the test is
// skipped, or fails under CI=true (.ci/run installs it).
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (Debian package %s) under CI=true", name, pkg)
		}
		t.Skipf("%s not found (Debian package %s)", name, pkg)
	}
	return p
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
}

// TestPromtoolRules runs Prometheus' promtool on the files: the rules
// check, the rule unit tests of prometheus/tests, and the configuration's
// syntax (its files, the certificate and token, exist only in the
// containers).
func TestPromtoolRules(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	rules, _ := filepath.Glob("prometheus/rules/*.yml")
	tests, _ := filepath.Glob("prometheus/tests/*.yml")
	if len(rules) == 0 || len(tests) == 0 {
		t.Fatalf("rules %v, tests %v: want both", rules, tests)
	}
	run(t, promtool, append([]string{"check", "rules"}, rules...)...)
	run(t, promtool, append([]string{"test", "rules"}, tests...)...)
	run(t, promtool, "check", "config", "--syntax-only", "prometheus/prometheus.yml")
}

// TestAlertmanagerConfig checks alertmanager.yml with amtool, that its
// routes cover both severities the SLO alerts carry, and where amtool's
// routing tree sends an SLO page, an SLO ticket and a machine's alarm as
// twinline posts it (--alertmanager-url: alertname, machine, site, line,
// metric, severity), whatever the alarm's severity.
func TestAlertmanagerConfig(t *testing.T) {
	const file = "alertmanager/alertmanager.yml"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, sev := range []string{"page", "ticket"} {
		if !strings.Contains(string(b), `severity="`+sev+`"`) {
			t.Errorf("alertmanager.yml: no route for severity=%q", sev)
		}
	}
	amtool := tool(t, "amtool", "prometheus-alertmanager")
	run(t, amtool, "check-config", file)
	where := []string{"machine=press-01", "site=lyon", "line=l1"}
	for _, tc := range []struct {
		labels []string
		want   string
	}{
		{[]string{"alertname=TwinlineIngestAvailability", "slo=ingest", "severity=page"}, "page"},
		{[]string{"alertname=TwinlineIngestAvailability", "slo=ingest", "severity=ticket"}, "ticket"},
		{append(where, "alertname=TwinlineThresholdHigh", "metric=temp", "severity=critical"), "plant"},
		{append(where, "alertname=TwinlineMachineOffline", "severity=warning"), "plant"},
		// Whatever the severity, and without site and line (a machine
		// not in the registry).
		{append(where, "alertname=TwinlineThresholdLow", "metric=temp", "severity=page"), "plant"},
		{[]string{"alertname=TwinlineThresholdHigh", "machine=press-01", "metric=temp", "severity=ticket"}, "plant"},
	} {
		out, err := exec.Command(amtool, append([]string{"config", "routes", "test", "--config.file=" + file}, tc.labels...)...).Output()
		if err != nil {
			t.Errorf("amtool config routes test %v: %v", tc.labels, err)
			continue
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("%s routes %v to %q, want %q", file, tc.labels, got, tc.want)
		}
	}
}

// ruleTests is the part of a promtool test file this test reads.
type ruleTests struct {
	RuleFiles      []string `yaml:"rule_files"`
	GroupEvalOrder []string `yaml:"group_eval_order"`
	Tests          []struct {
		AlertRuleTest []struct {
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestRuleTestsCoverRules: every test file loads every rule file and
// orders every group (recordings before the alerts that read them), and
// every alert is seen firing by some test.
func TestRuleTestsCoverRules(t *testing.T) {
	rules, err := deploy.Rules()
	if err != nil {
		t.Fatal(err)
	}
	var ruleFiles, groups []string
	alerts := map[string]bool{}
	for _, file := range sortedKeys(rules) {
		ruleFiles = append(ruleFiles, "../rules/"+filepath.Base(file))
		for _, g := range rules[file].Groups {
			groups = append(groups, g.Name)
			for _, r := range g.Rules {
				if r.Alert != "" {
					alerts[r.Alert] = false
				}
			}
		}
	}
	files, _ := filepath.Glob("prometheus/tests/*.yml")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rt ruleTests
		if err := yaml.Unmarshal(b, &rt); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !slices.Equal(slices.Sorted(slices.Values(rt.RuleFiles)), ruleFiles) {
			t.Errorf("%s: rule_files %v, want every rule file %v", f, rt.RuleFiles, ruleFiles)
		}
		if !slices.Equal(slices.Sorted(slices.Values(rt.GroupEvalOrder)), slices.Sorted(slices.Values(groups))) {
			t.Errorf("%s: group_eval_order %v, want every group %v", f, rt.GroupEvalOrder, groups)
		}
		for _, tc := range rt.Tests {
			for _, at := range tc.AlertRuleTest {
				if _, ok := alerts[at.Alertname]; !ok {
					t.Errorf("%s: alert_rule_test of %s, which no rule defines", f, at.Alertname)
				}
				if len(at.ExpAlerts) > 0 {
					alerts[at.Alertname] = true
				}
			}
		}
	}
	for _, a := range sortedKeys(alerts) {
		if !alerts[a] {
			t.Errorf("alert %s is never seen firing by a test of prometheus/tests", a)
		}
	}
}

// TestDashboards checks the Grafana dashboards: unique uids and panel ids,
// panels on the dashboard's datasource variable or a provisioned
// datasource, and exemplars (trace links) on the latency histograms.
func TestDashboards(t *testing.T) {
	dashboards, err := deploy.ReadDashboards()
	if err != nil {
		t.Fatal(err)
	}
	if len(dashboards) == 0 {
		t.Fatal("no dashboards under grafana/dashboards")
	}
	provisioned := provisionedDatasources(t)
	uids := map[string]string{}
	for _, file := range sortedKeys(dashboards) {
		d := dashboards[file]
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: uid %q, title %q: want both", file, d.UID, d.Title)
		}
		if other, ok := uids[d.UID]; ok {
			t.Errorf("%s: uid %s is also %s's", file, d.UID, other)
		}
		uids[d.UID] = file
		vars := map[string]bool{}
		for _, v := range d.Templating.List {
			vars[v.Name] = true
			if v.Type == "datasource" {
				if q, _ := v.Query.(string); q != "prometheus" {
					t.Errorf("%s: variable %s: datasource type %q, want prometheus", file, v.Name, q)
				}
			}
		}
		dsOK := func(where string, ds *deploy.Datasource) {
			switch {
			case ds == nil:
				t.Errorf("%s: no datasource", where)
			case strings.HasPrefix(ds.UID, "${"):
				if !vars[strings.Trim(ds.UID, "${}")] {
					t.Errorf("%s: datasource %s is not a variable of the dashboard", where, ds.UID)
				}
			case provisioned[ds.UID] == "":
				t.Errorf("%s: datasource uid %q is not provisioned (%v)", where, ds.UID, sortedKeys(provisioned))
			}
		}
		ids := map[int]bool{}
		exemplars := map[string]bool{}
		var walk func(ps []deploy.Panel)
		walk = func(ps []deploy.Panel) {
			for _, p := range ps {
				where := fmt.Sprintf("%s: panel %d %q", file, p.ID, p.Title)
				if p.ID == 0 || ids[p.ID] {
					t.Errorf("%s: panel id missing or not unique", where)
				}
				ids[p.ID] = true
				if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
					t.Errorf("%s: gridPos %+v off the 24-column grid", where, p.GridPos)
				}
				if p.Type != "row" {
					dsOK(where, p.Datasource)
				}
				for _, tg := range p.Targets {
					dsOK(where+": target "+tg.RefID, tg.Datasource)
					for _, h := range []string{"twinline_stream_delivery_seconds_bucket", "twinline_leg_seconds_bucket", "twinline_ingest_durable_seconds_bucket"} {
						if strings.Contains(tg.Expr, h) && tg.Exemplar {
							exemplars[h] = true
						}
					}
				}
				walk(p.Panels)
			}
		}
		walk(d.Panels)
		for _, a := range d.Annotations.List {
			dsOK(file+": annotation "+a.Name, a.Datasource)
		}
		if file == "twinline-operations.json" {
			for _, h := range []string{"twinline_stream_delivery_seconds_bucket", "twinline_leg_seconds_bucket", "twinline_ingest_durable_seconds_bucket"} {
				if !exemplars[h] {
					t.Errorf("%s: no panel shows the exemplars (trace links) of %s", file, h)
				}
			}
		}
	}
}

// provisionedDatasources reads the Grafana datasource provisioning and
// checks that the links between datasources (exemplars → traces, traces →
// metrics) name provisioned ones. It returns type by uid.
func provisionedDatasources(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("grafana/provisioning/datasources/datasources.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds deploy.Datasources
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatal(err)
	}
	byUID := map[string]string{}
	for _, d := range ds.Datasources {
		if d.UID == "" || byUID[d.UID] != "" {
			t.Errorf("datasource %s: uid %q missing or not unique", d.Name, d.UID)
		}
		byUID[d.UID] = d.Type
	}
	exemplars := false
	for _, d := range ds.Datasources {
		links := []string{d.JSONData.TracesToMetrics.DatasourceUID, d.JSONData.TracesToLogsV2.DatasourceUID}
		for _, e := range d.JSONData.ExemplarTraceIDDestinations {
			links = append(links, e.DatasourceUID)
			exemplars = exemplars || (e.Name == "trace_id" && (byUID[e.DatasourceUID] == "jaeger" || byUID[e.DatasourceUID] == "tempo"))
		}
		for _, f := range d.JSONData.DerivedFields {
			links = append(links, f.DatasourceUID)
		}
		for _, l := range links {
			if l != "" && byUID[l] == "" {
				t.Errorf("datasource %s links to uid %q, which is not provisioned", d.Name, l)
			}
		}
	}
	if !exemplars {
		t.Error("no Prometheus datasource sends exemplars' trace_id to a trace datasource (exemplarTraceIdDestinations)")
	}
	return byUID
}

// mountOf returns where a compose service mounts source (relative to the
// compose file), "" if it does not.
func mountOf(svc map[string]any, source string) string {
	for _, m := range composeMounts(svc) {
		if filepath.Clean(m.source) == filepath.Clean(source) {
			return m.target
		}
	}
	return ""
}

// TestObservabilityStack checks the observability services of the
// scale-out compose file against their configuration files: Prometheus
// loads the rules it mounts and scrapes every twinline role under its
// service name (the certificate's), Grafana gets the provisioning and the
// dashboards where the provisioning looks, the collector's pipeline is
// whole and exports to a service of the file, and every twinline role
// sends its traces to the collector.
func TestObservabilityStack(t *testing.T) {
	cf := readCompose(t, "compose/docker-compose.scale.yml")
	need := func(name string) map[string]any {
		svc := cf.services[name]
		if svc == nil {
			t.Fatalf("%s: no service %s", cf.path, name)
		}
		return svc
	}

	// Prometheus.
	prom := need("prometheus")
	if got := mountOf(prom, "../prometheus/prometheus.yml"); got != "/etc/prometheus/prometheus.yml" {
		t.Errorf("prometheus mounts prometheus.yml at %q", got)
	}
	if !slices.Contains(strList(prom["command"]), "--config.file=/etc/prometheus/prometheus.yml") {
		t.Errorf("prometheus: command %v does not load /etc/prometheus/prometheus.yml", prom["command"])
	}
	if !slices.Contains(strList(prom["command"]), "--enable-feature=exemplar-storage") {
		t.Errorf("prometheus: command %v keeps no exemplars (--enable-feature=exemplar-storage)", prom["command"])
	}
	rulesAt := mountOf(prom, "../prometheus/rules")
	var cfg struct {
		RuleFiles []string `yaml:"rule_files"`
		Alerting  struct {
			Alertmanagers []struct {
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"alertmanagers"`
		} `yaml:"alerting"`
		ScrapeConfigs []struct {
			JobName   string `yaml:"job_name"`
			Scheme    string `yaml:"scheme"`
			TLSConfig struct {
				CAFile     string `yaml:"ca_file"`
				ServerName string `yaml:"server_name"`
			} `yaml:"tls_config"`
			Authorization struct {
				CredentialsFile string `yaml:"credentials_file"`
			} `yaml:"authorization"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	b, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.RuleFiles) != 1 || filepath.Dir(cfg.RuleFiles[0]) != rulesAt {
		t.Errorf("prometheus.yml rule_files %v, but the rules are mounted at %q", cfg.RuleFiles, rulesAt)
	}
	for _, am := range cfg.Alerting.Alertmanagers {
		for _, sc := range am.StaticConfigs {
			for _, target := range sc.Targets {
				host, _, _ := net.SplitHostPort(target)
				if cf.services[host] == nil {
					t.Errorf("prometheus.yml: alertmanager %s is not a service", target)
				}
			}
		}
	}
	secretsAt := mountOf(prom, "twinline-secrets")
	scraped := map[string]bool{} // service name or alias → scraped
	for _, sc := range cfg.ScrapeConfigs {
		if !strings.HasPrefix(sc.JobName, "twinline") {
			continue
		}
		where := "prometheus.yml: job " + sc.JobName
		// The services serve HTTPS with the init-secrets certificate and
		// need a token off loopback.
		if sc.Scheme != "https" || filepath.Dir(sc.TLSConfig.CAFile) != secretsAt || filepath.Dir(sc.Authorization.CredentialsFile) != secretsAt {
			t.Errorf("%s: scheme %q, ca_file %q, credentials_file %q: want https with the certificate and token of twinline-secrets (mounted at %q)",
				where, sc.Scheme, sc.TLSConfig.CAFile, sc.Authorization.CredentialsFile, secretsAt)
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, _ := net.SplitHostPort(target)
				scraped[host] = true
				if port != "8080" {
					t.Errorf("%s: target %s, but twinline listens on 8080", where, target)
				}
			}
		}
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				scraped[n] = true
			}
			if sc.TLSConfig.ServerName == "" {
				t.Errorf("%s: DNS discovery scrapes addresses: tls_config.server_name must name the certificate's host", where)
			}
		}
	}
	for _, name := range sortedKeys(cf.services) {
		svc := cf.services[name]
		cmd := strList(svc["command"])
		if len(cmd) == 0 || cmd[0] != "serve" {
			continue
		}
		if _, ok := svc["profiles"]; ok {
			continue // not started by default (the demo fleet)
		}
		if !scraped[name] {
			t.Errorf("service %s (twinline serve) is not scraped by prometheus.yml", name)
		}
		env := composeEnv(t, name, svc["environment"])
		u, err := url.Parse(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
		if err != nil || cf.services[u.Hostname()] == nil || u.Port() != "4318" || u.Scheme != "http" {
			t.Errorf("service %s: OTEL_EXPORTER_OTLP_ENDPOINT %q, want http://<the collector>:4318 (OTLP/HTTP)", name, env["OTEL_EXPORTER_OTLP_ENDPOINT"])
		} else {
			checkCollector(t, cf, u.Hostname())
		}
	}

	// Grafana.
	graf := need("grafana")
	prov := mountOf(graf, "../grafana/provisioning")
	dash := mountOf(graf, "../grafana/dashboards")
	if prov != "/etc/grafana/provisioning" {
		t.Errorf("grafana mounts the provisioning at %q, want /etc/grafana/provisioning", prov)
	}
	var providers struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if b, err := os.ReadFile("grafana/provisioning/dashboards/dashboards.yaml"); err != nil {
		t.Error(err)
	} else if err := yaml.Unmarshal(b, &providers); err != nil {
		t.Error(err)
	} else if len(providers.Providers) != 1 || providers.Providers[0].Options.Path != dash {
		t.Errorf("dashboards.yaml providers %+v, but the dashboards are mounted at %q", providers.Providers, dash)
	}
	if home := composeEnv(t, "grafana", graf["environment"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != "" {
		if filepath.Dir(home) != dash {
			t.Errorf("grafana: home dashboard %s is not in the mounted %s", home, dash)
		} else if _, err := os.Stat(filepath.Join("grafana/dashboards", filepath.Base(home))); err != nil {
			t.Errorf("grafana: home dashboard: %v", err)
		}
	}
	ds := provisionedDatasources(t)
	if b, err := os.ReadFile("grafana/provisioning/datasources/datasources.yaml"); err == nil {
		var d deploy.Datasources
		_ = yaml.Unmarshal(b, &d)
		for _, s := range d.Datasources {
			u, err := url.Parse(s.URL)
			if err != nil || cf.services[u.Hostname()] == nil {
				t.Errorf("datasource %s: url %q is not a service of %s", s.Name, s.URL, cf.path)
			}
		}
	}
	if len(ds) == 0 {
		t.Error("no datasource provisioned")
	}

	am := need("alertmanager")
	if got := mountOf(am, "../alertmanager/alertmanager.yml"); !slices.Contains(strList(am["command"]), "--config.file="+got) {
		t.Errorf("alertmanager: command %v does not load its mounted config %q", am["command"], got)
	}
}

// checkCollector checks the OpenTelemetry Collector service and its
// configuration: it loads the mounted collector.yaml, which receives OTLP
// over HTTP on 4318, and whose traces pipeline uses only defined
// components and exports to services of the file.
func checkCollector(t *testing.T, cf composeFile, name string) {
	t.Helper()
	svc := cf.services[name]
	at := mountOf(svc, "../otel/collector.yaml")
	if at == "" || !slices.Contains(strList(svc["command"]), "--config="+at) {
		t.Errorf("service %s: command %v does not load the mounted ../otel/collector.yaml (at %q)", name, svc["command"], at)
	}
	var c struct {
		Receivers  map[string]map[string]any `yaml:"receivers"`
		Processors map[string]any            `yaml:"processors"`
		Exporters  map[string]struct {
			Endpoint string `yaml:"endpoint"`
		} `yaml:"exporters"`
		Extensions map[string]any `yaml:"extensions"`
		Service    struct {
			Extensions []string `yaml:"extensions"`
			Pipelines  map[string]struct {
				Receivers  []string `yaml:"receivers"`
				Processors []string `yaml:"processors"`
				Exporters  []string `yaml:"exporters"`
			} `yaml:"pipelines"`
		} `yaml:"service"`
	}
	b, err := os.ReadFile("otel/collector.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("otel/collector.yaml: %v", err)
	}
	protocols, _ := c.Receivers["otlp"]["protocols"].(map[string]any)
	httpRecv, _ := protocols["http"].(map[string]any)
	if ep, _ := httpRecv["endpoint"].(string); !strings.HasSuffix(ep, ":4318") {
		t.Errorf("otel/collector.yaml: the otlp receiver's http endpoint is %q, want :4318", ep)
	}
	traces, ok := c.Service.Pipelines["traces"]
	if !ok {
		t.Fatal("otel/collector.yaml: no traces pipeline")
	}
	check := func(kind string, names []string, defined func(string) bool) {
		if len(names) == 0 && kind != "processor" {
			t.Errorf("otel/collector.yaml: traces pipeline without %ss", kind)
		}
		for _, n := range names {
			if !defined(n) {
				t.Errorf("otel/collector.yaml: traces pipeline uses %s %q, which is not defined", kind, n)
			}
		}
	}
	check("receiver", traces.Receivers, func(n string) bool { _, ok := c.Receivers[n]; return ok })
	check("processor", traces.Processors, func(n string) bool { _, ok := c.Processors[n]; return ok })
	check("exporter", traces.Exporters, func(n string) bool { _, ok := c.Exporters[n]; return ok })
	check("extension", c.Service.Extensions, func(n string) bool { _, ok := c.Extensions[n]; return ok })
	for _, e := range traces.Exporters {
		host, _, err := net.SplitHostPort(c.Exporters[e].Endpoint)
		if err != nil || cf.services[host] == nil {
			t.Errorf("otel/collector.yaml: exporter %s endpoint %q is not a service of %s", e, c.Exporters[e].Endpoint, cf.path)
		}
	}
}

// TestPrometheusRuleK8s keeps the Prometheus Operator's PrometheusRule of
// the Kubernetes manifests equal to the rule files (-update rewrites it).
func TestPrometheusRuleK8s(t *testing.T) {
	const file = "k8s/scale/prometheusrule.yaml"
	rules, err := deploy.Rules()
	if err != nil {
		t.Fatal(err)
	}
	var groups []any
	for _, f := range sortedKeys(rules) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Groups []any `yaml:"groups"`
		}
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		groups = append(groups, doc.Groups...)
	}
	if *update {
		writePrometheusRule(t, file, groups)
	}
	docs := readYAML(t, file)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", file, len(docs))
	}
	m, _ := docs[0].(map[string]any)
	if m["apiVersion"] != "monitoring.coreos.com/v1" || m["kind"] != "PrometheusRule" {
		t.Errorf("%s: %v %v, want monitoring.coreos.com/v1 PrometheusRule", file, m["apiVersion"], m["kind"])
	}
	spec, _ := m["spec"].(map[string]any)
	if diff := cmp.Diff(groups, spec["groups"]); diff != "" {
		t.Errorf("%s differs from prometheus/rules (go test ./deploy/ -run TestPrometheusRuleK8s -update) (-rules +file):\n%s", file, diff)
	}
}

func writePrometheusRule(t *testing.T, file string, groups []any) {
	t.Helper()
	obj := map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "PrometheusRule",
		"metadata": map[string]any{
			"name":   "twinline",
			"labels": map[string]any{"app.kubernetes.io/name": "twinline"},
		},
		"spec": map[string]any{"groups": groups},
	}
	var b strings.Builder
	b.WriteString(`# Generated from deploy/prometheus/rules by
# go test ./deploy/ -run TestPrometheusRuleK8s -update
# (the test fails when the two differ): the SLI recordings and SLO alerts
# for the Prometheus Operator, next to podmonitor.yaml and, like it, not
# applied by kustomization.yaml (the CRD may not exist):
#   kubectl -n twinline apply -f deploy/k8s/scale/prometheusrule.yaml
# Your Prometheus must select it (ruleSelector); alerts route on the
# severity label (page, ticket): deploy/alertmanager/alertmanager.yml.
`)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(obj); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
