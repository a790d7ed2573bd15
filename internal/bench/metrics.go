package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/twinline/twinline/internal/auth"
)

// The server's legs: where the sensor → client time goes, each a
// histogram in the /metrics of the process that runs that part. The bench
// reads every process it knows of (--target, --stream-target,
// --metrics-target) before and after the measured phase and subtracts, so
// a leg covers exactly that phase, summed over the processes that expose
// it. A leg whose series no process exposes is reported absent ("–").
var legSpecs = []legSpec{
	{name: "ingest_ack", metric: "twinline_leg_seconds", match: "leg", value: "ingest_ack", what: "gateway took the batch → log append acknowledged"},
	{name: "log_wait", metric: "twinline_leg_seconds", match: "leg", value: "log_wait", what: "gateway took it → processor read it"},
	{name: "engine", metric: "twinline_leg_seconds", match: "leg", value: "engine", what: "engine, per lane group"},
	{name: "store_commit", metric: "twinline_leg_seconds", match: "leg", value: "store_commit", what: "one durable commit"},
	{name: "publish_write", metric: "twinline_leg_seconds", match: "leg", value: "publish_write", what: "hub publish → written to a client socket"},
	{name: "ingest_durable", metric: "twinline_ingest_durable_seconds", split: "log", what: "ingest → committed"},
	{name: "stream_delivery", metric: "twinline_stream_delivery_seconds", what: "ingest time → written to a client socket, server side"},
	// Older, coarser figures, shown when a process exposes them.
	{name: "store_write", metric: "twinline_store_write_seconds", split: "log", what: "one store commit (processor)", optional: true},
	{name: "kafka_produce", metric: "twinline_kafka_produce_seconds", what: "one Kafka append until acknowledged (gateway)", optional: true},
	{name: "stream_publish", metric: "twinline_stream_publish_duration_seconds", what: "one hub publish", optional: true},
}

// legSpec names one leg's histogram: metric, restricted to the series
// whose label match equals value (match ""; every series), reported once
// per value of the label split ("": all series summed).
type legSpec struct {
	name, metric string
	match, value string
	split        string
	what         string
	optional     bool
}

// The gauges read for "is the store keeping up", and the counter of
// stored samples.
const (
	lagMetric    = "twinline_kafka_consumer_lag_records"
	depthMetric  = "twinline_log_depth_samples"
	storedMetric = "twinline_processed_samples_total"
)

// metricsSnapshot is one reading of every source's /metrics.
type metricsSnapshot struct {
	at time.Time
	// fams are the parsed families of each source that answered, in
	// source order (nil for one that did not).
	fams []map[string]*dto.MetricFamily
	errs []error
}

// readMetrics fetches and parses base's /metrics.
func readMetrics(ctx context.Context, c *http.Client, base string) (map[string]*dto.MetricFamily, error) {
	body, err := fetchMetrics(ctx, c, base)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parsing %s/metrics: %w", base, err)
	}
	return fams, nil
}

// fetchMetrics returns the body of base's /metrics.
func fetchMetrics(ctx context.Context, c *http.Client, base string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("reading %s/metrics: %w", base, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading %s/metrics: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading %s/metrics: answered %s", base, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s/metrics: %w", base, err)
	}
	return body, nil
}

// histSnap is a classic Prometheus histogram: cumulative counts per upper
// bound (the last +Inf), their sum and count.
type histSnap struct {
	bounds []float64
	cum    []float64
	count  float64
	sum    float64
}

func fromDTO(h *dto.Histogram) histSnap {
	s := histSnap{count: float64(h.GetSampleCount()), sum: h.GetSampleSum()}
	for _, b := range h.GetBucket() {
		s.bounds = append(s.bounds, b.GetUpperBound())
		s.cum = append(s.cum, float64(b.GetCumulativeCount()))
	}
	if n := len(s.bounds); n == 0 || !math.IsInf(s.bounds[n-1], 1) {
		s.bounds = append(s.bounds, math.Inf(1))
		s.cum = append(s.cum, s.count)
	}
	return s
}

// add returns s + o; ok is false when their buckets differ.
func (s histSnap) add(o histSnap) (histSnap, bool) {
	if s.bounds == nil {
		return o.clone(), true
	}
	if !slices.Equal(s.bounds, o.bounds) {
		return s, false
	}
	out := s.clone()
	for i := range out.cum {
		out.cum[i] += o.cum[i]
	}
	out.count += o.count
	out.sum += o.sum
	return out, true
}

