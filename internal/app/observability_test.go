package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/twinline/twinline/deploy"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/redistest"
	"github.com/twinline/twinline/internal/tlsconf/tlstest"
)

// TestObservability runs twinline twice, the way the monitoring of
// deploy/ sees it: once with every backend (Kafka (kfake), PostgreSQL,
// Redis, the embedded MQTT broker and a subscription to Mosquitto, TLS,
// rate limits), once on the embedded defaults (the in-process log). On
// each it ingests an event over HTTP and reads it back from a live stream
// client, then checks:
//
//   - every metric the Prometheus rules and Grafana dashboards read
//     (deploy.ServerSelectors) is on one of the two /metrics, and every
//     bucket bound a rule selects (le="0.25", le=~"1|1\\.0") is one of
//     that histogram's, as Prometheus 2 and 3 name it;
//   - every registered metric passes promlint (no gauge named _total…);
//   - /metrics answers OpenMetrics when asked for it;
//   - no log line, and no logger, has a key twice (the Kafka processor's
//     lines had "component" twice).
func TestObservability(t *testing.T) {
	full := newObservedApp(t, func(t *testing.T, cfg *config.Config) {
		pgURL := pgSchemaURL(t)
		_, prefix := redistest.Client(t)
		const mosquitto = "127.0.0.1:1883"
		if c, err := net.DialTimeout("tcp", mosquitto, 5*time.Second); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("Mosquitto is required on %s under CI: %v", mosquitto, err)
			}
			t.Skipf("Mosquitto not reachable on %s: %v", mosquitto, err)
		} else {
			c.Close()
		}
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, cfg.KafkaTopic))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Close) // registered first: runs after the app stopped
		id := fmt.Sprintf("tl-obs-%d", time.Now().UnixNano())
		cfg.Store, cfg.PostgresURL = "postgres", pgURL
		cfg.KafkaBrokers = cluster.ListenAddrs()
		cfg.KafkaInstanceID = id
		cfg.RedisURL, cfg.RedisPrefix = "redis://"+redistest.Addr()+"/0", prefix
		cfg.RateLimit = "on"
		cfg.MQTTListen = "127.0.0.1:0"
		cfg.MQTTBroker = "mqtt://" + mosquitto + "?client_id=" + id + "&group=" + id + "&session_expiry=1s"
	})
	embedded := newObservedApp(t, nil)

	for _, a := range []*observedApp{full, embedded} {
		a.ingestAndStream(t)
	}

	// Wait (polling /metrics, with a deadline) until every series the
	// rules and dashboards read is there: some appear only once an event
	// has been committed, consumed or delivered.
	sels, err := deploy.ServerSelectors()
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		families := map[string]*dto.MetricFamily{}
		for _, a := range []*observedApp{embedded, full} {
			maps.Copy(families, a.families(t))
		}
		problems = missing(sels, families)
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling a condition, not synchronising
	}
	for _, p := range problems {
		t.Error(p)
	}

	for _, a := range []*observedApp{full, embedded} {
		t.Run(a.name, func(t *testing.T) {
			// promlint on everything registered, Go and process collectors
			// included.
			body, _ := a.get(t, "/metrics", "")
			ps, err := promlint.New(bytes.NewReader(body)).Lint()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range ps {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}

			// OpenMetrics when asked for, as Prometheus does (it is where
			// exemplars travel); the classic text format otherwise.
			body, ct := a.get(t, "/metrics", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
			if !strings.HasPrefix(ct, "application/openmetrics-text") {
				t.Errorf("/metrics asked for OpenMetrics: Content-Type %q", ct)
			}
			if !bytes.HasSuffix(body, []byte("# EOF\n")) {
				t.Errorf("/metrics in OpenMetrics does not end with # EOF")
			}
			if _, err := parseText(body); err == nil {
				t.Error("the OpenMetrics body parses as the classic text format: not OpenMetrics")
			}
			if _, ct := a.get(t, "/metrics", ""); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("/metrics without Accept: Content-Type %q, want the classic text format", ct)
			}

			a.checkLogs(t)
		})
	}
}

