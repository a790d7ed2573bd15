package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// metricNames are the names of the first metrics of every event; further
// ones are m8, m9, ….
var metricNames = []string{"temp", "rpm", "vibration", "pressure", "power", "current", "voltage", "flow"}

func metricList(n int) []string {
	out := make([]string, n)
	for i := range out {
		if i < len(metricNames) {
			out[i] = metricNames[i]
		} else {
			out[i] = "m" + strconv.Itoa(i)
		}
	}
	return out
}

// machineName is the id of simulated machine i.
func machineName(prefix string, i int) string {
	return fmt.Sprintf("%s-%05d", prefix, i)
}

func machineList(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = machineName(prefix, i)
	}
	return out
}

// value is a deterministic, varied metric value for event i, metric k.
func value(i int64, k int) float64 {
	return float64((i*7+int64(k)*13)%10_000) / 10
}

// appendJSONEvent appends ev in the wire form of the JSON ingest format
// (ingest.AppendEvent).
func appendJSONEvent(b []byte, ev *telemetry.Event) ([]byte, error) {
	return ingest.AppendEvent(b, ev)
}

// appendLine appends ev as one line of InfluxDB line protocol, millisecond
// precision: measurement "bench", tag machineId, one field per metric. The
// machine id and metric names are bench-made (Options.Validate checks the
// prefix) and need no escaping.
func appendLine(b []byte, ev *telemetry.Event) ([]byte, error) {
	b = append(b, "bench,machineId="...)
	b = append(b, ev.Machine...)
	for k, m := range ev.Metrics {
		if k == 0 {
			b = append(b, ' ')
		} else {
			b = append(b, ',')
		}
		b = append(b, m.Name...)
		b = append(b, '=')
		b = strconv.AppendFloat(b, m.Value, 'f', -1, 64)
	}
	b = append(b, ' ')
	b = strconv.AppendInt(b, ev.Time, 10)
	return append(b, '\n'), nil
}

// format is an ingest wire format.
type format struct {
	path, contentType string
	open, sep, close  string
	event             func(b []byte, ev *telemetry.Event) ([]byte, error)
}

var (
	formatJSON = format{path: "/api/v1/events", contentType: "application/json", open: "[", sep: ",", close: "]", event: appendJSONEvent}
	formatLP   = format{path: "/write?db=bench&precision=ms", contentType: "text/plain; charset=utf-8", event: appendLine}
)

// body builds one request body of n events; ev(j) gives the j-th event's
// machine, time and index, and the event carries the metrics named, with
// value(index, k) for the k-th.
func (f format) body(b []byte, n int, metrics []string, ev func(j int) (machine string, tsMs, i int64)) ([]byte, error) {
	e := telemetry.Event{Metrics: make([]telemetry.Metric, len(metrics))}
	for k, name := range metrics {
		e.Metrics[k].Name = name
	}
	b = append(b[:0], f.open...)
	for j := range n {
		if j > 0 {
			b = append(b, f.sep...)
		}
		var i int64
		e.Machine, e.Time, i = ev(j)
		for k := range e.Metrics {
			e.Metrics[k].Value = value(i, k)
		}
		var err error
		if b, err = f.event(b, &e); err != nil {
			return b, fmt.Errorf("encoding bench event: %w", err)
		}
	}
	return append(b, f.close...), nil
}

// errCounts counts failures by kind ("503", "transport", …).
type errCounts struct {
	mu sync.Mutex
	m  map[string]int64
}

func (e *errCounts) add(kind string) {
	e.mu.Lock()
	if e.m == nil {
		e.m = make(map[string]int64)
	}
	e.m[kind]++
	e.mu.Unlock()
}

func (e *errCounts) snapshot() map[string]int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.m) == 0 {
		return nil
	}
	out := make(map[string]int64, len(e.m))
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

