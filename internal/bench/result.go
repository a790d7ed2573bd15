package bench

import (
	"fmt"
	"io"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is a run's machine-readable outcome (`twinline bench --json`).
// Sections that do not apply to the scenario are omitted.
type Result struct {
	Scenario string `json:"scenario"`
	Target   string `json:"target"`
	// IngestTargets are where events went, when not only the Target;
	// StreamTargets where the stream clients connected, when not (only)
	// the Target; MetricsTargets further processes whose /metrics were
	// read.
	IngestTargets  []string  `json:"ingestTargets,omitempty"`
	StreamTargets  []string  `json:"streamTargets,omitempty"`
	MetricsTargets []string  `json:"metricsTargets,omitempty"`
	Embedded       bool      `json:"embedded"`
	StartedAt      time.Time `json:"startedAt"`
	// Seconds is the length of the measured phase.
	Seconds float64 `json:"seconds"`
	Host    Host    `json:"host"`
	Config  Config  `json:"config"`

	Ingest  *IngestResult `json:"ingest,omitempty"`
	Latency *Summary      `json:"latency,omitempty"`
	Stream  *StreamResult `json:"stream,omitempty"`
	Fleet   *FleetResult  `json:"fleet,omitempty"`
	// Legs break the server's part of the sensor → client time down, from
	// its /metrics over the measured phase; Pipeline says whether the
	// store kept up (ingest and stream scenarios).
	Legs     []LegResult     `json:"legs,omitempty"`
	Pipeline *PipelineResult `json:"pipeline,omitempty"`
	Queries  []QueryResult   `json:"queries,omitempty"`
	Twin     *TwinResult     `json:"twin,omitempty"`
	Server   *ServerResult   `json:"server,omitempty"`
	Notes    []string        `json:"notes,omitempty"`
}

// Host describes where the bench ran.
type Host struct {
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"goVersion"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
}

// Config echoes the options that shaped the run.
type Config struct {
	Workers           int     `json:"workers"`
	Batch             int     `json:"batch"`
	Machines          int     `json:"machines"`
	Metrics           int     `json:"metricsPerEvent"`
	Rate              float64 `json:"rate,omitempty"`
	LingerMs          float64 `json:"lingerMs,omitempty"`
	Clients           int     `json:"clients,omitempty"`
	MachinesPerClient int     `json:"machinesPerClient,omitempty"`
	AllClients        int     `json:"allClients,omitempty"`
	Transport         string  `json:"transport,omitempty"`
	FleetClients      int     `json:"fleetClients,omitempty"`
	ConflateMs        float64 `json:"conflateMs,omitempty"`
	WarmupSeconds     float64 `json:"warmupSeconds,omitempty"`
	HistoryMachines   int     `json:"historyMachines,omitempty"`
	HistorySeconds    float64 `json:"historySeconds,omitempty"`
}

// IngestResult counts what was sent and acknowledged.
type IngestResult struct {
	Requests int64 `json:"requests"`
	// Events and Samples were acknowledged 2xx: durable.
	Events     int64   `json:"events"`
	Samples    int64   `json:"samples"`
	Duplicates int64   `json:"duplicates"`
	EventsPerS float64 `json:"eventsPerS"`
	// SamplesPerS is data points per second (line protocol: fields).
	SamplesPerS float64 `json:"samplesPerS"`
	// Errors counts failed requests by status code ("transport" for no
	// answer); their events are not counted above.
	Errors map[string]int64 `json:"errors,omitempty"`
	// Behind is the open-loop sender's backlog at the end, in events.
	Behind int64 `json:"behind,omitempty"`
	// Request is the latency of each request until its answer.
	Request *Summary `json:"request,omitempty"`
}

// StreamResult describes the stream clients.
type StreamResult struct {
	Clients     int     `json:"clients"`
	Connected   int64   `json:"connected"`
	ConnectS    float64 `json:"connectSeconds"`
	ConnectPerS float64 `json:"connectPerS"`
	ConnectErrs int64   `json:"connectErrors,omitempty"`
	// Messages and Samples were received in the measured phase.
	Messages     int64   `json:"messages"`
	MessagesPerS float64 `json:"messagesPerS"`
	Samples      int64   `json:"samples"`
	SamplesPerS  float64 `json:"samplesPerS"`
	// Expected is how many samples the subscribers should have received
	// for the events acknowledged in the measured phase.
	Expected   int64 `json:"expected"`
	Reconnects int64 `json:"reconnects"`
	// Drops are the clients the server dropped while they were measured.
	Drops *DropResult `json:"drops,omitempty"`
	// RSSDelta is the server's resident memory with every client connected
	// minus before; BytesPerClient is RSSDelta / Connected.
	RSSDelta       int64   `json:"rssDeltaBytes,omitempty"`
	BytesPerClient float64 `json:"bytesPerClient,omitempty"`
	// ClientBytesPerClient is this (bench) process's own RSS delta per
	// client, after a GC, when the server runs elsewhere: the cost of the
	// load generator's side, to subtract from an embedded server's figure.
	ClientBytesPerClient float64 `json:"clientBytesPerClient,omitempty"`
}

// DropResult counts dropped stream clients, as the server reports them
// and as the clients saw them. A healthy run has none.
type DropResult struct {
	// Server is twinline_stream_clients_dropped_total{reason} after −
	// before the run, by reason (reasons that did not move are left out);
	// ServerTotal is their sum. ServerRead is false when the server's
	// /metrics could not be read: then both are unknown.
	Server      map[string]int64 `json:"server,omitempty"`
	ServerTotal int64            `json:"serverTotal"`
	ServerRead  bool             `json:"serverRead"`
	// ReconnectNotices counts reconnect messages the clients received,
	// CloseNotices WebSocket close frames with status 1013.
	ReconnectNotices int64 `json:"reconnectNotices"`
	CloseNotices     int64 `json:"closeNotices"`
}

// FleetResult describes what the clients of conflated fleet streams
// (all=1&conflate=D) received in the measured phase.
type FleetResult struct {
	Clients      int     `json:"clients"`
	ConflateMs   float64 `json:"conflateMs"`
	Messages     int64   `json:"messages"`
	MessagesPerS float64 `json:"messagesPerS"`
	// Interval is the time between two fleet messages of one client: the
	// conflation interval when the server keeps up.
	Interval Summary `json:"interval"`
	// Freshness is a fleet message's arrival − the event time of its
	// newest value.
	Freshness Summary     `json:"freshness"`
	Bytes     SizeSummary `json:"bytes"`
	// MachinesPerMessage and ValuesPerMessage are the machines and metric
	// values (latest per series) a fleet message carries on average;
	// SamplesPerMessage the acknowledged samples one message of one
	// client stands for (the conflation ratio).
	MachinesPerMessage float64 `json:"machinesPerMessage"`
	ValuesPerMessage   float64 `json:"valuesPerMessage"`
	SamplesPerMessage  float64 `json:"samplesPerMessage"`
}

// SizeSummary is a distribution of message sizes, in bytes.
type SizeSummary struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
}

