package api

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

// errTooLarge marks a body over one of the size limits.
var errTooLarge = errors.New("body too large")

// decodeFunc is one ingest decoder bound to its request parameters.
type decodeFunc func(body []byte, opts ingest.Options, dst []telemetry.Event) ([]telemetry.Event, []ingest.Reject, error)

// ingestStyle says how an ingest endpoint answers and names items: the
// twinline JSON API (array index, or NDJSON line number) or the InfluxDB
// write API (line number).
type ingestStyle int

const (
	styleJSON ingestStyle = iota
	styleNDJSON
	styleInflux
)

// handleEvents is POST /api/v1/events.
func (a *API) handleEvents(w http.ResponseWriter, r *http.Request) {
	decode, style := ingest.DecodeJSON, styleJSON
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/x-ndjson", "application/ndjson", "application/jsonl", "application/jsonlines":
		decode, style = ingest.DecodeNDJSON, styleNDJSON
	case "", "application/json":
	default:
		a.countRequest("json", "unsupported")
		problem.Write(w, &problem.Problem{Type: problem.TypeUnsupported, Status: http.StatusUnsupportedMediaType,
			Detail: fmt.Sprintf("Content-Type %q is not supported; send application/json or application/x-ndjson", mt)})
		return
	}
	a.ingest(w, r, "json", style, decode)
}

// lineProtocolType reports whether a write's Content-Type is one line
// protocol clients send (text/plain, as Telegraf and the InfluxDB client
// libraries do, octet-stream, or none) — not a form a foreign web page
// could post.
func lineProtocolType(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "text/plain" || mt == "application/octet-stream" || mt == "application/vnd.influx")
}

// handleWrite is the InfluxDB line protocol write API, v1 (/write) and v2
// (/api/v2/write).
func (a *API) handleWrite(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Influxdb-Version", influxVersion)
	w.Header().Set("X-Influxdb-Build", "OSS")
	if !lineProtocolType(r.Header.Get("Content-Type")) {
		a.countRequest("lineprotocol", "unsupported")
		p := &problem.Problem{Type: problem.TypeUnsupported, Status: http.StatusUnsupportedMediaType,
			Detail: fmt.Sprintf("Content-Type %q is not line protocol: send text/plain", r.Header.Get("Content-Type"))}
		influxCompat(p)
		problem.Write(w, p)
		return
	}
	q := r.URL.Query()
	prec, err := ingest.ParsePrecision(q.Get("precision"))
	if err != nil {
		a.countRequest("lineprotocol", "invalid")
		p := &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusBadRequest,
			Detail:        err.Error(),
			InvalidParams: []problem.InvalidParam{{Name: "precision", Reason: err.Error()}}}
		influxCompat(p)
		problem.Write(w, p)
		return
	}
	a.ingest(w, r, "lineprotocol", styleInflux, func(body []byte, opts ingest.Options, dst []telemetry.Event) ([]telemetry.Event, []ingest.Reject, error) {
		events, rejects, st, err := ingest.DecodeLineProtocolStats(body, prec, opts, dst)
		a.lineStats(r, st)
		return events, rejects, err
	})
}

