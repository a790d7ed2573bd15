package sim

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// Retry policy of the HTTP emitter.
const (
	// maxAttempts bounds the attempts at one batch.
	maxAttempts = 6
	// backoffBase is the first wait when the server names none; it doubles
	// on every attempt up to backoffMax.
	backoffBase = 250 * time.Millisecond
	backoffMax  = 5 * time.Second
	// maxRetryAfter caps the wait a Retry-After header may ask for.
	maxRetryAfter = 30 * time.Second
	// maxErrorBody bounds how much of an error response is read.
	maxErrorBody = 64 << 10
	// defaultHTTPTimeout bounds one request when no client is given.
	defaultHTTPTimeout = 30 * time.Second
)

// EventsPath is where the HTTP emitter posts, relative to its target.
const EventsPath = "/api/v1/events"

// StatusError is an unexpected HTTP status from the server, with the
// problem+json (RFC 9457) title and detail it carried.
type StatusError struct {
	StatusCode int
	Title      string
	Detail     string
}

func (e *StatusError) Error() string {
	msg := "server answered " + strconv.Itoa(e.StatusCode)
	if t := http.StatusText(e.StatusCode); t != "" {
		msg += " " + t
	}
	switch {
	case e.Detail != "":
		msg += ": " + e.Detail
	case e.Title != "" && e.Title != http.StatusText(e.StatusCode):
		msg += ": " + e.Title
	}
	return msg
}

// NewHTTPEmitter returns an Emit that POSTs each batch to target +
// "/api/v1/events" as gzip-compressed NDJSON. A 2xx answer delivers the batch.
// On 429, 502, 503 and 504, and on network errors, it retries — the events
// carry ids, so a retry is idempotent — waiting as long as Retry-After says
// (at most 30s) or backing off exponentially, for at most 6 attempts and
// never past ctx. When the server is still shedding load after that, the
// error wraps ErrDropped. Any other status is an error carrying the
// problem+json detail of the body, as a *StatusError. A nil client means one
// with a 30s timeout.
func NewHTTPEmitter(target string, client *http.Client) Emit {
	return newHTTPEmitter(target, client, sleepCtx, time.Now)
}

// httpEmitter is NewHTTPEmitter with its clock and sleep injectable.
type httpEmitter struct {
	url    string
	client *http.Client
	sleep  func(ctx context.Context, d time.Duration) error
	now    func() time.Time
	encs   sync.Pool // *ndjsonEncoder
}

func newHTTPEmitter(target string, client *http.Client, sleep func(context.Context, time.Duration) error, now func() time.Time) Emit {
	if client == nil {
		client = &http.Client{Timeout: defaultHTTPTimeout}
	}
	h := &httpEmitter{
		url:    strings.TrimRight(target, "/") + EventsPath,
		client: client,
		sleep:  sleep,
		now:    now,
	}
	h.encs.New = func() any { return newNDJSONEncoder() }
	return h.emit
}

func (h *httpEmitter) emit(ctx context.Context, events []telemetry.Event) error {
	if len(events) == 0 {
		return nil
	}
	enc := h.encs.Get().(*ndjsonEncoder)
	body, err := enc.encode(events)
	h.encs.Put(enc)
	if err != nil {
		return fmt.Errorf("encoding events: %w", err)
	}
	for attempt := 1; ; attempt++ {
		wait, retry, err := h.post(ctx, body)
		if err == nil {
			return nil
		}
		if !retry {
			return fmt.Errorf("posting %d events to %s: %w", len(events), h.url, err)
		}
		if attempt == maxAttempts {
			var se *StatusError
			if errors.As(err, &se) {
				// The server is up but keeps shedding load: drop the batch.
				return fmt.Errorf("posting %d events to %s: giving up after %d attempts: %w: %w", len(events), h.url, attempt, ErrDropped, err)
			}
			return fmt.Errorf("posting %d events to %s: giving up after %d attempts: %w", len(events), h.url, attempt, err)
		}
		if wait < 0 {
			wait = min(backoffBase<<(attempt-1), backoffMax)
		}
		if err := h.sleep(ctx, wait); err != nil {
			return fmt.Errorf("waiting to retry posting events: %w", err)
		}
	}
}

// post makes one attempt. On a retryable failure it reports retry, and the
// wait the server asked for (negative: none).
func (h *httpEmitter) post(ctx context.Context, body []byte) (wait time.Duration, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return 0, false, fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("User-Agent", "twinline-simulate")
	resp, err := h.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, false, err
		}
		return -1, true, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return 0, false, nil
	}
	serr := readProblem(resp)
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return retryAfter(resp.Header.Get("Retry-After"), h.now()), true, serr
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		return -1, true, serr
	}
	return 0, false, serr
}

// readProblem reads an error response into a StatusError, taking the title
// and detail from a problem+json body, or the detail from a plain one.
func readProblem(resp *http.Response) *StatusError {
	e := &StatusError{StatusCode: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	var p struct {
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	if json.Unmarshal(b, &p) == nil && (p.Title != "" || p.Detail != "") {
		e.Title, e.Detail = p.Title, p.Detail
		return e
	}
	text := strings.TrimSpace(string(b))
	if len(text) > 512 {
		text = text[:512] + "…"
	}
	if utf8.ValidString(text) {
		e.Detail = text
	}
	return e
}

// retryAfter parses a Retry-After header — delay seconds or an HTTP date —
// into a wait capped at maxRetryAfter; negative when absent or invalid.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return -1
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return -1
		}
		return min(time.Duration(min(secs, math.MaxInt32))*time.Second, maxRetryAfter)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxRetryAfter)
	}
	return -1
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ndjsonEncoder encodes events as gzip-compressed NDJSON, reusing its
// buffers across batches.
type ndjsonEncoder struct {
	raw []byte
	zw  *gzip.Writer
}

func newNDJSONEncoder() *ndjsonEncoder {
	zw, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed) // the level is valid
	return &ndjsonEncoder{zw: zw}
}

// encode returns the compressed body, one event a line in the wire form of
// ingest.AppendEvent, in a fresh slice the caller owns (the HTTP transport
// may read it after the request is done).
func (e *ndjsonEncoder) encode(events []telemetry.Event) ([]byte, error) {
	e.raw = e.raw[:0]
	for i := range events {
		var err error
		if e.raw, err = ingest.AppendEvent(e.raw, &events[i]); err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		e.raw = append(e.raw, '\n')
	}
	var out bytes.Buffer
	out.Grow(len(e.raw)/4 + 64)
	e.zw.Reset(&out)
	if _, err := e.zw.Write(e.raw); err != nil {
		return nil, fmt.Errorf("compressing: %w", err)
	}
	if err := e.zw.Close(); err != nil {
		return nil, fmt.Errorf("compressing: %w", err)
	}
	return out.Bytes(), nil
}
