package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/influxdata/line-protocol/v2/lineprotocol"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fastjson"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

// TelemetryFilter is the topic filter that matches every telemetry topic.
const TelemetryFilter = "twinline/+/+/+/telemetry"

const (
	topicRoot = "twinline/"
	topicLeaf = "/telemetry"
	// topicMachineTag is the line-protocol tag the topic's machine id is
	// injected as: it comes first in the decoder's preference.
	topicMachineTag = "twinline_topic_machine"
	// maxReasonString bounds the reason string sent back in a PUBACK.
	maxReasonString = 256
	// protocol names MQTT in telemetry.Batch.Protocol.
	protocol = "mqtt"
)

var (
	// ErrBusy may be wrapped by a Submit error to say the log has no room
	// right now: the broker answers an MQTT 5 publisher 0x97 (Quota
	// exceeded) and disconnects an MQTT 3.1.1 one so that it sends again;
	// the subscriber retries. Any other Submit error is handled the same
	// way, with 0x80 (Unspecified error) instead of 0x97.
	ErrBusy = errors.New("event log busy")
	// ErrUnprocessable may be wrapped by a Submit error to say the batch
	// can never be stored (e.g. it is larger than the whole log): the
	// message is rejected and dropped like a bad payload (0x83
	// Implementation specific error) instead of being tried again.
	ErrUnprocessable = errors.New("batch cannot be stored")
)

// SubmitFunc hands a batch to the event log and returns only once the batch
// is durable (accepted and duplicates count its events), or with an error,
// in which case nothing of the batch may be considered stored. It must
// honour ctx, and should wait for room rather than fail when the log is
// full; it may wrap ErrBusy or ErrUnprocessable.
type SubmitFunc func(ctx context.Context, b *telemetry.Batch) (accepted, duplicates int, err error)

// RegisterFunc records the site and line of a machine in the registry. It is
// called after a successful submit, once per machine and whenever its site
// or line changes; it must not block for long.
type RegisterFunc func(machine, site, line string)

// Deps are what the broker and the subscriber need from the rest of the
// program.
type Deps struct {
	// Submit is required.
	Submit SubmitFunc
	// Register may be nil.
	Register RegisterFunc
	// Logger may be nil (nothing is logged).
	Logger *slog.Logger
	// Registerer may be nil (metrics are not exported).
	Registerer prometheus.Registerer
	// Clock may be nil (time.Now).
	Clock func() time.Time
	// Authenticate, for the embedded broker, verifies every connecting
	// client; nil lets every client in as auth.Anonymous, with no topic
	// ACL (a broker for loopback or a trusted network). The subscriber
	// ignores it.
	Authenticate AuthenticateFunc
	// Authorize, for the embedded broker, is asked about the machine of
	// every telemetry message before it is submitted; nil allows every
	// machine. The subscriber ignores it.
	Authorize AuthorizeFunc
	// Tracer traces the messages (an "mqtt receive" span continuing the
	// traceparent and tracestate user properties of an MQTT 5 message);
	// nil: tracing off.
	Tracer *tracing.Tracer
	// Control takes devices' reported state and command responses, and
	// hears of command deliveries (see ControlHandlers); the zero value
	// takes none.
	Control ControlHandlers
}

// IngestOptions say how a payload becomes events. The zero value is usable.
type IngestOptions struct {
	// Decode are the decoder options (limits, line-protocol machine tags,
	// AdmitMachine, the Stamper shared with the other ingest paths; nil
	// gives the source its own). Now, MinTime and MaxTime are set per
	// message.
	// AdmitMachine is asked about the topic's machine id.
	Decode ingest.Options
	// Precision of line-protocol timestamps; the zero value is nanoseconds.
	Precision lineprotocol.Precision
	// Retention and MaxFuture bound the accepted event time as the HTTP
	// API does (ingest.TimeBounds): any age within the retention, an old
	// event as backfill (ADR 0033); 0 leaves that side unbounded.
	Retention, MaxFuture time.Duration
	// SubmitTimeout bounds one Submit call; 0 means 10 s.
	SubmitTimeout time.Duration
	// RegistryCache is how many machines' site and line are remembered so
	// that Register is called only on a change; 0 means 100 000.
	RegistryCache int
}

