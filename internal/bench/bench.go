// Package bench is the load generator and measuring side of `twinline
// bench`: scenarios that drive a running twinline server over its public
// HTTP API and stream endpoint and report throughput, latency percentiles
// (HDR histograms) and resource use.
//
// Scenarios:
//
//   - ingest-json, ingest-lp: closed loop, W workers post batches as fast as
//     the server acknowledges them; samples/s acknowledged (2xx = durable)
//     and CPU per sample.
//   - latency: an open-loop sender at a fixed rate stamps each event with
//     its intended send time (so a stall anywhere counts against latency:
//     no coordinated omission) while N stream clients subscribe; each
//     received sample's arrival time − event time goes into the histogram.
//   - fanout: N stream clients connect at once (connect rate, memory per
//     connection), then receive a paced load (messages/s delivered).
//   - query: a store preloaded with history, then history queries
//     (downsampled and aggregated) and the fleet list, one at a time.
//   - dashboard: the latency scenario plus conflated fleet clients
//     (all=1&conflate=D), as a dashboard's fleet view subscribes: machine
//     clients' latency, the fleet clients' update interval and message
//     size, and every client the server dropped.
//   - oee: Machines machines with History of states and part counters
//     every 10 s, then the OEE of the fleet by the hour, and of one machine.
//   - twin: Machines MQTT devices (clients of the server's broker) answer
//     desired setpoints PATCHed at Rate per second with reported patches:
//     PATCH → device and PATCH → reported acknowledged (round trip).
//
// The package is a client only: the caller (cmd/twinline) starts an
// embedded server when no target is given and tells the package which
// process to watch for memory and CPU.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// Scenarios are the scenario names, in the order of the help text.
var Scenarios = []string{"ingest-json", "ingest-lp", "latency", "fanout", "query", "dashboard", "twin", "oee"}

// Process names the process whose memory and CPU a scenario reports: the
// server. PID 0 is this process (an embedded server).
type Process struct {
	PID int
}

// Options configure a run. Zero values take the scenario's default (see
// [Options.WithDefaults]).
type Options struct {
	Scenario string
	// Target is the server's base URL, e.g. http://127.0.0.1:8080: where
	// events are sent (a gateway, when the roles run apart).
	Target string
	// IngestTargets are the servers events are sent to, sender worker w to
	// IngestTargets[w mod n] (gateways); empty: the Target.
	IngestTargets []string
	// StreamTargets are the base URLs the stream clients connect to, in
	// turn (client i to StreamTargets[i mod n]): api replicas. Empty: the
	// Target.
	StreamTargets []string
	// MetricsTargets are further processes whose /metrics are read for
	// the legs and the store's backlog (processors), besides Target and
	// StreamTargets.
	MetricsTargets []string
	// Token is sent as a bearer token on every request ("": none).
	Token    string
	Duration time.Duration
	// Warmup is the start of the measured phase excluded from latency
	// figures (latency, fanout).
	Warmup time.Duration

	Workers  int // concurrent HTTP senders
	Batch    int // events (or lines) per request
	Machines int // simulated machines
	// Prefix starts every machine id (prefix-00042), so that several
	// bench processes can share a server without mixing their machines.
	Prefix  string
	Metrics int // metrics per event
	// LPShape is the ingest-lp scenario's line shape: ShapeSimple (""),
	// or ShapeTSBSIoT (TSBS iot: two measurements, 8 tags, 10 s interval;
	// Metrics is not used).
	LPShape string
	Rate    float64 // events per second of the open-loop sender (latency, fanout)
	// Linger is the longest an event waits in the open-loop sender for its
	// batch to fill: batching adds at most this much latency.
	Linger time.Duration

	Clients           int    // stream clients (latency, fanout)
	MachinesPerClient int    // machines each stream client subscribes to
	AllClients        int    // of Clients, how many subscribe with ?all=1
	Transport         string // "ws" or "sse"
	ConnectWorkers    int    // concurrent dials while connecting clients
	// FleetClients subscribe, besides Clients, to the conflated fleet
	// stream (all=1&conflate=Conflate) and measure its updates.
	FleetClients int
	Conflate     time.Duration

	// MQTT is the server's MQTT broker, host:port (twin: the devices
	// connect to it).
	MQTT string

	HistoryMachines int           // query: machines preloaded with history
	History         time.Duration // query: length of the preloaded history at 1 Hz

	// Server is the process measured for RSS and CPU (nil: not measured);
	// Embedded says the server runs in this process (so those figures
	// include the load generator).
	Server   *Process
	Embedded bool

	// Connected, when set, is called once every stream client is connected,
	// before the measured phase (latency, fanout): e.g. to write a heap
	// profile of the server holding them.
	Connected func()

	// Progress receives the live progress line every second (nil: none);
	// Terminal overwrites one line with \r instead of printing lines.
	Progress io.Writer
	Terminal bool
}