// observedApp is one in-process twinline with its logs and a client.
type observedApp struct {
	name   string
	url    string
	client *http.Client
	logs   *lockedBuf
	keys   *keyCheck
}

func newObservedApp(t *testing.T, mutate func(*testing.T, *config.Config)) *observedApp {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	o := &observedApp{name: "embedded", client: &http.Client{Timeout: 30 * time.Second}, logs: &lockedBuf{}}
	if mutate != nil {
		o.name = "every backend"
		ca := tlstest.NewCA(t)
		cfg.TLSCert, cfg.TLSKey = ca.WriteServerFiles(t, t.TempDir())
		o.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}
		mutate(t, &cfg)
	}
	o.keys = newKeyCheck(slog.NewJSONHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, slog.New(o.keys), "test")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", o.name, err)
		}
	})
	scheme := "http://"
	if cfg.TLSCert != "" {
		scheme = "https://"
	}
	o.url = scheme + a.Addr().String()
	return o
}

func (o *observedApp) get(t *testing.T, path, accept string) (body []byte, contentType string) {
	t.Helper()
	req, err := http.NewRequest("GET", o.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := o.client.Do(req)
	if err != nil {
		t.Fatalf("%s: GET %s: %v", o.name, path, err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s: GET %s: %d %v %s", o.name, path, resp.StatusCode, err, body)
	}
	return body, resp.Header.Get("Content-Type")
}

func (o *observedApp) families(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	body, _ := o.get(t, "/metrics", "")
	fams, err := parseText(body)
	if err != nil {
		t.Fatalf("%s: parsing /metrics: %v", o.name, err)
	}
	return fams
}

// parseText parses the classic Prometheus text format.
func parseText(b []byte) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(bytes.NewReader(b))
}

// ingestAndStream opens a live stream (SSE), ingests one event over HTTP
// and waits until the stream delivers it: the whole way, from ingest
// through the log, the engine and the store to a client's socket.
func (o *observedApp) ingestAndStream(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	machine := fmt.Sprintf("obs-%d", time.Now().UnixNano())
	req, err := http.NewRequestWithContext(ctx, "GET", o.url+"/api/v1/stream?machine="+machine, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	stream := &http.Client{Transport: o.client.Transport}
	resp, err := stream.Do(req)
	if err != nil {
		t.Fatalf("%s: stream: %v", o.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: stream: %d", o.name, resp.StatusCode)
	}
	delivered := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data:") && strings.Contains(sc.Text(), `"samples"`) && strings.Contains(sc.Text(), machine) {
				close(delivered)
				return
			}
		}
	}()
	body := fmt.Sprintf(`{"machineId":%q,"timestamp":%d,"temp":21.5}`, machine, time.Now().UnixMilli())
	post, err := o.client.Post(o.url+"/api/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s: ingest: %v", o.name, err)
	}
	b, _ := io.ReadAll(post.Body)
	post.Body.Close()
	if post.StatusCode != http.StatusAccepted {
		t.Fatalf("%s: ingest: %d %s", o.name, post.StatusCode, b)
	}
	select {
	case <-delivered:
	case <-ctx.Done():
		t.Fatalf("%s: the event never reached the stream client", o.name)
	}
}