func (o IngestOptions) withDefaults() IngestOptions {
	if o.SubmitTimeout <= 0 {
		o.SubmitTimeout = 10 * time.Second
	}
	if o.RegistryCache <= 0 {
		o.RegistryCache = 100_000
	}
	if o.Decode.Limits.MaxMachineIDLen <= 0 {
		o.Decode.Limits.MaxMachineIDLen = telemetry.DefaultLimits().MaxMachineIDLen
	}
	return o
}

// Topic is a parsed telemetry topic.
type Topic struct {
	Site, Line, Machine string
}

// isTelemetryTopic reports whether name is meant as a telemetry topic (it
// may still be malformed): twinline/…/telemetry.
func isTelemetryTopic(name string) bool {
	return strings.HasPrefix(name, topicRoot) && strings.HasSuffix(name, topicLeaf)
}

// ParseTopic parses twinline/{site}/{line}/{machineId}/telemetry. Site, line
// and machine id follow the machine id rules of package ingest, with maxLen
// bytes at most.
func ParseTopic(name string, maxLen int) (Topic, error) {
	if !isTelemetryTopic(name) {
		return Topic{}, fmt.Errorf("topic %q is not twinline/{site}/{line}/{machineId}/telemetry", name)
	}
	parts := strings.Split(name, "/")
	if len(parts) != 5 {
		return Topic{}, fmt.Errorf("topic %q has %d levels, want 5: twinline/{site}/{line}/{machineId}/telemetry", name, len(parts))
	}
	t := Topic{Site: parts[1], Line: parts[2], Machine: parts[3]}
	for _, f := range [...]struct{ name, v string }{{"site", t.Site}, {"line", t.Line}, {"machine id", t.Machine}} {
		if p := ingest.MachineIDProblem(f.v, maxLen); p != "" {
			return Topic{}, fmt.Errorf("topic %q: %s %s", name, f.name, p)
		}
	}
	return t, nil
}

// TelemetryTopic returns the telemetry topic of a machine.
func TelemetryTopic(site, line, machine string) string {
	return topicRoot + site + "/" + line + "/" + machine + topicLeaf
}

// Reject reasons, the reason label of twinline_mqtt_messages_rejected_total.
const (
	reasonTopic         = "topic"          // malformed telemetry topic
	reasonPayload       = "payload"        // no event could be decoded
	reasonMachine       = "machine"        // AdmitMachine refused the machine
	reasonNotAuthorized = "not_authorized" // Authorize refused the machine
	reasonUnprocessable = "unprocessable"  // Submit: ErrUnprocessable
	reasonBusy          = "busy"           // Submit: ErrBusy or timeout
	reasonError         = "error"          // Submit: any other error
	reasonShutdown      = "shutdown"       // Submit cancelled by shutdown
)

var allReasons = []string{reasonTopic, reasonPayload, reasonMachine, reasonNotAuthorized, reasonUnprocessable, reasonBusy, reasonError, reasonShutdown}

// MQTT 5 reason codes used in acknowledgements.
const (
	codeUnspecified   byte = 0x80
	codeImplSpecific  byte = 0x83
	codeNotAuthorized byte = 0x87
	codeTopicInvalid  byte = 0x90
	codeQuotaExceeded byte = 0x97
	codePayloadFormat byte = 0x99
)

// outcome is what became of one message.
type outcome struct {
	reason string // "" when accepted
	code   byte   // MQTT 5 reason code when rejected
	detail string // what was wrong, for logs and the PUBACK reason string

	accepted, duplicates, rejectedItems int
}

// retry reports whether the message may succeed if sent again.
func (o outcome) retry() bool {
	switch o.reason {
	case reasonBusy, reasonError, reasonShutdown:
		return true
	}
	return false
}

// prepared is a decoded message ready to submit.
type prepared struct {
	topicName string
	topic     Topic
	batch     *telemetry.Batch
	rejects   []ingest.Reject
}

// handler turns messages into submitted batches; the broker and the
// subscriber each have one.
type handler struct {
	opts     IngestOptions
	submit   SubmitFunc
	register RegisterFunc
	clock    func() time.Time
	logger   *slog.Logger
	tracer   *tracing.Tracer
	m        *metrics
	limiter  *logLimiter
	sites    *lru.Cache[string, string] // machine → site "\x00" line registered
}