// WithDefaults returns o with the zero fields set to the scenario's
// defaults.
func (o Options) WithDefaults() Options {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	def(&o.Workers, 4*runtime.GOMAXPROCS(0))
	def(&o.Metrics, 3)
	def(&o.MachinesPerClient, 1)
	def(&o.ConnectWorkers, 64)
	def(&o.HistoryMachines, 4)
	if o.History == 0 {
		o.History = 24 * time.Hour
	}
	if o.Prefix == "" {
		o.Prefix = "bench"
	}
	if o.Linger == 0 {
		o.Linger = 10 * time.Millisecond
	}
	if o.Transport == "" {
		o.Transport = "ws"
	}
	if len(o.IngestTargets) == 0 && o.Target != "" {
		o.IngestTargets = []string{o.Target}
	}
	if len(o.StreamTargets) == 0 && o.Target != "" {
		o.StreamTargets = []string{o.Target}
	}
	switch o.Scenario {
	case "ingest-json", "ingest-lp":
		def(&o.Batch, 1000)
		def(&o.Machines, 1000)
	case "latency", "dashboard":
		def(&o.Batch, 500)
		def(&o.Machines, 1000)
		def(&o.Clients, 1000)
		if o.Rate == 0 {
			o.Rate = 50_000
		}
		if o.Warmup == 0 {
			o.Warmup = min(time.Second, o.Duration/5)
		}
		if o.Scenario == "dashboard" {
			def(&o.FleetClients, 50)
		}
	case "fanout":
		def(&o.Batch, 500)
		def(&o.Machines, 1000)
		def(&o.Clients, 20_000)
		if o.Rate == 0 {
			o.Rate = 1000
		}
		if o.Warmup == 0 {
			o.Warmup = min(time.Second, o.Duration/5)
		}
	case "query":
		def(&o.Batch, 1000)
		def(&o.Machines, 1000)
	case "oee":
		def(&o.Batch, 1000)
		def(&o.Machines, 1000)
	case "twin":
		def(&o.Batch, 1) // one PATCH, one setpoint
		def(&o.Machines, 1000)
		if o.Rate == 0 {
			o.Rate = 200
		}
	}
	if o.FleetClients > 0 && o.Conflate == 0 {
		o.Conflate = 250 * time.Millisecond
	}
	return o
}

// Validate reports every bad option at once.
func (o Options) Validate() error {
	var errs []error
	bad := func(flag, format string, a ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...)))
	}
	known := false
	for _, s := range Scenarios {
		known = known || s == o.Scenario
	}
	if !known {
		bad("scenario", "%q is not one of %s", o.Scenario, strings.Join(Scenarios, ", "))
	}
	if !httpURL(o.Target) {
		bad("target", "%q is not an http(s) URL like http://127.0.0.1:8080", o.Target)
	}
	for _, u := range o.IngestTargets {
		if !httpURL(u) {
			bad("target", "%q is not an http(s) URL like http://127.0.0.1:8080", u)
		}
	}
	for _, u := range o.StreamTargets {
		if !httpURL(u) {
			bad("stream-target", "%q is not an http(s) URL like http://127.0.0.1:8081", u)
		}
	}
	for _, u := range o.MetricsTargets {
		if !httpURL(u) {
			bad("metrics-target", "%q is not an http(s) URL like http://127.0.0.1:8082", u)
		}
	}
	if o.Duration <= 0 {
		bad("duration", "must be positive")
	}
	if len(o.Prefix) > 100 || strings.ContainsAny(o.Prefix, " \t\n/+#?\"\\&=%") {
		bad("prefix", "%q must be at most 100 characters without spaces, quotes or / + # ? & = %%", o.Prefix)
	} else if p := ingest.MachineIDProblem(machineName(o.Prefix, 0), telemetry.DefaultLimits().MaxMachineIDLen); p != "" {
		bad("prefix", "%q makes machine ids that are not valid: a machine id %s", o.Prefix, p)
	}
	if o.Linger < 0 {
		bad("linger", "must not be negative")
	}
	if o.LPShape != "" && !slices.Contains(LPShapes, o.LPShape) {
		bad("lp-shape", "%q is not one of %s", o.LPShape, strings.Join(LPShapes, ", "))
	} else if o.LPShape == ShapeTSBSIoT && o.Scenario != "ingest-lp" {
		bad("lp-shape", "applies to the ingest-lp scenario only")
	}
	if o.Warmup < 0 || (o.Warmup > 0 && o.Warmup >= o.Duration) {
		bad("warmup", "must be at least 0 and shorter than --duration")
	}
	positive := func(flag string, v int) {
		if v < 1 {
			bad(flag, "must be at least 1, got %d", v)
		}
	}
	positive("workers", o.Workers)
	positive("batch", o.Batch)
	positive("machines", o.Machines)
	positive("metrics", o.Metrics)
	positive("connect-workers", o.ConnectWorkers)
	if o.FleetClients > 0 && o.Scenario != "latency" && o.Scenario != "fanout" && o.Scenario != "dashboard" {
		bad("fleet-clients", "only with the stream scenarios (latency, fanout, dashboard)")
	}
	if o.Metrics > 256 {
		bad("metrics", "at most 256 (the server's default --max-metrics-per-event)")
	}
	switch o.Scenario {
	case "ingest-json", "ingest-lp":
		if o.Machines < o.Workers {
			bad("machines", "%d is fewer than --workers (%d): each worker owns its machines", o.Machines, o.Workers)
		}
	case "latency", "fanout", "dashboard":
		if !(o.Rate > 0) {
			bad("rate", "must be positive")
		}
		// Events of one machine must be at least 1 ms apart: event times
		// are milliseconds, and two samples of a series at the same
		// millisecond are one sample.
		if o.Rate > 1000*float64(o.Machines) {
			bad("rate", "%g events/s over %d machines puts two events of a machine in the same millisecond; use at least %d machines", o.Rate, o.Machines, int(o.Rate/1000)+1)
		}
		positive("clients", o.Clients)
		positive("machines-per-client", o.MachinesPerClient)
		if o.MachinesPerClient > min(o.Machines, 1000) {
			bad("machines-per-client", "at most --machines and 1000")
		}
		if o.AllClients < 0 || o.AllClients > o.Clients {
			bad("all-clients", "must be between 0 and --clients")
		}
		if o.Transport != "ws" && o.Transport != "sse" {
			bad("transport", "%q is not ws or sse", o.Transport)
		}
		if o.FleetClients < 0 {
			bad("fleet-clients", "must not be negative")
		}
		// The server's bounds of conflate (internal/hub).
		if o.FleetClients > 0 && (o.Conflate < 50*time.Millisecond || o.Conflate > 10*time.Second) {
			bad("conflate", "%s is not between 50ms and 10s", o.Conflate)
		}
	case "twin":
		if !(o.Rate > 0) {
			bad("rate", "must be positive")
		}
		if o.MQTT != "" {
			if _, _, err := net.SplitHostPort(o.MQTT); err != nil {
				bad("mqtt", "%q is not host:port", o.MQTT)
			}
		}
	case "query":
		positive("history-machines", o.HistoryMachines)
		if o.HistoryMachines > o.Machines {
			bad("history-machines", "at most --machines (%d)", o.Machines)
		}
		if o.History < time.Minute {
			bad("history", "at least 1m")
		}
	}
	return errors.Join(errs...)
}