// sub returns s − before: the observations made between the two
// readings. A process restarted in between (its count went down) counts
// from zero.
func (s histSnap) sub(before histSnap) histSnap {
	if before.bounds == nil || before.count > s.count || !slices.Equal(s.bounds, before.bounds) {
		return s.clone()
	}
	out := s.clone()
	for i := range out.cum {
		out.cum[i] -= before.cum[i]
	}
	out.count -= before.count
	out.sum -= before.sum
	return out
}

func (s histSnap) clone() histSnap {
	s.bounds = slices.Clone(s.bounds)
	s.cum = slices.Clone(s.cum)
	return s
}

// quantile estimates the q-quantile as Prometheus' histogram_quantile
// does: linear within the bucket it falls in, the lowest bucket starting
// at 0, and the highest finite bound for what falls in +Inf.
func (s histSnap) quantile(q float64) float64 {
	if s.count <= 0 || len(s.bounds) == 0 {
		return math.NaN()
	}
	rank := q * s.count
	i := sort.Search(len(s.cum), func(i int) bool { return s.cum[i] >= rank })
	if i >= len(s.bounds) {
		i = len(s.bounds) - 1
	}
	if math.IsInf(s.bounds[i], 1) {
		if i == 0 {
			return math.NaN()
		}
		return s.bounds[i-1]
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = s.bounds[i-1], s.cum[i-1]
	}
	in := s.cum[i] - below
	if in <= 0 {
		return s.bounds[i]
	}
	return lo + (s.bounds[i]-lo)*(rank-below)/in
}

// series are the histograms of one family, summed per value of a label
// (split), restricted to the series whose label match equals value.
// procs counts the sources that contributed to each.
type series struct {
	h     map[string]histSnap
	procs map[string]int
	// mismatch names a key whose buckets differed between processes.
	mismatch []string
}