func newHandler(opts IngestOptions, deps Deps, source string) (*handler, error) {
	if deps.Submit == nil {
		return nil, errors.New("mqtt: Deps.Submit is required")
	}
	opts = opts.withDefaults()
	if opts.Decode.Stamper == nil {
		opts.Decode.Stamper = ingest.NewStamper()
	}
	h := &handler{opts: opts, submit: deps.Submit, register: deps.Register, clock: deps.Clock, logger: deps.Logger, tracer: deps.Tracer}
	if h.clock == nil {
		h.clock = time.Now
	}
	if h.logger == nil {
		h.logger = slog.New(slog.DiscardHandler)
	}
	h.logger = h.logger.With("source", source)
	h.limiter = newLogLimiter(h.clock, 10)
	var err error
	if h.sites, err = lru.New[string, string](opts.RegistryCache); err != nil {
		return nil, fmt.Errorf("creating registry cache: %w", err)
	}
	if h.m, err = newMetrics(deps.Registerer, source); err != nil {
		return nil, err
	}
	return h, nil
}

// prepare parses the topic, asks authorize (when not nil) about it and
// decodes the payload. It returns a rejected outcome when nothing can be
// submitted.
func (h *handler) prepare(topicName string, payload []byte, authorize func(Topic) error) (*prepared, outcome) {
	h.m.received.Inc()
	t, err := ParseTopic(topicName, h.opts.Decode.Limits.MaxMachineIDLen)
	if err != nil {
		return nil, outcome{reason: reasonTopic, code: codeTopicInvalid, detail: err.Error()}
	}
	if authorize != nil {
		if err := authorize(t); err != nil {
			return nil, outcome{reason: reasonNotAuthorized, code: codeNotAuthorized, detail: "machine " + t.Machine + ": " + err.Error()}
		}
	}
	if admit := h.opts.Decode.AdmitMachine; admit != nil {
		if p := admit(t.Machine); p != "" {
			return nil, outcome{reason: reasonMachine, code: codeQuotaExceeded, detail: "machine " + t.Machine + ": " + p}
		}
	}
	now := h.clock()
	opts := h.opts.Decode
	opts.AdmitMachine = nil // asked above, about the topic's machine
	opts.Now = now.UnixMilli()
	opts.MinTime, opts.MaxTime = ingest.TimeBounds(now, h.opts.Retention, h.opts.MaxFuture)
	events, rejects, err := decode(payload, t.Machine, h.opts.Precision, opts)
	if err != nil {
		return nil, outcome{reason: reasonPayload, code: codePayloadFormat, detail: err.Error(), rejectedItems: 1}
	}
	if len(events) == 0 {
		detail := "the payload holds no event"
		if len(rejects) > 0 {
			detail = describeRejects(rejects)
		}
		return nil, outcome{reason: reasonPayload, code: codePayloadFormat, detail: detail, rejectedItems: max(len(rejects), 1)}
	}
	for i := range events {
		events[i].Machine = t.Machine // the topic wins
	}
	return &prepared{
		topicName: topicName,
		topic:     t,
		batch:     &telemetry.Batch{Events: events, Protocol: protocol, Received: now.UnixMilli()},
		rejects:   rejects,
	}, outcome{}
}

// submitOnce submits p once, bounded by the submit timeout.
func (h *handler) submitOnce(ctx context.Context, p *prepared) outcome {
	sctx, cancel := context.WithTimeout(ctx, h.opts.SubmitTimeout)
	defer cancel()
	start := time.Now()
	acc, dup, err := h.submit(sctx, p.batch)
	h.m.submit.Observe(time.Since(start).Seconds())
	out := outcome{accepted: acc, duplicates: dup, rejectedItems: len(p.rejects)}
	switch {
	case err == nil:
		return out
	case errors.Is(err, ErrUnprocessable):
		out.reason, out.code = reasonUnprocessable, codeImplSpecific
	case ctx.Err() != nil:
		out.reason, out.code = reasonShutdown, codeUnspecified
	case errors.Is(err, ErrBusy) || errors.Is(err, context.DeadlineExceeded):
		out.reason, out.code = reasonBusy, codeQuotaExceeded
	default:
		out.reason, out.code = reasonError, codeUnspecified
	}
	out.detail = "submitting: " + err.Error()
	return out
}