// QueryResult is one kind of query's latency.
type QueryResult struct {
	Name   string  `json:"name"`
	Path   string  `json:"path"`
	Points float64 `json:"pointsAvg,omitempty"`
	// Bytes is the mean size of an answer.
	Bytes  float64          `json:"bytesAvg,omitempty"`
	Errors map[string]int64 `json:"errors,omitempty"`
	Summary
	PerS float64 `json:"perS"`
}

// ServerResult is the server process's resource use in the measured phase.
type ServerResult struct {
	PID        int     `json:"pid,omitempty"`
	CPUSeconds float64 `json:"cpuSeconds"`
	// CPUPerSample is CPU seconds per acknowledged sample (ingest).
	CPUPerSample float64 `json:"cpuSecondsPerSample,omitempty"`
	RSS          int64   `json:"rssBytes,omitempty"`
}

func newResult(o Options) *Result {
	r := &Result{
		Scenario:       o.Scenario,
		Target:         o.Target,
		MetricsTargets: o.MetricsTargets,
		Embedded:       o.Embedded,
		StartedAt:      time.Now().UTC().Truncate(time.Second),
		Host:           Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH},
		Config: Config{
			Workers:  o.Workers,
			Batch:    o.Batch,
			Machines: o.Machines,
			Metrics:  o.Metrics,
		},
	}
	switch o.Scenario {
	case "latency", "fanout", "dashboard":
		r.Config.Rate = o.Rate
		r.Config.FleetClients = o.FleetClients
		if o.FleetClients > 0 {
			r.Config.ConflateMs = float64(o.Conflate) / float64(time.Millisecond)
		}
		r.Config.LingerMs = float64(o.Linger) / float64(time.Millisecond)
		r.Config.Clients = o.Clients
		r.Config.MachinesPerClient = o.MachinesPerClient
		r.Config.AllClients = o.AllClients
		r.Config.Transport = o.Transport
		r.Config.WarmupSeconds = o.Warmup.Seconds()
	case "query":
		r.Config.HistoryMachines = o.HistoryMachines
		r.Config.HistorySeconds = o.History.Seconds()
	}
	if len(o.IngestTargets) > 1 {
		r.IngestTargets = o.IngestTargets
	}
	if len(o.StreamTargets) > 1 || (len(o.StreamTargets) == 1 && o.StreamTargets[0] != o.Target) {
		r.StreamTargets = o.StreamTargets
	}
	if o.Embedded {
		r.Notes = append(r.Notes, "embedded server: its CPU and memory figures include the load generator in the same process")
	}
	return r
}