// ingest reads, decodes and logs one request body, then answers once the
// accepted events are durable.
//
// The body is read first, into memory taken from the ingest budget as it
// arrives (a slow or stalled sender holds no in-flight slot, and is cut
// after --read-idle-timeout); then the request takes an in-flight slot, one
// of its client's, and its decoding reserve. A large body is decoded and
// logged in chunks, and answered once every chunk is durable.
func (a *API) ingest(w http.ResponseWriter, r *http.Request, protocol string, style ingestStyle, decode decodeFunc) {
	ctx, span := a.startIngest(r, protocol)
	status := 0 // the answer's, for the span
	if span.IsRecording() {
		defer func() { endIngest(span, status) }()
	}
	fail := func(outcome string, p *problem.Problem) {
		status = p.Status
		a.countRequest(protocol, outcome)
		if style == styleInflux {
			influxCompat(p)
		}
		problem.Write(w, p)
	}
	shed := func(detail string) {
		fail("shed", &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 1, Detail: detail})
	}

	body, err := a.readBody(w, r)
	defer body.release()
	if err != nil {
		var p *problem.Problem
		switch {
		case errors.Is(err, errBudget):
			shed("the server is decoding as much as its memory allows (--ingest-memory); retry later")
			return
		case errors.Is(err, errTooLarge), errors.Is(err, errOverBudget):
			p = &problem.Problem{Type: problem.TypeBodyTooLarge, Status: http.StatusRequestEntityTooLarge, Detail: err.Error()}
		case errors.Is(err, errUnsupportedEncoding):
			p = &problem.Problem{Type: problem.TypeUnsupported, Status: http.StatusUnsupportedMediaType, Detail: err.Error()}
		case errors.Is(err, errIdle), errors.Is(err, errSlow):
			w.Header().Set("Connection", "close")
			p = &problem.Problem{Type: typeRequestTimeout, Status: http.StatusRequestTimeout,
				Detail: "reading the body: " + err.Error() + " (--read-idle-timeout, --read-timeout); nothing was stored"}
			fail("timeout", p)
			return
		default:
			p = &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: err.Error()}
		}
		fail("invalid", p)
		return
	}

	select {
	case a.inflight <- struct{}{}:
		defer func() { <-a.inflight }()
	default:
		shed("too many ingest requests in flight; retry later")
		return
	}
	client := ClientKey(r)
	if !a.clientSlots.acquire(client) {
		// "limited", not "shed": the client went over its own share, the
		// server is not short of room (the availability SLI leaves it out).
		fail("limited", &problem.Problem{Type: problem.TypeRateLimited, Status: http.StatusTooManyRequests, RetryAfter: 1,
			Detail: fmt.Sprintf("this client has %d ingest requests in flight (--max-inflight-ingest-per-client); retry later", a.clientSlots.max)})
		return
	}
	defer a.clientSlots.release(client)
	reserve := decodeReserve(len(body.buf))
	if err := a.mem.acquire(r.Context(), reserve); err != nil {
		if errors.Is(err, errOverBudget) {
			fail("invalid", &problem.Problem{Type: problem.TypeBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
				Detail: "decoding this body needs more than the whole --ingest-memory; split the request"})
			return
		}
		shed("the server is decoding as much as its memory allows (--ingest-memory); retry later")
		return
	}
	defer a.mem.release(reserve)

	now := a.now()
	opts := a.decodeOpts
	opts.Now = now.UnixMilli()
	opts.MinTime, opts.MaxTime = ingest.TimeBounds(now, a.opts.Retention, a.opts.MaxFuture)
	if id := identity(r); id.Restricted() || id.Machine != "" {
		base := opts.AdmitMachine
		opts.AdmitMachine = func(m string) string {
			if reason := a.registry.AdmitFor(id, m); reason != "" {
				return reason
			}
			if base != nil {
				return base(m)
			}
			return ""
		}
	}
	sub := &chunkSubmitter{ctx: auth.NewContext(ctx, identity(r)), submit: a.submit, protocol: protocol, received: now.UnixMilli(),
		trace: tracing.Sampled(span), window: make(chan struct{}, chunkWindow)}
	var sink *ingest.Sink
	if len(body.buf) > streamMinBody {
		sink = &ingest.Sink{Flush: sub.flush, MaxRejects: maxListedRejects}
		opts.Sink = sink
	}
	_, decodeSpan := a.tracer.Child(ctx, "decode", trace.SpanKindInternal)
	events, rejects, err := decode(body.buf, opts, nil)
	nrejects := len(rejects)
	if sink != nil {
		nrejects = sink.Rejected
	}
	if decodeSpan.IsRecording() {
		nevents := len(events)
		if sink != nil {
			nevents += sink.Flushed
		}
		endDecode(decodeSpan, len(body.buf), nevents, nrejects, err)
	}
	var se *ingest.SyntaxError
	if err != nil && (errors.As(err, &se) || sink == nil) {
		sub.wait()
		fail("invalid", &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: err.Error()})
		return
	}
	if err == nil && len(events) > 0 {
		sub.flush(events)
	}
	body.release() // the events no longer refer to it
	res, samples, err := sub.wait()
	if sink == nil && len(events) == 0 && nrejects == 0 && style != styleInflux {
		fail("invalid", &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: "the body holds no event"})
		return
	}
	if sink != nil && sink.Flushed == 0 && nrejects == 0 && style != styleInflux {
		fail("invalid", &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: "the body holds no event"})
		return
	}
	if err != nil {
		a.submitFailed(fail, shed, err, protocol, res, sub)
		return
	}
	a.samples.WithLabelValues(protocol, "accepted").Add(float64(samples))

	if nrejects > 0 {
		a.samples.WithLabelValues(protocol, "rejected").Add(float64(nrejects))
		fail("partial", partialProblem(rejects, nrejects, res, style))
		return
	}
	a.countRequest(protocol, "ok")
	if style == styleInflux {
		status = http.StatusNoContent
		w.WriteHeader(status)
		return
	}
	status = http.StatusAccepted
	writeJSON(w, status, struct {
		Accepted   int `json:"accepted"`
		Duplicates int `json:"duplicates"`
	}{res.Accepted, res.Duplicates})
}