// topicTemplate is the telemetry topic with its variable levels named:
// the span attribute messaging.destination.template.
const topicTemplate = "twinline/{site}/{line}/{machineId}/telemetry"

// startReceive starts the "mqtt receive" span of messages from client on
// topic (the first one's, for several), a child of parent (the trace
// context a message carried, valid or not) and linked to links (the other
// messages' sampled ones); a no-op span when it could not be sampled.
func (h *handler) startReceive(ctx context.Context, topic, client string, parent trace.SpanContext, links []trace.Link, messages, size int) (context.Context, trace.Span) {
	if h.tracer == nil {
		return ctx, trace.SpanFromContext(context.Background())
	}
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	ctx, span := h.tracer.Start(ctx, "mqtt receive", trace.SpanKindConsumer, links...)
	if span.IsRecording() {
		span.SetAttributes(
			semconv.MessagingSystemKey.String("mqtt"),
			semconv.MessagingOperationTypeReceive,
			semconv.MessagingOperationName("receive"),
			semconv.MessagingDestinationName(topic),
			semconv.MessagingDestinationTemplate(topicTemplate),
			semconv.MessagingClientID(client),
		)
		if size > 0 {
			span.SetAttributes(semconv.MessagingMessageBodySize(size))
		}
		if messages > 1 {
			span.SetAttributes(semconv.MessagingBatchMessageCount(messages))
		}
	}
	return ctx, span
}

// endReceive ends a receive span with the messages' outcome.
func endReceive(span trace.Span, out outcome) {
	span.SetAttributes(attribute.Int("twinline.events", out.accepted+out.duplicates), attribute.Int("twinline.rejected", out.rejectedItems))
	if out.reason != "" {
		span.SetAttributes(attribute.String("error.type", out.reason))
		span.SetStatus(codes.Error, out.detail)
	}
	span.End()
}

// finish counts and logs the final outcome of a message and registers the
// machine's site and line once its events are durable.
func (h *handler) finish(ctx context.Context, topicName, client string, p *prepared, out outcome) {
	if out.reason != "" {
		h.m.rejected.WithLabelValues(out.reason).Inc()
		h.m.events.WithLabelValues("rejected").Add(float64(out.rejectedItems))
		if out.retry() {
			h.m.events.WithLabelValues("rejected").Add(float64(len(p.batch.Events)))
		}
		h.logReject(ctx, topicName, client, out)
		return
	}
	h.m.accepted.Inc()
	h.m.events.WithLabelValues("accepted").Add(float64(out.accepted))
	h.m.events.WithLabelValues("duplicate").Add(float64(out.duplicates))
	h.m.events.WithLabelValues("rejected").Add(float64(len(p.rejects)))
	if len(p.rejects) > 0 {
		h.logReject(ctx, topicName, client, outcome{reason: "partial", detail: describeRejects(p.rejects)})
	}
	if h.register != nil {
		key := p.topic.Site + "\x00" + p.topic.Line
		if old, ok := h.sites.Get(p.topic.Machine); !ok || old != key {
			h.register(p.topic.Machine, p.topic.Site, p.topic.Line)
			h.sites.Add(p.topic.Machine, key)
		}
	}
}

// finishBatch is finish for messages whose events were submitted together
// with one outcome.
func (h *handler) finishBatch(ctx context.Context, client string, ps []*prepared, out outcome) {
	for i, p := range ps {
		o := out
		o.rejectedItems = len(p.rejects)
		if i > 0 {
			o.accepted, o.duplicates = 0, 0
		}
		h.finish(ctx, p.topicName, client, p, o)
	}
}

// logReject logs a rejected message, at most a few per second.
func (h *handler) logReject(ctx context.Context, topic, client string, out outcome) {
	ok, suppressed := h.limiter.allow()
	if !ok {
		return
	}
	attrs := []any{"topic", topic, "client", client, "reason", out.reason, "detail", out.detail}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	msg := "rejecting mqtt message"
	if out.reason == "partial" {
		msg = "rejecting items of mqtt message"
	}
	h.logger.WarnContext(ctx, msg, attrs...)
}

