package deploy

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// files are the deployment files that hold PromQL: the rules Prometheus
// evaluates, the Grafana dashboards and datasources.
//
//go:embed prometheus/rules/*.yml grafana/dashboards/*.json grafana/provisioning/datasources/*.yaml
var files embed.FS

// TwinlineDatasource is the uid of the Grafana datasource that reads
// twinline's own Prometheus query API (/prometheus), not the Prometheus
// that scrapes its /metrics: the plant dashboard's telemetry.
const TwinlineDatasource = "twinline"

// Query is one PromQL expression of the deployment files.
type Query struct {
	// Where names the file and the rule, panel or setting.
	Where string
	// Expr is the expression as Prometheus receives it: Grafana's
	// variables replaced by values of the right kind.
	Expr string
	// Datasource is the uid of the Grafana datasource that runs it (a
	// dashboard's datasource variable resolved to its current value);
	// "" for the rules, which Prometheus evaluates.
	Datasource string
	// Instant is a panel target Grafana runs as an instant query
	// (/api/v1/query), not a range query.
	Instant bool
	// Label is the label of a label_values(Expr, Label) variable, which
	// Grafana asks /api/v1/label/<Label>/values?match[]=Expr for.
	Label string
}

// Selector is one series selector of a Query.
type Selector struct {
	Where    string
	Metric   string
	Matchers []*labels.Matcher
}

// Rules returns the rule groups of prometheus/rules, parsed and
// validated by Prometheus' own rule parser, by file.
func Rules() (map[string]*rulefmt.RuleGroups, error) {
	out := map[string]*rulefmt.RuleGroups{}
	names, err := fs.Glob(files, "prometheus/rules/*.yml")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		b, err := files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		groups, errs := rulefmt.Parse(b, false, model.LegacyValidation, NewParser(), slog.New(slog.DiscardHandler))
		if len(errs) > 0 {
			return nil, fmt.Errorf("deploy/%s: %w", name, errs[0])
		}
		out[name] = groups
	}
	return out, nil
}

// NewParser returns the PromQL parser of the Prometheus version in go.mod,
// with its default (stable) functions only.
func NewParser() parser.Parser { return parser.NewParser(parser.Options{}) }

// grafanaVars are Grafana's variables in a query: $__rate_interval and
// friends stand for a duration, a dashboard's textbox, constant and custom
// variables for their current value (a number such as $threshold), its
// query variables ($role, ${role}) sit in label matchers, where "All" is
// ".*".
var (
	grafanaDuration = regexp.MustCompile(`\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}`)
	grafanaVar      = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)
)

// expandGrafana replaces Grafana's variables as described at grafanaVars,
// values holding the current values of the dashboard's fixed variables.
func expandGrafana(expr string, values map[string]string) string {
	expr = grafanaDuration.ReplaceAllString(expr, "5m")
	return grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		if v, ok := values[grafanaVar.FindStringSubmatch(m)[1]]; ok {
			return v
		}
		return ".*"
	})
}

// Queries returns every PromQL expression of the rule files, the
// dashboards (panel targets, template variables' label_values, annotations)
// and the datasources' provisioning.
func Queries() ([]Query, error) {
	var out []Query
	rules, err := Rules()
	if err != nil {
		return nil, err
	}
	for _, file := range slices.Sorted(maps.Keys(rules)) {
		for _, g := range rules[file].Groups {
			for _, r := range g.Rules {
				out = append(out, Query{Where: fmt.Sprintf("deploy/%s: group %s: %s", file, g.Name, r.Record+r.Alert), Expr: r.Expr})
			}
		}
	}
	dashboards, err := fs.Glob(files, "grafana/dashboards/*.json")
	if err != nil {
		return nil, err
	}
	for _, name := range dashboards {
		b, err := files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		var d Dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, fmt.Errorf("deploy/%s: %w", name, err)
		}
		out = append(out, d.queries("deploy/"+name)...)
	}
	sources, err := fs.Glob(files, "grafana/provisioning/datasources/*.yaml")
	if err != nil {
		return nil, err
	}
	for _, name := range sources {
		b, err := files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		var ds Datasources
		if err := yaml.Unmarshal(b, &ds); err != nil {
			return nil, fmt.Errorf("deploy/%s: %w", name, err)
		}
		for _, d := range ds.Datasources {
			for _, q := range d.JSONData.TracesToMetrics.Queries {
				out = append(out, Query{Where: fmt.Sprintf("deploy/%s: %s: tracesToMetrics %q", name, d.Name, q.Name), Expr: expandGrafana(q.Query, nil), Datasource: d.JSONData.TracesToMetrics.DatasourceUID})
			}
		}
	}
	return out, nil
}

