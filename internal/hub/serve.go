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
	"time"

	"github.com/coder/websocket"

	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/telemetry"
)

// Reasons a request is refused, the reason label of
// twinline_stream_rejected_total.
const (
	rejectBadRequest   = "bad_request"
	rejectMaxClients   = "max_clients"
	rejectShuttingDown = "shutting_down"
)

// burst is the most messages written to a client under one write deadline
// and one flush.
const burst = 32

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
		queue:    newQueue(h.opts.QueueSize),
		cut:      make(chan struct{}),
		all:      q.all,
		machines: q.machines,
	}
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
	case errors.Is(err, errTooManyClients):
		h.refuse(w, rejectMaxClients, &problem.Problem{Type: problem.TypeOverloaded, Status: http.StatusServiceUnavailable, RetryAfter: 5,
			Detail: fmt.Sprintf("the server has its maximum of %d stream clients; retry later", h.opts.MaxClients)})
		return
	}
	defer h.unregister(c)
	first := filterReplay(reg, c)

	var s stream
	if sse {
		s = h.openSSE(w, r)
	} else {
		ws, err := h.openWS(w, r)
		if err != nil {
			// Accept has answered the request.
			h.logger.Debug("refusing websocket", "remote_addr", r.RemoteAddr, "err", err)
			return
		}
		defer ws.conn.CloseNow()
		s = ws
	}
	h.logger.Debug("stream client connected", "transport", c.transport, "remote_addr", r.RemoteAddr,
		"all", c.all, "machines", len(c.machines), "replay", len(first)-reg.replay)
	reason := h.serve(c, s, first, reg.cursor, reg.latest)
	h.logger.Debug("stream client disconnected", "transport", c.transport, "remote_addr", r.RemoteAddr, "reason", reason)
}

// filterReplay drops from reg's replay the messages c does not want.
func filterReplay(reg registration, c *client) []*message {
	if c.all {
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
	// end writes a last message, best effort, and closes the stream with
	// a WebSocket close status.
	end(last *message, code websocket.StatusCode, reason string)
	// gone is done when the peer has gone away.
	gone() <-chan struct{}
}

// serve writes the first messages (hello, reset, replay), then live ones,
// to s until the client goes away or is cut off; it returns why it ended.
// cursor is the client's cursor before anything is written, latest the
// hub's seq when it registered. Throughout, cursor is what a reconnect may
// resume from: every message up to it that c wants has been written.
func (h *Hub) serve(c *client, s stream, first []*message, cursor, latest uint64) string {
	sent := h.metrics.sentWS
	if c.transport == transportSSE {
		sent = h.metrics.sentSSE
	}
	write := func(msgs []*message) bool {
		if err := s.send(msgs); err != nil {
			select {
			case <-s.gone():
			default:
				h.logger.Info("dropping stream client", "transport", c.transport, "reason", reasonWriteError, "err", err)
				h.drop(c, reasonWriteError)
			}
			return false
		}
		sent.Add(float64(len(msgs)))
		for _, m := range msgs {
			if m.id {
				cursor = m.seq
			}
		}
		return true
	}

	for len(first) > 0 {
		n := min(len(first), burst)
		if !write(first[:n]) {
			return reasonWriteError
		}
		first = first[n:]
		select {
		case <-c.cut:
			if c.reason != reasonShutdown {
				return h.end(c, s, cursor)
			}
			// On shutdown, finish the replay and drain the queue below.
		case <-s.gone():
			return "gone"
		case <-h.killCtx.Done():
			return "killed"
		default:
		}
	}
	cursor = max(cursor, latest)

	batch := make([]*message, 0, burst)
	for {
		select {
		case <-c.cut:
			if c.reason == reasonShutdown {
				// Deliver what is queued, then say goodbye.
				for batch = c.queue.pop(batch[:0], burst); len(batch) > 0; batch = c.queue.pop(batch[:0], burst) {
					if !write(batch) {
						return reasonWriteError
					}
				}
				cursor = max(cursor, c.cutSeq)
			}
			return h.end(c, s, cursor)
		default:
		}
		if batch = c.queue.pop(batch[:0], burst); len(batch) > 0 {
			if !write(batch) {
				return reasonWriteError
			}
			clear(batch)
			continue
		}
		select {
		case <-c.queue.wake:
		case <-c.cut:
		case <-s.gone():
			return "gone"
		case <-h.killCtx.Done():
			return "killed"
		}
	}
}

// end sends c's reconnect message and closes s.
func (h *Hub) end(c *client, s stream, cursor uint64) string {
	code, text := websocket.StatusTryAgainLater, "slow client"
	switch c.reason {
	case reasonShutdown:
		code, text = websocket.StatusServiceRestart, "service restart"
	case reasonSlowClient:
		h.logger.Info("dropping stream client", "transport", c.transport, "reason", reasonSlowClient,
			"queue", h.opts.QueueSize, "cursor", cursor)
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

// wsStream is a WebSocket stream.
type wsStream struct {
	conn    *websocket.Conn
	ctx     context.Context // done when the peer is gone or the hub is killed
	timeout time.Duration
}

func (h *Hub) openWS(w http.ResponseWriter, r *http.Request) (*wsStream, error) {
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OriginPatterns:  h.opts.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled, // no per-connection flate state
	})
	if err != nil {
		return nil, fmt.Errorf("accepting websocket: %w", err)
	}
	// Clients send nothing; CloseRead answers pings and close frames.
	ctx := conn.CloseRead(h.killCtx)
	return &wsStream{conn: conn, ctx: ctx, timeout: h.opts.WriteTimeout}, nil
}

func (s *wsStream) send(msgs []*message) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	for _, m := range msgs {
		if err := s.conn.Write(ctx, websocket.MessageText, m.json()); err != nil {
			return fmt.Errorf("writing websocket message: %w", err)
		}
	}
	return nil
}

func (s *wsStream) end(last *message, code websocket.StatusCode, reason string) {
	if err := s.send([]*message{last}); err != nil {
		s.conn.CloseNow()
		return
	}
	s.conn.Close(code, reason)
}

func (s *wsStream) gone() <-chan struct{} { return s.ctx.Done() }

// sseStream is a Server-Sent Events stream.
type sseStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	ctx     context.Context
	timeout time.Duration
	started bool
}

func (h *Hub) openSSE(w http.ResponseWriter, r *http.Request) *sseStream {
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sseStream{w: w, rc: http.NewResponseController(w), ctx: r.Context(), timeout: h.opts.WriteTimeout}
}

func (s *sseStream) send(msgs []*message) error {
	if err := s.rc.SetWriteDeadline(time.Now().Add(s.timeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("setting write deadline: %w", err)
	}
	if !s.started {
		s.started = true
		if _, err := fmt.Fprintf(s.w, "retry: %d\n\n", retryMs()); err != nil {
			return fmt.Errorf("writing event stream: %w", err)
		}
	}
	for _, m := range msgs {
		if _, err := s.w.Write(m.frame); err != nil {
			return fmt.Errorf("writing event stream: %w", err)
		}
	}
	if err := s.rc.Flush(); err != nil {
		return fmt.Errorf("flushing event stream: %w", err)
	}
	return nil
}

func (s *sseStream) end(last *message, _ websocket.StatusCode, _ string) {
	_ = s.send([]*message{last})
}

func (s *sseStream) gone() <-chan struct{} { return s.ctx.Done() }