// describeRejects summarises rejects for a log line or a reason string.
func describeRejects(rejects []ingest.Reject) string {
	s := rejects[0].String()
	if len(rejects) > 1 {
		s += fmt.Sprintf(" (and %d more)", len(rejects)-1)
	}
	return s
}

// truncate cuts s to at most n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

var (
	parserPool fastjson.ParserPool
	arenaPool  fastjson.ArenaPool
	bufPool    = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	utf8BOM    = []byte("\xef\xbb\xbf")
)

// decode decodes a JSON or line-protocol payload, with machine as the
// machine id of every event.
func decode(payload []byte, machine string, prec lineprotocol.Precision, opts ingest.Options) ([]telemetry.Event, []ingest.Reject, error) {
	body := bytes.TrimLeft(bytes.TrimPrefix(payload, utf8BOM), " \t\r\n")
	if len(body) == 0 {
		return nil, nil, errors.New("empty payload")
	}
	buf := bufPool.Get().(*bytes.Buffer)
	defer bufPool.Put(buf)
	buf.Reset()
	if body[0] == '{' || body[0] == '[' {
		withMachineJSON(buf, body, machine)
		return ingest.DecodeJSON(buf.Bytes(), opts, nil)
	}
	withMachineLP(buf, body)
	opts.MachineTags = []string{topicMachineTag}
	return ingest.DecodeLineProtocol(buf.Bytes(), prec, opts, nil)
}

// withMachineJSON writes body to buf with machineId set to machine in every
// object (top level, or items of a top-level array). A body that does not
// parse is copied as is, for the decoder to report.
func withMachineJSON(buf *bytes.Buffer, body []byte, machine string) {
	p := parserPool.Get()
	defer parserPool.Put(p)
	v, err := p.ParseBytes(body)
	if err != nil {
		buf.Write(body)
		return
	}
	a := arenaPool.Get()
	defer arenaPool.Put(a)
	a.Reset()
	id := a.NewString(machine)
	switch v.Type() {
	case fastjson.TypeObject:
		v.Set("machineId", id)
	case fastjson.TypeArray:
		for _, it := range v.GetArray() {
			if it.Type() == fastjson.TypeObject {
				it.Set("machineId", id)
			}
		}
	}
	buf.Write(v.MarshalTo(buf.AvailableBuffer()))
}

// withMachineLP writes line protocol to buf with a placeholder machine tag
// (topicMachineTag) after the measurement of every line, so that lines
// without a machine tag of their own are accepted; the caller sets the
// real machine id on the decoded events. Blank and comment lines are
// copied as they are; line numbers are kept.
func withMachineLP(buf *bytes.Buffer, body []byte) {
	for len(body) > 0 {
		var ln []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			ln, body = body[:i+1], body[i+1:]
		} else {
			ln, body = body, nil
		}
		j := 0
		for j < len(ln) && (ln[j] == ' ' || ln[j] == '\t') {
			j++
		}
		if j == len(ln) || ln[j] == '#' || ln[j] == '\n' || ln[j] == '\r' {
			buf.Write(ln)
			continue
		}
		// The measurement ends at the first unescaped comma or space.
		for j < len(ln) && ln[j] != ',' && ln[j] != ' ' && ln[j] != '\n' && ln[j] != '\r' {
			if ln[j] == '\\' && j+1 < len(ln) {
				j++
			}
			j++
		}
		j = min(j, len(ln))
		buf.Write(ln[:j])
		buf.WriteString("," + topicMachineTag + "=m")
		buf.Write(ln[j:])
	}
}

// logLimiter lets at most n log lines through per second and counts the
// rest.
type logLimiter struct {
	clock      func() time.Time
	n          int
	mu         sync.Mutex
	second     int64
	used       int
	suppressed int
}

func newLogLimiter(clock func() time.Time, n int) *logLimiter {
	return &logLimiter{clock: clock, n: n}
}

// allow reports whether a line may be logged now and how many were
// suppressed before it.
func (l *logLimiter) allow() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.clock().Unix(); s != l.second {
		l.second, l.used = s, 0
	}
	if l.used >= l.n {
		l.suppressed++
		return false, 0
	}
	l.used++
	s := l.suppressed
	l.suppressed = 0
	return true, s
}
