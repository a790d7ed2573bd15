package api

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/log"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
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

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

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
		a.ignoredStrings.Add(float64(st.IgnoredStringFields))
		return events, rejects, err
	})
}

// ingest reads, decodes and logs one request body, then answers once the
// accepted events are durable.
func (a *API) ingest(w http.ResponseWriter, r *http.Request, protocol string, style ingestStyle, decode decodeFunc) {
	fail := func(outcome string, p *problem.Problem) {
		a.countRequest(protocol, outcome)
		if style == styleInflux {
			influxCompat(p)
		}
		problem.Write(w, p)
	}
	select {
	case a.inflight <- struct{}{}:
		defer func() { <-a.inflight }()
	default:
		fail("shed", &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "too many ingest requests in flight; retry later"})
		return
	}

	// A slow sender must not hold an ingest slot for ever. The deadline
	// covers this request's body only (stream connections have none).
	if err := http.NewResponseController(w).SetReadDeadline(a.now().Add(a.opts.ReadTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		a.logger.Warn("setting read deadline", "err", err)
	}

	buf := bodyPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 4<<20 { // don't pin huge buffers
			bodyPool.Put(buf)
		}
	}()
	if err := a.readBody(w, r, buf); err != nil {
		var p *problem.Problem
		switch {
		case errors.Is(err, errTooLarge):
			p = &problem.Problem{Type: problem.TypeBodyTooLarge, Status: http.StatusRequestEntityTooLarge, Detail: err.Error()}
		case errors.Is(err, errUnsupportedEncoding):
			p = &problem.Problem{Type: problem.TypeUnsupported, Status: http.StatusUnsupportedMediaType, Detail: err.Error()}
		default:
			p = &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: err.Error()}
		}
		fail("invalid", p)
		return
	}

	now := a.now()
	opts := a.decodeOpts
	opts.Now = now.UnixMilli()
	opts.MaxTime = now.Add(a.opts.MaxFuture).UnixMilli()
	opts.MinTime = now.Add(-a.opts.OutOfOrderWindow + a.opts.MaxFuture).UnixMilli()
	if id := identity(r); id.Restricted() || id.Machine != "" {
		base := opts.AdmitMachine
		opts.AdmitMachine = func(m string) string {
			if reason := a.twins.AdmitFor(id, m); reason != "" {
				return reason
			}
			if base != nil {
				return base(m)
			}
			return ""
		}
	}
	events, rejects, err := decode(buf.Bytes(), opts, nil)
	if err != nil {
		fail("invalid", &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: err.Error()})
		return
	}
	if len(events) == 0 && len(rejects) == 0 && style != styleInflux {
		fail("invalid", &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: "the body holds no event"})
		return
	}

	var res log.Result
	if len(events) > 0 {
		b := &telemetry.Batch{Events: events, Protocol: protocol, Received: now.UnixMilli()}
		res, err = a.submit(auth.NewContext(r.Context(), identity(r)), b)
		switch {
		case errors.Is(err, log.ErrFull):
			a.samples.WithLabelValues(protocol, "shed").Add(float64(b.NumSamples()))
			fail("shed", &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 1,
				Detail: "the event log is full; nothing from this request was stored; retry later"})
			return
		case errors.Is(err, log.ErrTooLarge):
			fail("invalid", &problem.Problem{Type: problem.TypeBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
				Detail: err.Error() + "; split the request"})
			return
		case errors.Is(err, log.ErrClosed):
			fail("shed", &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 1,
				Detail: "the server is shutting down; nothing from this request was stored; retry"})
			return
		case errors.Is(err, store.ErrOutOfBounds):
			// Rare: the store's window moved between validation and
			// storage (a clock jump). Retrying would not help.
			fail("invalid", &problem.Problem{Type: problem.TypeInvalidItems, Status: http.StatusBadRequest,
				Detail: "some samples fall outside the store's accepted time window (--out-of-order-window, --max-future) and were not stored; the others were"})
			return
		case err != nil:
			// The processor logged the cause; clients get no internals.
			fail("error", &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
				Detail: "storing the events did not complete; nothing is acknowledged; retry"})
			return
		}
		a.samples.WithLabelValues(protocol, "accepted").Add(float64(b.NumSamples()))
	}

	if len(rejects) > 0 {
		a.samples.WithLabelValues(protocol, "rejected").Add(float64(len(rejects)))
		fail("partial", partialProblem(rejects, res, style))
		return
	}
	a.countRequest(protocol, "ok")
	if style == styleInflux {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusAccepted, struct {
		Accepted   int `json:"accepted"`
		Duplicates int `json:"duplicates"`
	}{res.Accepted, res.Duplicates})
}

// maxListedRejects bounds the items a problem lists; the detail gives the
// total, so a body of a million bad lines gets a bounded answer.
const maxListedRejects = 1000

func partialProblem(rejects []ingest.Reject, res log.Result, style ingestStyle) *problem.Problem {
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
	p.Detail = fmt.Sprintf("%d %s(s) rejected, %d accepted; first: %s: %s", len(rejects), unit, res.Accepted, where, first.Reason)
	if len(rejects) > maxListedRejects {
		p.Detail += fmt.Sprintf("; errors lists the first %d", maxListedRejects)
	}
	if style == styleInflux {
		// InfluxDB's partial-write wording, which Telegraf recognises.
		p.Detail = fmt.Sprintf("partial write: %s dropped=%d", p.Detail, len(rejects))
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

// readBody reads the request body into buf, enforcing the compressed and
// decompressed size limits.
func (a *API) readBody(w http.ResponseWriter, r *http.Request, buf *bytes.Buffer) error {
	body := http.MaxBytesReader(w, r.Body, a.opts.MaxBodyBytes)
	var src io.Reader = body
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			return tooLargeOr(fmt.Errorf("reading gzip body: %w", err), a.opts.MaxBodyBytes)
		}
		defer zr.Close()
		src = zr
	default:
		return fmt.Errorf("%w %q: send identity or gzip", errUnsupportedEncoding, enc)
	}
	// Trust Content-Length for a first allocation only up to 1 MiB: the
	// buffer grows as data actually arrives.
	if r.ContentLength > 0 {
		buf.Grow(int(min(r.ContentLength, a.opts.MaxBodyBytes, 1<<20)))
	}
	limit := a.opts.MaxDecompressedBytes
	n, err := buf.ReadFrom(io.LimitReader(src, limit+1))
	if err != nil {
		return tooLargeOr(fmt.Errorf("reading body: %w", err), a.opts.MaxBodyBytes)
	}
	if n > limit {
		return fmt.Errorf("%w: decompressed body exceeds %d bytes", errTooLarge, limit)
	}
	return nil
}

func tooLargeOr(err error, limit int64) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Errorf("%w: body exceeds %d bytes", errTooLarge, limit)
	}
	return err
}

// now returns the server time.
func (a *API) now() time.Time { return a.clock() }