// poster sends ingest requests and counts what was acknowledged.
type poster struct {
	client *http.Client
	// urls are the ingest endpoints, worker w posting to urls[w mod n].
	urls    []string
	format  format
	metrics int
	m       *meter
	errs    *errCounts
	reqs    *Shards
	// duplicates counts events the server dropped as duplicates.
	duplicates atomic.Int64
	// firstErr keeps the first failure's description for the report.
	mu       sync.Mutex
	firstErr string
}

func newHTTPClient(conns int, token string) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Transport: auth.BearerTransport(token, tr), Timeout: 2 * time.Minute}
}

func newPoster(o Options, f format, m *meter) *poster {
	return &poster{
		client:  newHTTPClient(o.Workers, o.Token),
		urls:    ingestURLs(o, f),
		format:  f,
		metrics: o.Metrics,
		m:       m,
		errs:    &errCounts{},
		reqs:    NewShards(o.Workers),
	}
}

// ingestURLs are the ingest endpoints of f on every ingest target.
func ingestURLs(o Options, f format) []string {
	targets := o.IngestTargets
	if len(targets) == 0 {
		targets = []string{o.Target}
	}
	urls := make([]string, len(targets))
	for i, t := range targets {
		urls[i] = t + f.path
	}
	return urls
}

// ingestAnswer is the JSON ingest endpoint's 202 body.
type ingestAnswer struct {
	Accepted   int64 `json:"accepted"`
	Duplicates int64 `json:"duplicates"`
}

// post sends body holding events events and reports how many were
// acknowledged (0 on failure, counted by kind). worker picks the request
// latency shard.
func (p *poster) post(ctx context.Context, worker int, body []byte, events int) (acked int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.urls[worker%len(p.urls)], bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Content-Type", p.format.contentType)
	start := time.Now()
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		p.fail("transport", err.Error())
		return 0, nil
	}
	answer, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	p.reqs.Shard(worker).Record(time.Since(start))
	p.m.requests.Add(1)
	if rerr != nil {
		p.fail("transport", rerr.Error())
		return 0, nil
	}
	if resp.StatusCode/100 != 2 {
		p.fail(strconv.Itoa(resp.StatusCode), fmt.Sprintf("%s: %.300s", resp.Status, answer))
		return 0, nil
	}
	acked, dups := int64(events), int64(0)
	if resp.StatusCode == http.StatusAccepted && len(answer) > 0 {
		var a ingestAnswer
		if err := json.Unmarshal(answer, &a); err != nil {
			p.fail("bad-answer", err.Error())
			return 0, nil
		}
		acked, dups = a.Accepted, a.Duplicates
	}
	p.m.events.Add(acked)
	p.m.samples.Add(acked * int64(p.metrics))
	p.duplicates.Add(dups)
	return acked, nil
}

func (p *poster) fail(kind, detail string) {
	p.m.errors.Add(1)
	p.errs.add(kind)
	p.mu.Lock()
	if p.firstErr == "" {
		p.firstErr = kind + ": " + detail
	}
	p.mu.Unlock()
}

// close releases the idle connections.
func (p *poster) close() { p.client.CloseIdleConnections() }

// ingestResult fills the ingest section from the meter and the poster.
func (p *poster) result(m *meter, seconds float64) *IngestResult {
	errs := p.errs.snapshot()
	dups := p.duplicates.Load()
	s := p.reqs.Merged().Summary()
	in := &IngestResult{
		Requests:   m.requests.Load(),
		Events:     m.events.Load(),
		Samples:    m.samples.Load(),
		Duplicates: dups,
		Errors:     errs,
		Request:    &s,
	}
	if seconds > 0 {
		in.EventsPerS = float64(in.Events) / seconds
		in.SamplesPerS = float64(in.Samples) / seconds
	}
	return in
}

// errTooManyFailures ends a run whose requests all fail.
var errTooManyFailures = errors.New("every request failed")

// failedOut reports whether the run should stop: requests were made and
// none succeeded.
func (p *poster) failedOut(m *meter) error {
	if m.errors.Load() >= 20 && m.events.Load() == 0 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return fmt.Errorf("%w; first: %s", errTooManyFailures, p.firstErr)
	}
	return nil
}