// startIngest starts the ingest request's server span, continuing the
// request's traceparent; a no-op span when the request is not traced.
func (a *API) startIngest(r *http.Request, protocol string) (context.Context, trace.Span) {
	ctx, span := a.tracer.Start(a.tracer.ExtractHTTP(r.Context(), r.Header), "ingest", trace.SpanKindServer)
	if span.IsRecording() {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		span.SetAttributes(
			semconv.HTTPRequestMethodKey.String(r.Method),
			semconv.HTTPRoute(r.URL.Path), // the ingest routes have no parameters
			semconv.URLPath(r.URL.Path),
			semconv.URLScheme(scheme),
			semconv.NetworkProtocolVersion(fmt.Sprintf("%d.%d", r.ProtoMajor, r.ProtoMinor)),
			semconv.UserAgentOriginal(r.UserAgent()),
			attribute.String("twinline.protocol", protocol),
		)
	}
	return ctx, span
}

// endIngest ends the ingest span with the answer's status: a 5xx is an
// error of the server's (a 4xx is the client's, not the span's).
func endIngest(span trace.Span, status int) {
	if status != 0 {
		span.SetAttributes(semconv.HTTPResponseStatusCode(status))
	}
	if status >= 500 {
		span.SetAttributes(attribute.String("error.type", strconv.Itoa(status)))
		span.SetStatus(codes.Error, http.StatusText(status))
	}
	span.End()
}

// endDecode ends the decode span: the body's size, the events decoded
// (validated: the decoders validate as they decode) and the items
// rejected.
func endDecode(span trace.Span, bodyBytes, events, rejected int, err error) {
	span.SetAttributes(semconv.HTTPRequestBodySize(bodyBytes),
		attribute.Int("twinline.events", events), attribute.Int("twinline.rejected", rejected))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// submitFailed answers a request whose events the log did not all take.
func (a *API) submitFailed(fail func(string, *problem.Problem), shed func(string), err error, protocol string, res eventlog.Result, sub *chunkSubmitter) {
	a.samples.WithLabelValues(protocol, "shed").Add(float64(sub.failedSamples))
	stored := ""
	if res.Accepted+res.Duplicates > 0 {
		stored = fmt.Sprintf("; %d events of this request were stored before (retrying them is safe for events with an id or seq)", res.Accepted)
	}
	switch {
	case errors.Is(err, eventlog.ErrFull):
		if stored == "" {
			shed("the event log is full; nothing from this request was stored; retry later")
			return
		}
		shed("the event log is full: the rest of the request was not stored" + stored)
	case errors.Is(err, eventlog.ErrTooLarge):
		fail("invalid", &problem.Problem{Type: problem.TypeBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
			Detail: err.Error() + "; split the request" + stored})
	case errors.Is(err, eventlog.ErrClosed):
		if stored == "" {
			shed("the server is shutting down; nothing from this request was stored; retry")
			return
		}
		shed("the server is shutting down: the rest of the request was not stored" + stored)
	case errors.Is(err, store.ErrOutOfBounds):
		// Rare: the store's window moved between validation and
		// storage (a clock jump). Retrying would not help.
		fail("invalid", &problem.Problem{Type: problem.TypeInvalidItems, Status: http.StatusBadRequest,
			Detail: "some samples fall outside the store's accepted time window (--retention, --max-future) and were not stored; the others were"})
	default:
		// The processor logged the cause; clients get no internals.
		detail := "storing the events did not complete; nothing is acknowledged; retry"
		if stored != "" {
			detail = "storing the events did not complete; the rest of the request is not acknowledged" + stored
		}
		fail("error", &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1, Detail: detail})
	}
}

// chunkSubmitter logs the chunks of one request, chunkWindow at a time
// (the decoder fills the next one meanwhile), and sums their results.
// After a failure it takes no more chunks.
type chunkSubmitter struct {
	ctx      context.Context
	submit   SubmitFunc
	protocol string
	received int64
	// trace is the request's span context when it is sampled: its chunks
	// carry it on (telemetry.Batch.Trace).
	trace  trace.SpanContext
	window chan struct{}
	wg     sync.WaitGroup

	mu            sync.Mutex
	res           eventlog.Result
	samples       int // samples stored
	failedSamples int // samples not stored
	chunks        int
	err           error
}

