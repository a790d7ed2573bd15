package hub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/telemetry"
)

// Reasons a request is refused, the reason label of
// twinline_stream_rejected_total.
const (
	rejectBadRequest   = "bad_request"
	rejectMaxClients   = "max_clients"
	rejectMaxPerClient = "max_per_client"
	rejectShuttingDown = "shutting_down"
)

// ctxKey keys the values the HTTP layer attaches to a stream request.
type ctxKey int

const (
	filterKey ctxKey = iota
	clientKeyKey
)

// WithFilter returns a copy of ctx that narrows an all=1 stream opened
// with it to the machines filter accepts, live and on replay after a
// resume; messages without a machine (fleet-wide news) do not pass. The
// HTTP layer attaches it to the request of an identity that may see only
// some machines (ServeHTTP reads it from r.Context()); a machine=ID stream
// is not filtered, its machines are checked before. filter is called under
// the hub's lock, once per message and filtered client: it must be fast
// and must not call the hub.
func WithFilter(ctx context.Context, filter func(machine string) bool) context.Context {
	return context.WithValue(ctx, filterKey, filter)
}

// WithClientKey returns a copy of ctx whose stream counts against key's
// Options.MaxPerClient: the identity (or address) the HTTP layer knows the
// client by. An empty key is not counted.
func WithClientKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, clientKeyKey, key)
}

// burst is the most messages written to a client with one write (one
// system call, one write deadline).
const burst = 128

// ServeHTTP serves GET /api/v1/stream?machine=ID[&machine=ID…] or ?all=1,
// optionally with ?cursor=N (or, for SSE, Last-Event-ID): a WebSocket when
// the request is an upgrade, SSE when it accepts text/event-stream. See the
// package documentation for the messages.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		h.refuse(w, rejectBadRequest, &problem.Problem{Type: problem.TypeMethodNotAllowed, Status: http.StatusMethodNotAllowed,
			Detail: "the stream is opened with GET"})
		return
	}
	sse := acceptsEventStream(r)
	if !sse && !isWebSocketUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		h.refuse(w, rejectBadRequest, &problem.Problem{Type: problem.TypeUpgradeRequired, Status: http.StatusUpgradeRequired,
			Detail: "open the stream as a WebSocket, or as Server-Sent Events with Accept: text/event-stream"})
		return
	}
	q, invalid := parseQuery(r, sse, h.opts.MaxMachines)
	if len(invalid) > 0 {
		h.refuse(w, rejectBadRequest, &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusBadRequest,
			Detail: "invalid parameter " + invalid[0].Name + ": " + invalid[0].Reason, InvalidParams: invalid})
		return
	}

	if h.bus != nil && q.hasCursor {
		// A cursor from another replica may be a little ahead of this one.
		h.waitSeq(r.Context(), q.cursor, h.opts.ResumeWait)
	}
	c := &client{
		queue:    newQueue(h.queueLimits()),
		cut:      make(chan struct{}),
		all:      q.all,
		machines: q.machines,
		conflate: q.conflate,
	}
	if f, ok := r.Context().Value(filterKey).(func(string) bool); ok && f != nil && q.all {
		c.filter = f
	}
	c.key, _ = r.Context().Value(clientKeyKey).(string)
	c.queue.wake = nil // the writer is started by the queue (writer.start)
	c.transport = transportWS
	if sse {
		c.transport = transportSSE
	}
	reg, err := h.register(c, q.cursor, q.hasCursor)
	switch {
	case errors.Is(err, errShuttingDown):
		h.refuse(w, rejectShuttingDown, &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "the server is shutting down; reconnect"})
		return
	case errors.Is(err, errTooManyForClient):
		h.refuse(w, rejectMaxPerClient, &problem.Problem{Type: problem.TypeRateLimited, Status: http.StatusTooManyRequests, RetryAfter: 5,
			Detail: fmt.Sprintf("too many streams for this client: at most %d at once; close one first", h.opts.MaxPerClient)})
		return
	case errors.Is(err, errTooManyClients):
		h.refuse(w, rejectMaxClients, &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 5,
			Detail: fmt.Sprintf("the server has its maximum of %d stream clients; retry later", h.opts.MaxClients)})
		return
	}
	wr := &writer{h: h, c: c, first: filterReplay(reg, c), cursor: reg.cursor, latest: reg.latest,
		remote: r.RemoteAddr, sent: h.metrics.sentWS}
	h.logger.Debug("stream client connected", "transport", c.transport, "remote_addr", wr.remote,
		"all", c.all, "machines", len(c.machines), "replay", len(wr.first)-reg.replay)
	if sse {
		wr.sent = h.metrics.sentSSE
		s, raw, err := h.openSSE(w, r, c.queue.signal)
		switch {
		case err != nil:
			h.unregister(c)
			h.logger.Debug("opening event stream", "remote_addr", wr.remote, "err", err)
		case raw:
			h.setInterrupt(c, s.(*rawSSEStream).c.interrupt)
			wr.start(s, s.(*rawSSEStream).c.close)
		default:
			// The response must be served before the handler returns.
			wr.hooks = append(wr.hooks,
				context.AfterFunc(r.Context(), c.queue.signal),
				context.AfterFunc(h.killCtx, c.queue.signal))
			wr.finished = make(chan struct{})
			h.setInterrupt(c, s.(*sseStream).interrupt)
			wr.start(s, nil)
			<-wr.finished
		}
		return
	}
	ws, err := h.acceptWS(w, r, c.queue.signal)
	if err != nil {
		// acceptWS has answered the request.
		h.unregister(c)
		h.logger.Debug("refusing websocket", "remote_addr", wr.remote, "err", err)
		return
	}
	// The connection is hijacked: net/http's goroutine (its stack grown by
	// the request) and the request itself go; the writer runs when it has
	// something to do.
	h.setInterrupt(c, ws.interrupt)
	wr.start(&wsStream{c: ws, batch: q.batch}, ws.close)
}