// missing returns what the selectors read that the families lack: a
// metric, or a bucket bound a le matcher selects.
func missing(sels []deploy.Selector, fams map[string]*dto.MetricFamily) []string {
	// Series names as Prometheus stores them: a histogram's _bucket,
	// _sum and _count, a summary's quantiles, _sum and _count.
	series := map[string]*dto.MetricFamily{}
	for name, f := range fams {
		series[name] = f
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				series[name+s] = f
			}
		case dto.MetricType_SUMMARY:
			for _, s := range []string{"_sum", "_count"} {
				series[name+s] = f
			}
		}
	}
	var out []string
	seen := map[string]bool{}
	for _, s := range sels {
		f, ok := series[s.Metric]
		if !ok {
			if !seen[s.Metric] {
				out = append(out, fmt.Sprintf("%s: %s is on no /metrics of a running server", s.Where, s.Metric))
				seen[s.Metric] = true
			}
			continue
		}
		for _, m := range s.Matchers {
			if m.Name != "le" || !strings.HasSuffix(s.Metric, "_bucket") {
				continue
			}
			// Prometheus 2 keeps the exposed le ("1"), 3 normalises it
			// ("1.0"): a rule must select the bound under both names.
			var bounds []string
			found := false
			for _, metric := range f.GetMetric() {
				for _, b := range metric.GetHistogram().GetBucket() {
					v := b.GetUpperBound()
					// The text format writes bounds as strconv's 'g'.
					text, norm := strconv.FormatFloat(v, 'g', -1, 64), normalisedLe(v)
					if math.IsInf(v, 1) {
						text = "+Inf"
					}
					bounds = append(bounds, text)
					if m.Matches(text) && m.Matches(norm) {
						found = true
					}
				}
			}
			if !found {
				slices.Sort(bounds)
				out = append(out, fmt.Sprintf("%s: %s{%s}: no bucket bound matches as Prometheus 2 and 3 name it (bounds %v)", s.Where, s.Metric, m, slices.Compact(bounds)))
			}
		}
	}
	return out
}

// normalisedLe is a bucket bound as Prometheus 3 stores it: integers
// with ".0" (its OpenMetrics float formatting).
func normalisedLe(v float64) string {
	if math.IsInf(v, 1) {
		return "+Inf"
	}
	s := strconv.FormatFloat(v, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return s
}

// checkLogs fails the test for each logger that would write a key twice
// and each JSON line that has.
func (o *observedApp) checkLogs(t *testing.T) {
	t.Helper()
	for _, d := range o.keys.duplicates() {
		t.Errorf("a logger writes %q twice: %s", d.key, d.where)
	}
	lines := 0
	for line := range strings.Lines(o.logs.String()) {
		lines++
		if keys, err := duplicateKeys([]byte(line)); err != nil {
			t.Errorf("log line is not JSON (%v): %s", err, line)
		} else if len(keys) > 0 {
			t.Errorf("log line has %v twice: %s", keys, line)
		}
	}
	if lines == 0 {
		t.Error("no log line at all: the check checked nothing")
	}
}

// duplicateKeys returns the keys a JSON object has twice, at any depth.
func duplicateKeys(line []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	type level struct {
		object  bool
		keys    map[string]bool
		wantKey bool
	}
	var stack []*level
	var dups []string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return dups, nil
		}
		if err != nil {
			return nil, err
		}
		var top *level
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if top != nil && top.object {
					top.wantKey = true // the value of a key is done once it closes
				}
				stack = append(stack, &level{object: v == '{', keys: map[string]bool{}, wantKey: true})
			case '}', ']':
				stack = stack[:len(stack)-1]
			}
		case string:
			if top != nil && top.object && top.wantKey {
				if top.keys[v] {
					dups = append(dups, v)
				}
				top.keys[v] = true
				top.wantKey = false
				continue
			}
			if top != nil && top.object {
				top.wantKey = true
			}
		default:
			if top != nil && top.object {
				top.wantKey = true
			}
		}
	}
}