// Run runs the scenario of o (after [Options.WithDefaults]) against
// o.Target and returns its result. It returns early, with what was
// measured so far, when ctx ends.
func Run(ctx context.Context, o Options) (*Result, error) {
	o = o.WithDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.Target = strings.TrimRight(o.Target, "/")
	o.IngestTargets, o.StreamTargets, o.MetricsTargets = slices.Clone(o.IngestTargets), slices.Clone(o.StreamTargets), slices.Clone(o.MetricsTargets)
	for i, u := range o.IngestTargets {
		o.IngestTargets[i] = strings.TrimRight(u, "/")
	}
	for i, u := range o.StreamTargets {
		o.StreamTargets[i] = strings.TrimRight(u, "/")
	}
	for i, u := range o.MetricsTargets {
		o.MetricsTargets[i] = strings.TrimRight(u, "/")
	}
	for _, u := range metricsSources(o) {
		if err := reach(ctx, u, "/healthz", http.StatusOK); err != nil {
			// ingest-lp also loads any InfluxDB-compatible server (another
			// time-series database, to compare): one answering /ping.
			if o.Scenario == "ingest-lp" && reach(ctx, u, "/ping", http.StatusNoContent) == nil {
				continue
			}
			return nil, err
		}
	}
	r := newResult(o)
	var err error
	switch o.Scenario {
	case "ingest-json", "ingest-lp":
		err = runIngest(ctx, o, r)
	case "latency", "fanout", "dashboard":
		err = runStream(ctx, o, r)
	case "query":
		err = runQuery(ctx, o, r)
	case "twin":
		err = runTwin(ctx, o, r)
	case "oee":
		err = runOEE(ctx, o, r)
	}
	if err != nil && r.Seconds == 0 && ctx.Err() == nil {
		return nil, err // nothing was measured
	}
	return r, err
}

// httpURL reports whether s is an http(s) URL with a host.
func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// reach checks that a server answers GET path at target with status (a
// twinline server: /healthz, 200).
func reach(ctx context.Context, target, path string, status int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target+path, nil)
	if err != nil {
		return fmt.Errorf("reaching the server: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reaching the server at %s: %w", target, err)
	}
	resp.Body.Close()
	if resp.StatusCode != status {
		return fmt.Errorf("reaching the server at %s: GET %s answered %s", target, path, resp.Status)
	}
	return nil
}