func collect(srcs []map[string]*dto.MetricFamily, sp legSpec) series {
	out := series{h: map[string]histSnap{}, procs: map[string]int{}}
	for _, fams := range srcs {
		f := fams[sp.metric]
		if f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		seen := map[string]bool{}
		for _, m := range f.GetMetric() {
			if sp.match != "" && labelValue(m, sp.match) != sp.value {
				continue
			}
			key := ""
			if sp.split != "" {
				key = labelValue(m, sp.split)
			}
			sum, ok := out.h[key].add(fromDTO(m.GetHistogram()))
			if !ok {
				out.mismatch = append(out.mismatch, key)
				continue
			}
			out.h[key] = sum
			if !seen[key] {
				seen[key] = true
				out.procs[key]++
			}
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// LegResult is one leg's latency over the measured phase, from the
// servers' histograms (Prometheus buckets: the quantiles are estimated
// within a bucket, as histogram_quantile does).
type LegResult struct {
	Name string `json:"name"`
	// Series names the histogram, e.g. twinline_leg_seconds{leg="engine"}.
	Series string `json:"series"`
	What   string `json:"what"`
	// Present is false when no process exposed the series: the other
	// fields are then zero.
	Present bool `json:"present"`
	// Processes is how many of the processes read exposed it.
	Processes int     `json:"processes,omitempty"`
	Count     int64   `json:"count"`
	MeanMs    float64 `json:"meanMs"`
	P50Ms     float64 `json:"p50Ms"`
	P99Ms     float64 `json:"p99Ms"`
}

// PipelineResult says whether the store kept up over the measured phase,
// from the processes' /metrics.
type PipelineResult struct {
	// Sources are the /metrics endpoints read; SourceErrors those that
	// could not be read, with why.
	Sources      []string `json:"sources"`
	SourceErrors []string `json:"sourceErrors,omitempty"`
	// Seconds is the time between the two readings.
	Seconds float64 `json:"seconds"`
	// StoredSamplesPerS is twinline_processed_samples_total{outcome="stored"}
	// over the phase, summed over the processes that count it
	// (StoringProcesses).
	StoredSamplesPerS float64 `json:"storedSamplesPerS"`
	StoringProcesses  int     `json:"storingProcesses"`
	// Lag is the Kafka consumer lag (records not yet stored, summed over
	// partitions and processors), Depth the in-process log's depth
	// (samples not yet processed): at the start and end of the phase and
	// the most seen in between (read every second). Nil when no process
	// exposes it.
	Lag   *Backlog `json:"kafkaLagRecords,omitempty"`
	Depth *Backlog `json:"logDepthSamples,omitempty"`
}

// Backlog is a gauge over the measured phase.
type Backlog struct {
	Start    float64 `json:"start"`
	End      float64 `json:"end"`
	Max      float64 `json:"max"`
	Readings int     `json:"readings"`
}

func (b *Backlog) observe(v float64) {
	if b.Readings == 0 {
		b.Start = v
	}
	b.End = v
	b.Max = max(b.Max, v)
	b.Readings++
}

// legs computes every leg of legSpecs over after − before.
func legs(before, after []map[string]*dto.MetricFamily) (out []LegResult, notes []string) {
	for _, sp := range legSpecs {
		b, a := collect(before, sp), collect(after, sp)
		for _, k := range a.mismatch {
			notes = append(notes, fmt.Sprintf("leg %s%s: the processes' buckets differ; only the first is counted", sp.name, splitSuffix(sp, k)))
		}
		keys := make([]string, 0, len(a.h))
		for k := range a.h {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if len(keys) == 0 {
			if !sp.optional {
				out = append(out, LegResult{Name: sp.name, Series: seriesName(sp, ""), What: sp.what})
			}
			continue
		}
		for _, k := range keys {
			d := a.h[k].sub(b.h[k])
			l := LegResult{
				Name: sp.name + splitSuffix(sp, k), Series: seriesName(sp, k), What: sp.what,
				Present: true, Processes: a.procs[k], Count: int64(math.Round(d.count)),
			}
			if d.count > 0 {
				l.MeanMs = 1000 * d.sum / d.count
				l.P50Ms = 1000 * d.quantile(0.5)
				l.P99Ms = 1000 * d.quantile(0.99)
			}
			out = append(out, l)
		}
	}
	return out, notes
}

func splitSuffix(sp legSpec, key string) string {
	if sp.split == "" {
		return ""
	}
	return "{" + key + "}"
}

func seriesName(sp legSpec, key string) string {
	var labels []string
	if sp.match != "" {
		labels = append(labels, fmt.Sprintf("%s=%q", sp.match, sp.value))
	}
	if sp.split != "" && key != "" {
		labels = append(labels, fmt.Sprintf("%s=%q", sp.split, key))
	}
	if len(labels) == 0 {
		return sp.metric
	}
	return sp.metric + "{" + strings.Join(labels, ",") + "}"
}

// counterSum sums a counter family's series whose label match equals
// value, over the sources; n is how many sources expose it.
func counterSum(srcs []map[string]*dto.MetricFamily, name, match, value string) (sum float64, n int) {
	for _, fams := range srcs {
		f := fams[name]
		if f == nil {
			continue
		}
		found := false
		for _, m := range f.GetMetric() {
			if match != "" && labelValue(m, match) != value {
				continue
			}
			found = true
			sum += m.GetCounter().GetValue()
		}
		if found {
			n++
		}
	}
	return sum, n
}

// gaugeSum scans a Prometheus text exposition for the series of the gauge
// name and sums them (cheaper than a full parse: read every second).
func gaugeSum(body []byte, name string) (sum float64, found bool) {
	for line := range bytes.Lines(body) {
		line = bytes.TrimSpace(line)
		rest, ok := bytes.CutPrefix(line, []byte(name))
		if !ok || len(rest) == 0 || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if rest[0] == '{' {
			i := bytes.LastIndexByte(rest, '}')
			if i < 0 {
				continue
			}
			rest = rest[i+1:]
		}
		fields := bytes.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(string(fields[0]), 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

// phaseWatch reads the sources' /metrics at the start and the end of the
// measured phase, and their backlog gauges every second in between.
type phaseWatch struct {
	sources []string
	client  *http.Client

	mu     sync.Mutex
	before metricsSnapshot
	lag    Backlog
	depth  Backlog

	stop context.CancelFunc
	done chan struct{}
}

// startPhase reads every source now (the start of the phase) and keeps
// reading the backlog gauges every interval until finish.
func startPhase(ctx context.Context, sources []string, token string, interval time.Duration) *phaseWatch {
	w := &phaseWatch{
		sources: sources,
		client:  &http.Client{Transport: auth.BearerTransport(token, &http.Transport{Proxy: nil})},
		done:    make(chan struct{}),
	}
	w.before = w.snapshot(ctx)
	w.observeBacklog(w.before.fams)
	var tctx context.Context
	tctx, w.stop = context.WithCancel(ctx)
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-tctx.Done():
				return
			case <-t.C:
				w.sampleBacklog(tctx)
			}
		}
	}()
	return w
}

func (w *phaseWatch) snapshot(ctx context.Context) metricsSnapshot {
	s := metricsSnapshot{at: time.Now(), fams: make([]map[string]*dto.MetricFamily, len(w.sources)), errs: make([]error, len(w.sources))}
	var wg sync.WaitGroup
	for i, src := range w.sources {
		wg.Go(func() { s.fams[i], s.errs[i] = readMetrics(ctx, w.client, src) })
	}
	wg.Wait()
	return s
}

// observeBacklog records the backlog gauges of a full reading.
func (w *phaseWatch) observeBacklog(srcs []map[string]*dto.MetricFamily) {
	lag, lagFound := familySum(srcs, lagMetric)
	depth, depthFound := familySum(srcs, depthMetric)
	w.mu.Lock()
	defer w.mu.Unlock()
	if lagFound {
		w.lag.observe(lag)
	}
	if depthFound {
		w.depth.observe(depth)
	}
}

// sampleBacklog reads the backlog gauges of every source.
func (w *phaseWatch) sampleBacklog(ctx context.Context) {
	var lag, depth float64
	var lagFound, depthFound bool
	for _, src := range w.sources {
		body, err := fetchMetrics(ctx, w.client, src)
		if err != nil {
			continue
		}
		if v, ok := gaugeSum(body, lagMetric); ok {
			lag, lagFound = lag+v, true
		}
		if v, ok := gaugeSum(body, depthMetric); ok {
			depth, depthFound = depth+v, true
		}
	}
	if ctx.Err() != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if lagFound {
		w.lag.observe(lag)
	}
	if depthFound {
		w.depth.observe(depth)
	}
}

// familySum sums every series of a gauge or counter family over the
// sources.
func familySum(srcs []map[string]*dto.MetricFamily, name string) (sum float64, found bool) {
	for _, fams := range srcs {
		f := fams[name]
		if f == nil {
			continue
		}
		for _, m := range f.GetMetric() {
			found = true
			switch {
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Untyped != nil:
				sum += m.GetUntyped().GetValue()
			}
		}
	}
	return sum, found
}

// finish reads every source again (the end of the phase) and returns the
// legs over the phase, the pipeline's figures and notes on what could not
// be read.
func (w *phaseWatch) finish(ctx context.Context) ([]LegResult, *PipelineResult, []string) {
	w.stop()
	<-w.done
	after := w.snapshot(ctx)
	w.observeBacklog(after.fams)
	var notes []string
	p := &PipelineResult{Sources: w.sources, Seconds: after.at.Sub(w.before.at).Seconds()}
	for i, src := range w.sources {
		if err := cmpErr(w.before.errs[i], after.errs[i]); err != nil {
			p.SourceErrors = append(p.SourceErrors, fmt.Sprintf("%s: %v", src, err))
			notes = append(notes, fmt.Sprintf("server metrics of %s not read: %v", src, err))
		}
	}
	// A source counts only when both readings of it worked.
	before, afterOK := make([]map[string]*dto.MetricFamily, 0, len(w.sources)), make([]map[string]*dto.MetricFamily, 0, len(w.sources))
	for i := range w.sources {
		if w.before.fams[i] != nil && after.fams[i] != nil {
			before = append(before, w.before.fams[i])
			afterOK = append(afterOK, after.fams[i])
		}
	}
	ls, lnotes := legs(before, afterOK)
	notes = append(notes, lnotes...)
	s0, _ := counterSum(before, storedMetric, "outcome", "stored")
	s1, n := counterSum(afterOK, storedMetric, "outcome", "stored")
	p.StoringProcesses = n
	if p.Seconds > 0 && s1 >= s0 {
		p.StoredSamplesPerS = (s1 - s0) / p.Seconds
	}
	w.mu.Lock()
	if w.lag.Readings > 0 {
		lag := w.lag
		p.Lag = &lag
	}
	if w.depth.Readings > 0 {
		depth := w.depth
		p.Depth = &depth
	}
	w.mu.Unlock()
	w.client.CloseIdleConnections()
	return ls, p, notes
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// metricsSources are the distinct base URLs whose /metrics a run reads:
// the ingest targets, the stream targets and the extra metrics targets.
func metricsSources(o Options) []string {
	var out []string
	all := append([]string{o.Target}, o.IngestTargets...)
	all = append(append(all, o.StreamTargets...), o.MetricsTargets...)
	for _, u := range all {
		u = strings.TrimRight(u, "/")
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}