// labelValuesQuery is the metric and the label of a label_values(metric,
// label) variable.
var labelValuesQuery = regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)

func (d Dashboard) queries(where string) []Query {
	// The current values of the variables that are not label matchers,
	// and of the datasource variables (a panel's "${datasource}").
	values := map[string]string{}
	sources := map[string]string{}
	for _, v := range d.Templating.List {
		switch v.Type {
		case "textbox", "constant", "custom":
			values[v.Name] = fmt.Sprint(v.Current.Value)
		case "datasource":
			sources["${"+v.Name+"}"] = fmt.Sprint(v.Current.Value)
			sources["$"+v.Name] = fmt.Sprint(v.Current.Value)
		}
	}
	uid := func(ds ...*Datasource) string {
		for _, d := range ds {
			if d != nil && d.UID != "" {
				if u, ok := sources[d.UID]; ok {
					return u
				}
				return d.UID
			}
		}
		return ""
	}
	var out []Query
	var walk func(ps []Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				if t.Expr != "" {
					out = append(out, Query{
						Where:      fmt.Sprintf("%s: panel %d %q: target %s", where, p.ID, p.Title, t.RefID),
						Expr:       expandGrafana(t.Expr, values),
						Datasource: uid(t.Datasource, p.Datasource),
						Instant:    t.Instant && !t.Range,
					})
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		if m := labelValuesQuery.FindStringSubmatch(strings.TrimSpace(v.Definition)); m != nil {
			out = append(out, Query{Where: fmt.Sprintf("%s: variable %s", where, v.Name), Expr: expandGrafana(m[1], values), Datasource: uid(v.Datasource), Label: m[2]})
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			out = append(out, Query{Where: fmt.Sprintf("%s: annotation %s", where, a.Name), Expr: expandGrafana(a.Expr, values), Datasource: uid(a.Datasource)})
		}
	}
	return out
}

// TwinlineQueries returns the queries of the dashboards that twinline's
// own query API answers (datasource TwinlineDatasource).
func TwinlineQueries() ([]Query, error) {
	qs, err := Queries()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(qs, func(q Query) bool { return q.Datasource != TwinlineDatasource }), nil
}

// Selectors parses every query and returns its series selectors.
func Selectors() ([]Selector, error) {
	qs, err := Queries()
	if err != nil {
		return nil, err
	}
	return selectors(qs)
}

func selectors(qs []Query) ([]Selector, error) {
	p := NewParser()
	var out []Selector
	for _, q := range qs {
		expr, err := p.ParseExpr(q.Expr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", q.Where, err)
		}
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				out = append(out, Selector{Where: q.Where, Metric: vs.Name, Matchers: vs.LabelMatchers})
			}
			return nil
		})
	}
	return out, nil
}

// Recorded returns the names the recording rules define.
func Recorded() (map[string]bool, error) {
	rules, err := Rules()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, groups := range rules {
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				if r.Record != "" {
					out[r.Record] = true
				}
			}
		}
	}
	return out, nil
}

// prometheusOwn are series Prometheus makes itself, not twinline.
var prometheusOwn = map[string]bool{"up": true, "ALERTS": true, "ALERTS_FOR_STATE": true}