// queueLimits are the bounds of a client's queue.
func (h *Hub) queueLimits() queueLimits {
	return queueLimits{messages: h.opts.QueueSize, bytes: h.opts.MaxQueueBytes, lag: int64(h.opts.MaxLag)}
}

// filterReplay drops from reg's replay the messages c does not want.
func filterReplay(reg registration, c *client) []*message {
	if c.all && c.filter == nil {
		return reg.first
	}
	out := reg.first[:reg.replay]
	for _, m := range reg.first[reg.replay:] {
		if c.wants(m.machine) {
			out = append(out, m)
		}
	}
	clear(reg.first[len(out):])
	return out
}

// stream is one client connection, below the hub's delivery logic.
type stream interface {
	// send writes msgs in order and makes them reach the peer (flush),
	// within the write timeout.
	send(msgs []*message) error
	// end writes a last message, best effort within noticeTimeout, and
	// closes the stream with a WebSocket close status. If a send was
	// interrupted part way (see partial), the rest of it goes first, so
	// that the stream stays well-formed.
	end(last *message, code uint16, reason string)
	// partial reports whether the last send failed part way through:
	// end then completes it before its last message.
	partial() bool
	// gone is done when the peer has gone away.
	gone() <-chan struct{}
}

// bursts pools the slices a writer pops its client's queue into, so that an
// idle client holds none.
var bursts = sync.Pool{New: func() any {
	b := make([]*message, 0, burst)
	return &b
}}

// noticeTimeout bounds the final write to a client that is dropped: its
// reconnect message or close frame, after the rest of an interrupted
// write.
const noticeTimeout = 2 * time.Second

// end sends c's reconnect message and closes s; it logs the drop of a
// client (once: a client ends once).
func (h *Hub) end(c *client, s stream, cursor uint64) string {
	code, text := uint16(closeTryAgainLater), "slow client"
	switch c.reason {
	case reasonShutdown:
		code, text = closeServiceRestart, "service restart"
	case reasonSlowClient:
		h.logger.Info("dropping stream client", "transport", c.transport, "reason", reasonSlowClient,
			"bound", c.why.String(), "cursor", cursor)
	case reasonWriteError:
		text = "write timeout"
		h.logger.Info("dropping stream client", "transport", c.transport, "reason", reasonWriteError, "cursor", cursor)
	}
	s.end(reconnectMessage(cursor, c.reason, retryMs()), code, text)
	return c.reason
}