// WriteTable writes r as a human-readable table.
func WriteTable(w io.Writer, r *Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, a...)) }
	target := r.Target
	if r.Embedded {
		target += " (embedded)"
	}
	row("scenario", "%s", r.Scenario)
	row("target", "%s", target)
	if len(r.IngestTargets) > 0 {
		row("ingest targets", "%s", strings.Join(r.IngestTargets, " "))
	}
	if len(r.StreamTargets) > 0 {
		row("stream targets", "%s", strings.Join(r.StreamTargets, " "))
	}
	if len(r.MetricsTargets) > 0 {
		row("metrics targets", "%s", strings.Join(r.MetricsTargets, " "))
	}
	row("host", "%d CPUs, %s %s/%s", r.Host.CPUs, r.Host.GoVersion, r.Host.OS, r.Host.Arch)
	row("measured", "%.1f s", r.Seconds)
	c := r.Config
	cfg := fmt.Sprintf("workers=%d batch=%d machines=%d metrics=%d", c.Workers, c.Batch, c.Machines, c.Metrics)
	if c.Clients > 0 {
		cfg += fmt.Sprintf(" rate=%s clients=%d machines-per-client=%d all-clients=%d transport=%s",
			FormatCount(c.Rate), c.Clients, c.MachinesPerClient, c.AllClients, c.Transport)
	}
	if c.FleetClients > 0 {
		cfg += fmt.Sprintf(" fleet-clients=%d conflate=%s", c.FleetClients, time.Duration(c.ConflateMs*float64(time.Millisecond)))
	}
	if c.HistoryMachines > 0 {
		cfg += fmt.Sprintf(" history=%s×%d", time.Duration(c.HistorySeconds*float64(time.Second)), c.HistoryMachines)
	}
	row("config", "%s", cfg)
	if in := r.Ingest; in != nil {
		row("acknowledged", "%s events/s, %s samples/s (%s events, %s samples, %s requests)",
			FormatCount(in.EventsPerS), FormatCount(in.SamplesPerS), FormatCount(float64(in.Events)), FormatCount(float64(in.Samples)), FormatCount(float64(in.Requests)))
		if in.Duplicates > 0 {
			row("duplicates", "%d", in.Duplicates)
		}
		row("request errors", "%s", formatErrors(in.Errors))
		if in.Behind > int64(c.Batch) {
			row("sender backlog", "%s events (the server did not keep up with the rate)", FormatCount(float64(in.Behind)))
		}
		if in.Request != nil && in.Request.Count > 0 {
			row("request latency", "%s", formatSummary(*in.Request))
		}
	}
	if s := r.Stream; s != nil {
		row("clients", "%d of %d connected in %.2f s (%s/s), %d connect errors", s.Connected, s.Clients, s.ConnectS, FormatCount(s.ConnectPerS), s.ConnectErrs)
		row("delivered", "%s messages/s, %s samples/s (%s samples of %s expected), %d reconnects",
			FormatCount(s.MessagesPerS), FormatCount(s.SamplesPerS), FormatCount(float64(s.Samples)), FormatCount(float64(s.Expected)), s.Reconnects)
		if s.RSSDelta != 0 {
			row("memory", "%s per client (server RSS delta %s)", FormatBytes(s.BytesPerClient), FormatBytes(float64(s.RSSDelta)))
		}
		if s.ClientBytesPerClient != 0 {
			row("bench memory", "%s per client on the load generator's side", FormatBytes(s.ClientBytesPerClient))
		}
		if d := s.Drops; d != nil {
			server := "server's /metrics not read"
			if d.ServerRead {
				server = fmt.Sprintf("%d by the server (%s)", d.ServerTotal, formatErrors(d.Server))
			}
			row("dropped", "%s; clients saw %d reconnect messages, %d close frames 1013", server, d.ReconnectNotices, d.CloseNotices)
		}
	}
	if l := r.Latency; l != nil {
		row("sensor→client", "%s", formatSummary(*l))
	}
	writeLegs(row, r.Legs, r.Pipeline)
	if f := r.Fleet; f != nil {
		row("fleet", "%d clients, conflate %s: %s messages (%s/s)", f.Clients, formatMs(f.ConflateMs), FormatCount(float64(f.Messages)), FormatCount(f.MessagesPerS))
		row("fleet interval", "%s", formatSummary(f.Interval))
		row("fleet freshness", "%s", formatSummary(f.Freshness))
		row("fleet message", "mean %s  p50 %s  p99 %s  max %s; %.1f machines, %.1f values, %s samples per message",
			FormatBytes(f.Bytes.Mean), FormatBytes(f.Bytes.P50), FormatBytes(f.Bytes.P99), FormatBytes(f.Bytes.Max),
			f.MachinesPerMessage, f.ValuesPerMessage, FormatCount(f.SamplesPerMessage))
	}
	if tw := r.Twin; tw != nil {
		refused := ""
		if tw.PatchErrors > 0 {
			refused = " (" + formatErrors(tw.Errors) + ")"
		}
		row("twin", "%d devices: %d patches, %d refused%s, %d delivered, %d reported, %d without a round trip",
			tw.Devices, tw.Patches, tw.PatchErrors, refused, tw.Delivered, tw.Reported, tw.Lost)
		row("PATCH desired", "%s", formatSummary(*tw.Patch))
		row("desired→device", "%s", formatSummary(*tw.Desired))
		row("round trip", "%s (desired → device → reported acknowledged)", formatSummary(*tw.RoundTrip))
	}
	for _, q := range r.Queries {
		extra := ""
		if q.Points > 0 {
			extra = fmt.Sprintf(", %.0f points", q.Points)
		}
		if q.Bytes > 0 {
			extra += ", " + FormatBytes(q.Bytes)
		}
		if len(q.Errors) > 0 {
			extra += ", errors " + formatErrors(q.Errors)
		}
		row("query "+q.Name, "%s (%s/s%s)", formatSummary(q.Summary), FormatCount(q.PerS), extra)
	}
	if s := r.Server; s != nil {
		line := fmt.Sprintf("%.2f CPU s", s.CPUSeconds)
		if s.CPUPerSample > 0 {
			line += fmt.Sprintf(", %.3g µs CPU per sample", s.CPUPerSample*1e6)
		}
		if s.RSS > 0 {
			line += ", RSS " + FormatBytes(float64(s.RSS))
		}
		row("server", "%s", line)
	}
	for _, n := range r.Notes {
		row("note", "%s", n)
	}
	return tw.Flush()
}