// flush is the ingest.Sink's Flush.
func (s *chunkSubmitter) flush(events []telemetry.Event) error {
	s.window <- struct{}{}
	s.mu.Lock()
	err, first := s.err, s.chunks == 0
	s.chunks++
	s.mu.Unlock()
	if err != nil {
		<-s.window
		return err
	}
	b := &telemetry.Batch{Events: events, Protocol: s.protocol, Received: s.received, Trace: s.trace}
	s.wg.Go(func() {
		defer func() { <-s.window }()
		res, err := s.submitChunk(b, first)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.failedSamples += b.NumSamples()
			if s.err == nil {
				s.err = err
			}
			return
		}
		s.res.Accepted += res.Accepted
		s.res.Duplicates += res.Duplicates
		s.samples += b.NumSamples()
	})
	return nil
}

// submitChunk logs one chunk. Past the first chunk of a request, a full
// log is waited for (up to chunkRetry), rather than failing a request
// that is partly stored.
func (s *chunkSubmitter) submitChunk(b *telemetry.Batch, first bool) (eventlog.Result, error) {
	const chunkRetry = 5 * time.Second
	var deadline <-chan time.Time
	delay := 5 * time.Millisecond
	for {
		res, err := s.submit(s.ctx, b)
		if first || !errors.Is(err, eventlog.ErrFull) {
			return res, err
		}
		if deadline == nil {
			t := time.NewTimer(chunkRetry)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-time.After(delay):
			delay = min(2*delay, 100*time.Millisecond)
		case <-deadline:
			return res, err
		case <-s.ctx.Done():
			return res, err
		}
	}
}

// wait waits for the chunks logged and returns their sum.
func (s *chunkSubmitter) wait() (eventlog.Result, int, error) {
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res, s.samples, s.err
}

// maxListedRejects bounds the items a problem lists; the detail gives the
// total, so a body of a million bad lines gets a bounded answer.
const maxListedRejects = 1000

func partialProblem(rejects []ingest.Reject, total int, res eventlog.Result, style ingestStyle) *problem.Problem {
	p := &problem.Problem{
		Type: problem.TypeInvalidItems, Title: "Some items were rejected", Status: http.StatusBadRequest,
		Accepted: &res.Accepted, Duplicates: &res.Duplicates,
		Errors: make([]problem.ItemError, min(len(rejects), maxListedRejects)),
	}
	unit := "item"
	for i, rj := range rejects[:len(p.Errors)] {
		idx := rj.Index
		p.Errors[i] = problem.ItemError{Field: rj.Field, Reason: rj.Reason}
		if style != styleJSON {
			p.Errors[i].Line = &idx
			unit = "line"
		} else {
			p.Errors[i].Index = &idx
		}
	}
	first := rejects[0]
	where := fmt.Sprintf("%s %d", unit, first.Index)
	if first.Field != "" {
		where += " field " + first.Field
	}
	p.Detail = fmt.Sprintf("%d %s(s) rejected, %d accepted; first: %s: %s", total, unit, res.Accepted, where, first.Reason)
	if total > maxListedRejects {
		p.Detail += fmt.Sprintf("; errors lists the first %d", maxListedRejects)
	}
	if style == styleInflux {
		// InfluxDB's partial-write wording, which Telegraf recognises.
		p.Detail = fmt.Sprintf("partial write: %s dropped=%d", p.Detail, total)
	}
	return p
}

// influxCompat fills the members InfluxDB clients read.
func influxCompat(p *problem.Problem) {
	p.Error = p.Detail
	p.Message = p.Detail
	switch {
	case p.Status == http.StatusRequestEntityTooLarge:
		p.Code = "request too large"
	case p.Status == http.StatusUnauthorized:
		p.Code = "unauthorized"
	case p.Status == http.StatusForbidden:
		p.Code = "forbidden"
	case p.Status >= 500:
		p.Code = "unavailable"
	default:
		p.Code = "invalid"
	}
}

var errUnsupportedEncoding = errors.New("unsupported Content-Encoding")

func tooLargeOr(err error, limit int64) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Errorf("%w: body exceeds %d bytes", errTooLarge, limit)
	}
	return err
}

// now returns the server time.
func (a *API) now() time.Time { return a.clock() }