// retryMs returns a reconnect delay of 1–5 s, jittered so that clients
// dropped together do not come back together.
func retryMs() int64 { return 1000 + rand.Int64N(4000) }

// query is a parsed stream request.
type query struct {
	all       bool
	machines  []string // sorted, unique
	cursor    uint64
	hasCursor bool
	// batch asks for several messages per WebSocket frame, as a JSON
	// array (ignored on SSE).
	batch bool
	// conflate, for all=1 only, asks for a conflated fleet stream
	// flushed at most once per conflate.
	conflate time.Duration
}

// parseQuery parses the stream parameters, reporting every invalid one.
func parseQuery(r *http.Request, sse bool, maxMachines int) (query, []problem.InvalidParam) {
	var q query
	var invalid []problem.InvalidParam
	v := r.URL.Query()

	machines := v["machine"]
	if all := v.Get("all"); all != "" || v.Has("all") {
		switch all {
		case "1", "true":
			q.all = true
		case "0", "false":
		default:
			invalid = append(invalid, problem.InvalidParam{Name: "all", Reason: "must be 1 or true, to subscribe to every machine"})
		}
	}
	limit := telemetry.DefaultLimits().MaxMachineIDLen
	switch {
	case q.all && len(machines) > 0:
		invalid = append(invalid, problem.InvalidParam{Name: "machine", Reason: "give either machine or all=1, not both"})
	case len(machines) > maxMachines:
		invalid = append(invalid, problem.InvalidParam{Name: "machine", Reason: fmt.Sprintf("at most %d machines per stream, got %d; use all=1", maxMachines, len(machines))})
	case !q.all && len(machines) == 0 && !slices.ContainsFunc(invalid, func(p problem.InvalidParam) bool { return p.Name == "all" }):
		invalid = append(invalid, problem.InvalidParam{Name: "machine", Reason: "required: name at least one machine (machine=ID, repeatable), or subscribe to all with all=1"})
	default:
		for _, m := range machines {
			if m == "" || len(m) > limit {
				invalid = append(invalid, problem.InvalidParam{Name: "machine", Reason: fmt.Sprintf("a machine id is 1 to %d bytes", limit)})
				break
			}
		}
		q.machines = slices.Compact(slices.Sorted(slices.Values(machines)))
	}

	if b := v.Get("batch"); b != "" || v.Has("batch") {
		switch b {
		case "1", "true":
			q.batch = true
		case "0", "false":
		default:
			invalid = append(invalid, problem.InvalidParam{Name: "batch", Reason: "must be 1 or true, to receive a JSON array of messages per WebSocket frame"})
		}
	}
	if v.Has("conflate") {
		d, reason := parseConflate(v.Get("conflate"))
		switch {
		case reason != "":
			invalid = append(invalid, problem.InvalidParam{Name: "conflate", Reason: reason})
		case !q.all:
			invalid = append(invalid, problem.InvalidParam{Name: "conflate", Reason: "only with all=1: a conflated stream is of the fleet"})
		}
		q.conflate = d
	}
	if c := v.Get("cursor"); c != "" || v.Has("cursor") {
		n, err := strconv.ParseUint(c, 10, 64)
		if err != nil {
			invalid = append(invalid, problem.InvalidParam{Name: "cursor", Reason: "must be a seq: a non-negative integer"})
		}
		q.cursor, q.hasCursor = n, err == nil
	}
	if id := r.Header.Get("Last-Event-ID"); sse && id != "" {
		n, err := strconv.ParseUint(strings.TrimSpace(id), 10, 64)
		if err != nil {
			invalid = append(invalid, problem.InvalidParam{Name: "Last-Event-ID", Reason: "must be a seq: a non-negative integer"})
		}
		q.cursor, q.hasCursor = n, err == nil
	}
	return q, invalid
}

// acceptsEventStream reports whether the request accepts text/event-stream.
func acceptsEventStream(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "text/event-stream" {
				return true
			}
		}
	}
	return false
}

func isWebSocketUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(hd http.Header, key, token string) bool {
	for _, v := range hd.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func (h *Hub) refuse(w http.ResponseWriter, reason string, p *problem.Problem) {
	h.metrics.rejected.WithLabelValues(reason).Inc()
	problem.Write(w, p)
}