// writeLegs writes the server's legs, one row each ("–" for a leg no
// process exposed), then the store's backlog.
func writeLegs(row func(k, format string, a ...any), legs []LegResult, p *PipelineResult) {
	for _, l := range legs {
		if !l.Present {
			row("leg "+l.Name, "–  (%s)", l.What)
			continue
		}
		if l.Count == 0 {
			row("leg "+l.Name, "no values in the phase  (%s)", l.What)
			continue
		}
		row("leg "+l.Name, "p50 %s  p99 %s  mean %s  (n=%s, %s)",
			formatMs(l.P50Ms), formatMs(l.P99Ms), formatMs(l.MeanMs), FormatCount(float64(l.Count)), l.What)
	}
	if p == nil {
		return
	}
	if p.StoringProcesses > 0 {
		procs := "1 process"
		if p.StoringProcesses > 1 {
			procs = fmt.Sprintf("%d processes", p.StoringProcesses)
		}
		row("stored", "%s samples/s over %.1f s (%s)", FormatCount(p.StoredSamplesPerS), p.Seconds, procs)
	}
	backlog := func(k, unit string, b *Backlog) {
		if b == nil {
			row(k, "–")
			return
		}
		row(k, "start %s, end %s, max %s %s (%d readings)", FormatCount(b.Start), FormatCount(b.End), FormatCount(b.Max), unit, b.Readings)
	}
	if p.Lag != nil {
		backlog("kafka lag", "records", p.Lag)
	}
	if p.Depth != nil {
		backlog("log depth", "samples", p.Depth)
	}
	if p.Lag == nil && p.Depth == nil {
		backlog("backlog", "", nil)
	}
}

func formatSummary(s Summary) string {
	if s.Count == 0 {
		return "no values"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (n=%s)",
		formatMs(s.P50Ms), formatMs(s.P90Ms), formatMs(s.P99Ms), formatMs(s.P999Ms), formatMs(s.MaxMs), FormatCount(float64(s.Count)))
}

func formatMs(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64) + " ms"
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64) + " ms"
	default:
		return strconv.FormatFloat(v, 'f', 2, 64) + " ms"
	}
}

func formatErrors(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s×%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// FormatCount formats v rounded to an integer with thin groups of three
// digits: 1234567.8 → "1 234 568".
func FormatCount(v float64) string {
	neg := v < 0
	if neg {
		v = -v
	}
	s := strconv.FormatFloat(v, 'f', 0, 64)
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// FormatBytes formats a byte count with a binary unit: 16384 → "16.0 KiB".
func FormatBytes(v float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	neg := v < 0
	if neg {
		v = -v
	}
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	sign := ""
	if neg {
		sign = "-"
	}
	if i == 0 {
		return fmt.Sprintf("%s%.0f B", sign, v)
	}
	return fmt.Sprintf("%s%.1f %s", sign, v, units[i])
}