// ServerSelectors returns the selectors that read series twinline serves
// on /metrics: every selector but those of recorded names, of
// Prometheus' own series (up, ALERTS) and of the queries of twinline's
// query API (the telemetry, not /metrics). The Go and process
// collectors' series (go_*, process_*) are twinline's.
func ServerSelectors() ([]Selector, error) {
	qs, err := Queries()
	if err != nil {
		return nil, err
	}
	all, err := selectors(slices.DeleteFunc(qs, func(q Query) bool { return q.Datasource == TwinlineDatasource }))
	if err != nil {
		return nil, err
	}
	recorded, err := Recorded()
	if err != nil {
		return nil, err
	}
	var out []Selector
	for _, s := range all {
		if s.Metric == "" || recorded[s.Metric] || prometheusOwn[s.Metric] {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

// Dashboard is the part of a Grafana dashboard's JSON model the tests
// read.
type Dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []Panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string      `json:"name"`
			Type       string      `json:"type"`
			Query      any         `json:"query"`
			Definition string      `json:"definition"`
			Datasource *Datasource `json:"datasource"`
			Current    struct {
				Value any `json:"value"`
			} `json:"current"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name       string      `json:"name"`
			Expr       string      `json:"expr"`
			Datasource *Datasource `json:"datasource"`
		} `json:"list"`
	} `json:"annotations"`
}

// Panel is one panel of a Dashboard (rows hold panels of their own when
// collapsed).
type Panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *Datasource `json:"datasource"`
	GridPos    struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Instant    bool        `json:"instant"`
		Range      bool        `json:"range"`
		Exemplar   bool        `json:"exemplar"`
		Datasource *Datasource `json:"datasource"`
	} `json:"targets"`
	Panels []Panel `json:"panels"`
}

// Datasource is a reference to a Grafana datasource.
type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Datasources is Grafana's datasource provisioning file.
type Datasources struct {
	APIVersion  int                     `yaml:"apiVersion"`
	Datasources []ProvisionedDatasource `yaml:"datasources"`
}

// ProvisionedDatasource is one datasource of a provisioning file.
type ProvisionedDatasource struct {
	Name     string `yaml:"name"`
	UID      string `yaml:"uid"`
	Type     string `yaml:"type"`
	Access   string `yaml:"access"`
	URL      string `yaml:"url"`
	JSONData struct {
		HTTPMethod                  string `yaml:"httpMethod"`
		TLSAuthWithCACert           bool   `yaml:"tlsAuthWithCACert"`
		HTTPHeaderName1             string `yaml:"httpHeaderName1"`
		ManageAlerts                *bool  `yaml:"manageAlerts"`
		ExemplarTraceIDDestinations []struct {
			Name          string `yaml:"name"`
			DatasourceUID string `yaml:"datasourceUid"`
		} `yaml:"exemplarTraceIdDestinations"`
		TracesToMetrics struct {
			DatasourceUID string `yaml:"datasourceUid"`
			Queries       []struct {
				Name  string `yaml:"name"`
				Query string `yaml:"query"`
			} `yaml:"queries"`
		} `yaml:"tracesToMetrics"`
		TracesToLogsV2 struct {
			DatasourceUID string `yaml:"datasourceUid"`
		} `yaml:"tracesToLogsV2"`
		DerivedFields []struct {
			DatasourceUID string `yaml:"datasourceUid"`
		} `yaml:"derivedFields"`
	} `yaml:"jsonData"`
	SecureJSONData map[string]string `yaml:"secureJsonData"`
}

// ReadDashboards returns the dashboards of grafana/dashboards by file.
func ReadDashboards() (map[string]Dashboard, error) {
	names, err := fs.Glob(files, "grafana/dashboards/*.json")
	if err != nil {
		return nil, err
	}
	out := map[string]Dashboard{}
	for _, name := range names {
		b, err := files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		var d Dashboard
		if err := dec.Decode(&d); err != nil {
			return nil, fmt.Errorf("deploy/%s: %w", name, err)
		}
		out[path.Base(name)] = d
	}
	return out, nil
}
