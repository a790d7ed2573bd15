package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/telemetry"
)

// Options configure a Hub. Zero values take the defaults.
type Options struct {
	// QueueSize bounds each client's queue, in publish calls it may fall
	// behind (default 256; at most 64 × QueueSize messages). A client
	// whose queue is full when a publish for it arrives is cut off.
	QueueSize int
	// Heartbeat is the heartbeat interval (default 15s).
	Heartbeat time.Duration
	// ReplaySize is the number of recent messages kept for resume (default
	// 8192).
	ReplaySize int
	// MaxClients caps the connected clients; 0 means unlimited. Past it a
	// new client is answered 503 problem+json.
	MaxClients int
	// MaxMachines caps the machines one client may name (default 1000).
	MaxMachines int
	// WriteTimeout bounds each burst of writes to one client (default 10s).
	WriteTimeout time.Duration
	// OriginPatterns are the extra origins allowed to open a WebSocket, as
	// host patterns for path.Match (see websocket.AcceptOptions). The
	// default, none, allows same-origin requests only.
	OriginPatterns []string
}

func (o Options) withDefaults() Options {
	if o.QueueSize <= 0 {
		o.QueueSize = 256
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 15 * time.Second
	}
	if o.ReplaySize <= 0 {
		o.ReplaySize = 8192
	}
	if o.MaxClients < 0 {
		o.MaxClients = 0
	}
	if o.MaxMachines <= 0 {
		o.MaxMachines = 1000
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	return o
}

// Reasons a client is dropped, the reason label of
// twinline_stream_clients_dropped_total and the reason of a reconnect
// message.
const (
	reasonSlowClient = "slow_client"
	reasonShutdown   = "shutdown"
	reasonWriteError = "write_error"
)

// Errors of registration, answered 503 by ServeHTTP.
var (
	errTooManyClients = errors.New("too many stream clients")
	errShuttingDown   = errors.New("stream hub shutting down")
)

// Hub is the in-memory fan-out of live updates to stream clients. All its
// methods are safe for concurrent use.
type Hub struct {
	opts    Options
	logger  *slog.Logger
	metrics *metrics
	// kill ends every connection at once; Shutdown calls it when its
	// context ends before the clients are gone.
	killCtx context.Context
	kill    context.CancelFunc
	// handlers counts running stream handlers, for Shutdown.
	handlers sync.WaitGroup
	// encoders holds the scratch space of PublishSamples (*encoder).
	encoders sync.Pool

	mu        sync.Mutex
	seq       uint64 // latest seq
	ring      ring
	byMachine map[string]map[*client]struct{}
	all       map[*client]struct{}
	clients   map[*client]struct{} // every registered client, cut off or not
	closing   bool
	// mark numbers publish calls; touched are the clients a publish call
	// has enqueued for, to be woken once it is done.
	mark    uint64
	touched []*client
}

// client is one registered stream connection. Its subscriptions, mark,
// reason and cutSeq are guarded by the hub's mu; reason and cutSeq are also
// safe to read once cut is closed. The queue has its own lock.
type client struct {
	queue queue
	// mark is the publish that last enqueued for the client (h.mu).
	mark uint64
	// cut is closed when the hub drops the client; reason says why, and
	// cutSeq is the hub's latest seq then: every message up to it that the
	// client wants is in its queue or written.
	cut    chan struct{}
	reason string
	cutSeq uint64
	// all subscribes to every machine; otherwise machines, sorted.
	all       bool
	machines  []string
	transport string
}

// wants reports whether a message for machine goes to c.
func (c *client) wants(machine string) bool {
	if c.all {
		return true
	}
	if machine == "" {
		return false
	}
	_, ok := slices.BinarySearch(c.machines, machine)
	return ok
}

// New returns a Hub. It registers its metrics on reg unless reg is nil. It
// adds "component"="hub" to logger's attributes itself; a nil logger
// discards.
func New(opts Options, logger *slog.Logger, reg prometheus.Registerer) *Hub {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts = opts.withDefaults()
	h := &Hub{
		opts:      opts,
		logger:    logger.With("component", "hub"),
		metrics:   newMetrics(reg),
		seq:       uint64(time.Now().UnixMicro()),
		ring:      newRing(opts.ReplaySize),
		byMachine: make(map[string]map[*client]struct{}),
		all:       make(map[*client]struct{}),
		clients:   make(map[*client]struct{}),
	}
	h.killCtx, h.kill = context.WithCancel(context.Background())
	return h
}

// Clients returns the number of connected stream clients.
func (h *Hub) Clients() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

// encoder is the scratch space of one PublishSamples call, pooled.
type encoder struct {
	index  map[string]int
	drafts []draft
	msgs   []*message
	counts []int
	group  []int // group of each sample
}

// PublishSamples sends samples to the clients subscribed to their machines:
// one message per machine, in the order the machines first appear, each
// encoded once and shared by all its subscribers; a machine's samples keep
// their order. received is the server's ingest time, Unix ms. It never
// blocks on a client.
func (h *Hub) PublishSamples(samples []telemetry.Sample, received int64) {
	if len(samples) == 0 {
		return
	}
	start := time.Now()
	e, _ := h.encoders.Get().(*encoder)
	if e == nil {
		e = &encoder{index: make(map[string]int)}
	}
	e.group = slices.Grow(e.group[:0], len(samples))[:len(samples)]
	// Group, and size each group.
	last, g := "", -1
	for i := range samples {
		s := &samples[i]
		if g < 0 || s.Machine != last {
			var ok bool
			if g, ok = e.index[s.Machine]; !ok {
				g = len(e.drafts)
				e.index[s.Machine] = g
				e.drafts = append(e.drafts, draft{machine: s.Machine})
				e.counts = append(e.counts, 0)
			}
			last = s.Machine
		}
		e.group[i] = g
		e.counts[g] += sampleSize(s)
	}
	for g := range e.drafts {
		d := newDraft(e.drafts[g].machine, len(e.drafts[g].machine)+64+e.counts[g])
		d.buf = samplesHeader(d.buf, d.machine, received)
		e.drafts[g] = d
		e.counts[g] = 0 // now: samples written
	}
	for i := range samples {
		g := e.group[i]
		e.drafts[g].buf = appendSample(e.drafts[g].buf, &samples[i], e.counts[g] == 0)
		e.counts[g]++
	}
	for g := range e.drafts {
		e.drafts[g].buf = samplesTrailer(e.drafts[g].buf)
	}

	slab := make([]message, len(e.drafts)) // one allocation for the call's messages
	h.mu.Lock()
	e.msgs = e.msgs[:0]
	for i, d := range e.drafts {
		h.seq++
		e.msgs = append(e.msgs, d.finish(h.seq, &slab[i]))
	}
	h.publishLocked(e.msgs)
	h.mu.Unlock()
	clear(e.msgs)

	h.metrics.published.samples.Add(float64(len(e.drafts)))
	clear(e.index)
	clear(e.drafts)
	e.drafts, e.counts = e.drafts[:0], e.counts[:0]
	h.encoders.Put(e)
	h.metrics.publishDuration.Observe(time.Since(start).Seconds())
}

// PublishEvent sends a live update other than samples (a status change, an
// alarm, a note…) to the clients subscribed to machine, as
// {"seq":N,"type":typ,"machine":machine,"data":data}; data is encoded with
// encoding/json. An empty machine (fleet-wide news) reaches all-machines
// subscribers only, and the message has no "machine". It never blocks on a
// client.
func (h *Hub) PublishEvent(machine, typ string, data any) {
	start := time.Now()
	b, err := json.Marshal(data)
	if err != nil {
		h.logger.Error("encoding stream event", "machine", machine, "type", typ, "err", err)
		return
	}
	d := eventDraft(machine, typ, b)
	h.mu.Lock()
	h.seq++
	m := d.finish(h.seq, new(message))
	h.publishLocked([]*message{m})
	h.mu.Unlock()
	h.metrics.published.events.Inc()
	h.metrics.publishDuration.Observe(time.Since(start).Seconds())
}

// publishLocked keeps msgs, the messages of one publish call with their
// seqs assigned, in the ring and enqueues them for their subscribers; then
// it wakes each subscriber's handler once.
func (h *Hub) publishLocked(msgs []*message) {
	h.mark++
	for _, m := range msgs {
		h.ring.put(m)
		if m.machine == "" {
			continue
		}
		for c := range h.byMachine[m.machine] {
			h.offerLocked(c, msgs[:0], m)
		}
	}
	// An all-machines subscriber takes the whole call at once: one lock
	// and one look at its queue, not one per message.
	for c := range h.all {
		h.offerLocked(c, msgs, nil)
	}
	for _, c := range h.touched {
		c.queue.signal()
	}
	clear(h.touched)
	h.touched = h.touched[:0]
}

// offerLocked enqueues msgs, then m if not nil, for c, or cuts c off if its
// queue has no room for them.
func (h *Hub) offerLocked(c *client, msgs []*message, m *message) {
	if !c.queue.push(msgs, m) {
		h.cutLocked(c, reasonSlowClient)
		return
	}
	if c.mark != h.mark {
		c.mark = h.mark
		h.touched = append(h.touched, c)
	}
}

// cutLocked unsubscribes c and tells its handler to end the connection.
func (h *Hub) cutLocked(c *client, reason string) {
	if c.reason != "" {
		return
	}
	c.reason, c.cutSeq = reason, h.seq
	h.unsubscribeLocked(c)
	close(c.cut)
	h.metrics.dropped.WithLabelValues(reason).Inc()
}

func (h *Hub) unsubscribeLocked(c *client) {
	if c.all {
		delete(h.all, c)
		return
	}
	for _, m := range c.machines {
		set := h.byMachine[m]
		delete(set, c)
		if len(set) == 0 {
			delete(h.byMachine, m)
		}
	}
}

// registration is what a client gets when it joins.
type registration struct {
	// latest is the hub's latest seq when the client joined.
	latest uint64
	// cursor is where the client stands before anything is written to it:
	// the cursor it resumes from, or latest.
	cursor uint64
	// first are the messages to send before the live queue: hello, a reset
	// if any, then from first[replay:] the messages to replay, not yet
	// filtered (the handler filters them, outside the hub lock).
	first  []*message
	replay int
}

// register adds c to the hub and, in the same critical section, takes the
// messages to send it before its live queue: replay from the ring if
// hasCursor, so that nothing is missed or sent twice.
func (h *Hub) register(c *client, cursor uint64, hasCursor bool) (registration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return registration{}, errShuttingDown
	}
	if h.opts.MaxClients > 0 && len(h.clients) >= h.opts.MaxClients {
		return registration{}, errTooManyClients
	}
	reg := registration{latest: h.seq, cursor: h.seq}
	hello := helloMessage(h.seq, h.opts.Heartbeat.Milliseconds(), h.opts.QueueSize)
	switch {
	case !hasCursor:
		reg.first = []*message{hello}
	case cursor > h.seq:
		reg.first = []*message{hello, resetMessage(h.seq, "cursor_unknown")}
	case cursor+1 < h.ring.oldest(h.seq):
		reg.first = []*message{hello, resetMessage(h.seq, "cursor_expired")}
	default:
		reg.first = h.ring.since(cursor, h.seq, 1)
		reg.first[0] = hello
		reg.replay = 1
		reg.cursor = cursor
	}
	if reg.replay == 0 {
		reg.replay = len(reg.first) // nothing to replay
	}
	h.clients[c] = struct{}{}
	if c.all {
		h.all[c] = struct{}{}
	} else {
		for _, m := range c.machines {
			set := h.byMachine[m]
			if set == nil {
				set = make(map[*client]struct{})
				h.byMachine[m] = set
			}
			set[c] = struct{}{}
		}
	}
	h.handlers.Add(1)
	h.metrics.clients.WithLabelValues(c.transport).Inc()
	return reg, nil
}