// TestDuplicateKeys checks the two detectors of TestObservability on the
// mistake they are there for.
func TestDuplicateKeys(t *testing.T) {
	var buf lockedBuf
	kc := newKeyCheck(slog.NewJSONHandler(&buf, nil))
	logger := slog.New(kc).With("component", "kafka")
	logger.With("component", "kafka_consumer", "topic", "t").Info("assigned", "partition", 1)
	logger.WithGroup("g").With("component", "inner").Info("grouped", "msg", "ok inside a group")
	logger.Info("clean", "topic", "t")

	var got []string
	for _, d := range kc.duplicates() {
		got = append(got, d.key)
	}
	if want := []string{"component"}; !slices.Equal(got, want) {
		t.Errorf("keyCheck found %v, want %v", got, want)
	}
	var lineDups [][]string
	for line := range strings.Lines(buf.String()) {
		keys, err := duplicateKeys([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		lineDups = append(lineDups, keys)
	}
	if want := [][]string{{"component"}, nil, nil}; !slices.EqualFunc(lineDups, want, slices.Equal) {
		t.Errorf("duplicateKeys per line = %v, want %v", lineDups, want)
	}
}

// keyCheck is a slog.Handler that notes every key a logger would write
// twice at one level: when attributes are added (With: a logger that would
// repeat a key in every line, even one never written) and when a record
// adds its own. It passes everything on to next.
type keyCheck struct {
	next  slog.Handler
	keys  map[string]bool // at this handler's group level
	group string
	found *dupList
}

type dupList struct {
	mu   sync.Mutex
	list []dupKey
}

type dupKey struct{ key, where string }

func newKeyCheck(next slog.Handler) *keyCheck {
	return &keyCheck{next: next, keys: map[string]bool{slog.TimeKey: true, slog.LevelKey: true, slog.MessageKey: true}, found: &dupList{}}
}

func (h *keyCheck) note(key, where string) {
	h.found.mu.Lock()
	defer h.found.mu.Unlock()
	h.found.list = append(h.found.list, dupKey{h.group + key, where})
}

func (h *keyCheck) duplicates() []dupKey {
	h.found.mu.Lock()
	defer h.found.mu.Unlock()
	return slices.Clone(h.found.list)
}

func (h *keyCheck) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *keyCheck) WithAttrs(as []slog.Attr) slog.Handler {
	keys := maps.Clone(h.keys)
	for _, a := range as {
		if keys[a.Key] {
			h.note(a.Key, fmt.Sprintf("With(%v) on a logger with %v", as, slices.Sorted(maps.Keys(h.keys))))
		}
		keys[a.Key] = true
	}
	return &keyCheck{next: h.next.WithAttrs(as), keys: keys, group: h.group, found: h.found}
}

func (h *keyCheck) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	if h.keys[name] {
		h.note(name, "WithGroup")
	}
	return &keyCheck{next: h.next.WithGroup(name), keys: map[string]bool{}, group: h.group + name + ".", found: h.found}
}

func (h *keyCheck) Handle(ctx context.Context, r slog.Record) error {
	keys := maps.Clone(h.keys)
	r.Attrs(func(a slog.Attr) bool {
		if keys[a.Key] {
			h.note(a.Key, fmt.Sprintf("record %q", r.Message))
		}
		keys[a.Key] = true
		return true
	})
	return h.next.Handle(ctx, r)
}

// lockedBuf is a bytes.Buffer safe for the concurrent writes of loggers.
type lockedBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestMissingBucketBounds: a rule's le matcher must select one of the
// histogram's bounds under the name Prometheus 2 gives it ("1") and under
// Prometheus 3's ("1.0").
func TestMissingBucketBounds(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x_seconds", Help: "x", Buckets: []float64{0.1, 0.5, 1, 2.5}})
	reg.MustRegister(h)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	sel := func(where string, m *labels.Matcher) deploy.Selector {
		return deploy.Selector{Where: where, Metric: "x_seconds_bucket", Matchers: []*labels.Matcher{m}}
	}
	tests := []struct {
		sel  deploy.Selector
		want bool // reported
	}{
		{sel("both names", labels.MustNewMatcher(labels.MatchRegexp, "le", `1|1\.0`)), false},
		{sel("a fraction", labels.MustNewMatcher(labels.MatchEqual, "le", "0.5")), false},
		{sel("Prometheus 2's name only", labels.MustNewMatcher(labels.MatchEqual, "le", "1")), true},
		{sel("Prometheus 3's name only", labels.MustNewMatcher(labels.MatchEqual, "le", "1.0")), true},
		{sel("not a bound", labels.MustNewMatcher(labels.MatchEqual, "le", "0.25")), true},
		{deploy.Selector{Where: "no such metric", Metric: "y_total"}, true},
		{deploy.Selector{Where: "a histogram's count", Metric: "x_seconds_count"}, false},
	}
	for _, tt := range tests {
		if got := len(missing([]deploy.Selector{tt.sel}, byName)) > 0; got != tt.want {
			t.Errorf("%s: reported %v, want %v", tt.sel.Where, got, tt.want)
		}
	}
}