// unregister removes c from the hub; its handler calls it when it ends.
func (h *Hub) unregister(c *client) {
	h.mu.Lock()
	if _, ok := h.clients[c]; ok {
		delete(h.clients, c)
		if c.reason == "" {
			h.unsubscribeLocked(c)
		}
		h.metrics.clients.WithLabelValues(c.transport).Dec()
	}
	h.mu.Unlock()
	h.handlers.Done()
}

// drop cuts c off for reason unless the hub already has.
func (h *Hub) drop(c *client, reason string) {
	h.mu.Lock()
	h.cutLocked(c, reason)
	h.mu.Unlock()
}

// Run sends heartbeats until ctx ends, then returns nil.
func (h *Hub) Run(ctx context.Context) error {
	t := time.NewTicker(h.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			h.heartbeat(now)
		}
	}
}

// heartbeat enqueues one shared heartbeat for every client, skipping those
// whose queue is full. It is enqueued under the lock after every message up
// to its seq, which makes its seq a valid cursor.
func (h *Hub) heartbeat(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := heartbeatMessage(h.seq, now.UnixMilli())
	for c := range h.clients {
		if c.reason == "" && c.queue.push(nil, m) {
			c.queue.signal()
		}
	}
}

// Shutdown drains the hub: new clients are refused, and every client is
// sent a reconnect message (reason "shutdown", with its cursor) after what
// its queue still holds, then closed (WebSocket status 1012 service
// restart). Shutdown returns when every stream handler has returned, or
// with an error when ctx ends first; then it also aborts the WebSocket
// writes still in flight. Publishing after Shutdown is harmless.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	h.closing = true
	n := len(h.clients)
	for c := range h.clients {
		h.cutLocked(c, reasonShutdown)
	}
	h.mu.Unlock()
	h.logger.Info("draining stream clients", "clients", n)

	done := make(chan struct{})
	go func() {
		h.handlers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		h.kill()
		return fmt.Errorf("draining stream clients: %w", ctx.Err())
	}
}

// ring keeps the most recent messages, whose seqs are consecutive.
type ring struct {
	buf []*message
	n   int // messages held, ≤ len(buf)
}

func newRing(size int) ring { return ring{buf: make([]*message, size)} }

func (r *ring) put(m *message) {
	r.buf[m.seq%uint64(len(r.buf))] = m
	if r.n < len(r.buf) {
		r.n++
	}
}

// oldest returns the seq of the oldest message held, latest+1 if none.
func (r *ring) oldest(latest uint64) uint64 { return latest - uint64(r.n) + 1 }

// since returns the messages held with seq in (cursor, latest], in order,
// in a new slice with room for extra more in front. cursor must not be
// older than oldest-1.
func (r *ring) since(cursor, latest uint64, extra int) []*message {
	k := int(latest - cursor)
	dst := make([]*message, extra, extra+k)
	if k == 0 {
		return dst
	}
	size := uint64(len(r.buf))
	from := int((cursor + 1) % size)
	if from+k <= len(r.buf) {
		return append(dst, r.buf[from:from+k]...)
	}
	dst = append(dst, r.buf[from:]...)
	return append(dst, r.buf[:k-(len(r.buf)-from)]...)
}
