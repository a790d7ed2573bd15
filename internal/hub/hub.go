package hub

import (
	"sync/atomic"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/telemetry"
)

// Options configure a Hub. Zero values take the defaults.
type Options struct {
	// QueueSize caps the messages queued for one client (default 65536):
	// a safety cap far above realistic use, kept for compatibility. A
	// client's queue is bounded by MaxQueueBytes and MaxLag.
	QueueSize int
	// MaxQueueBytes bounds the bytes queued for one client (default 8 MiB):
	// a client whose queue would pass it is cut off (slow_client). A
	// publish into an empty queue is always taken, whatever its size.
	MaxQueueBytes int
	// MaxLag bounds how far behind the head one client may be (default
	// 30s): a client whose oldest queued message is older than MaxLag when
	// a message for it is published, or at a heartbeat, is cut off
	// (slow_client).
	MaxLag time.Duration
	// Heartbeat is the heartbeat interval (default 15s).
	Heartbeat time.Duration
	// ReplaySize is the number of recent messages kept for resume (default
	// 8192).
	ReplaySize int
	// ReplayBytes bounds the bytes of the messages kept for resume
	// (default 32 MiB); the oldest leave first.
	ReplayBytes int
	// MaxClients caps the connected clients; 0 means unlimited. Past it a
	// new client is answered 503 problem+json.
	MaxClients int
	// MaxPerClient caps the concurrent streams of one client key (see
	// WithClientKey); 0 means unlimited. Past it a new stream of that key
	// is answered 429 problem+json; a stream's slot is released when it
	// ends. Requests without a key are not counted.
	MaxPerClient int
	// MaxMachines caps the machines one client may name (default 1000).
	MaxMachines int
	// WriteTimeout bounds each burst of writes to one client (default 10s).
	WriteTimeout time.Duration
	// WriteInterval, when positive, is the shortest time between two writes
	// to one client: what is published for a client within WriteInterval of
	// its last write waits for the rest of the interval and goes out with
	// everything queued by then, in one write. A client that was not written
	// to for WriteInterval is written to at once. It trades up to
	// WriteInterval of latency for fewer system calls (each costs far more
	// than a message) when clients receive many messages a second. 0 writes
	// as soon as a message is queued.
	WriteInterval time.Duration
	// OnRemoteSamples, with Redis, hears the samples another replica
	// published (decoded from its samples messages: machine, ingest time
	// in Unix ms, samples the callee may keep), before this replica's
	// clients get them: a replica that does not process a machine's data
	// may still keep its twin current. It must not block for long.
	OnRemoteSamples func(machine string, ingestTs int64, samples []telemetry.Sample)
	// OnRemoteAlarm, with Redis, hears the alarm changes another replica
	// published, like OnRemoteSamples.
	OnRemoteAlarm func(Alarm)
	// OnRemoteMedians, with Redis, hears the sliding medians another
	// replica computed for a machine it processes (a null median is
	// skipped), like OnRemoteSamples.
	OnRemoteMedians func([]Median)
	// OnRemoteState, with Redis, hears the state changes another replica
	// stored, like OnRemoteSamples.
	OnRemoteState func(machine string, d StateData)
	// PublishWrite, when not nil, observes for each live message written
	// to a client the seconds from the hub taking it (its publish, or its
	// arrival from Redis) to the end of its write: the publish_write leg
	// of twinline_leg_seconds. A replayed message is not observed.
	PublishWrite prometheus.Observer
	// OriginPatterns are the extra origins allowed to open a WebSocket, as
	// host patterns for path.Match (see websocket.AcceptOptions). The
	// default, none, allows same-origin requests only.
	OriginPatterns []string

	// Redis, when not nil, fans live messages out across every replica
	// sharing it (and RedisPrefix): each publish goes through Redis once,
	// and every replica delivers it to its own clients, with seqs (cursors)
	// that mean the same on every replica. Run keeps the subscription.
	Redis redis.UniversalClient
	// RedisPrefix namespaces the Redis keys and channel (e.g. "twinline:").
	RedisPrefix string
	// RedisSharded publishes with SPUBLISH and subscribes with SSUBSCRIBE
	// (sharded Pub/Sub, Redis 7+), for a Redis Cluster.
	RedisSharded bool
	// RedisTimeout bounds each publish through Redis (default 500ms); past
	// it, or on any error, the hub delivers locally until its subscription
	// is back. It bounds the network waits only if the client has
	// ContextTimeoutEnabled.
	RedisTimeout time.Duration
	// ResumeWait is how long a client resuming with a cursor this replica
	// has not reached yet (a cursor from another replica) is held before
	// it is answered (default 2s; with Redis only).
	ResumeWait time.Duration
}

func (o Options) withDefaults() Options {
	if o.QueueSize <= 0 {
		o.QueueSize = defaultQueueMessages
	}
	if o.MaxQueueBytes <= 0 {
		o.MaxQueueBytes = defaultQueueBytes
	}
	if o.MaxLag <= 0 {
		o.MaxLag = defaultMaxLag
	}
	if o.ReplayBytes <= 0 {
		o.ReplayBytes = defaultReplayBytes
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
	if o.WriteInterval < 0 {
		o.WriteInterval = 0
	}
	if o.ResumeWait <= 0 {
		o.ResumeWait = defaultResumeWait
	}
	return o
}

// Defaults of the client queues and the replay ring.
const (
	defaultQueueMessages = 65536
	defaultQueueBytes    = 8 << 20
	defaultMaxLag        = 30 * time.Second
	defaultReplayBytes   = 32 << 20
)

// Reasons a client is dropped, the reason label of
// twinline_stream_clients_dropped_total and the reason of a reconnect
// message.
const (
	reasonSlowClient = "slow_client"
	reasonShutdown   = "shutdown"
	reasonWriteError = "write_error"
)

// reasonConflated is the reason of the reset a conflated stream resuming
// with a cursor gets: it has no resume.
const reasonConflated = "conflated"

// Reasons of the reset a client resuming with a cursor the hub cannot
// serve gets.
const (
	reasonCursorExpired = "cursor_expired"
	reasonCursorUnknown = "cursor_unknown"
)

// Errors of registration, answered 503 (429 for errTooManyForClient) by
// ServeHTTP.
var (
	errTooManyClients   = errors.New("too many stream clients")
	errTooManyForClient = errors.New("too many streams for this client")
	errShuttingDown     = errors.New("stream hub shutting down")
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
	// bus is the cross-replica fan-out, nil without Redis.
	bus *bus
	// epoch is the origin of the queues' clock (now).
	epoch time.Time

	mu        sync.Mutex
	seq       uint64 // latest seq
	ring      ring
	byMachine map[string]map[*client]struct{}
	all       map[*client]struct{}
	// allFiltered are the all-machines clients with a filter (WithFilter);
	// filtered is the scratch space of their share of a publish call.
	allFiltered map[*client]struct{}
	filtered    []*message
	// conflated are the clients of a conflated fleet stream, and fleet
	// their shared state (nil without them).
	conflated map[*client]struct{}
	fleet     *fleetState
	// groups are the unfiltered conflated clients by interval: they share
	// one flush, encoded once for all of them.
	groups map[time.Duration]*fleetGroup
	// conflating says fleet is not nil, read without the lock (the bus
	// decodes other replicas' messages for it only then).
	conflating atomic.Bool
	names      []string             // scratch space of a flush
	clients    map[*client]struct{} // every registered client, cut off or not
	// perKey counts the registered clients of each client key.
	perKey  map[string]int
	closing bool
	// mark numbers publish calls; touched are the clients a publish call
	// has enqueued for, to be woken once it is done.
	mark    uint64
	touched []*client
	// connected says the bus has been subscribed once.
	connected bool
	// global is the latest seq of the global sequence this replica knows
	// of: delivered, or skipped by a jump.
	global uint64
	// pubs tracks this replica's publish calls through Redis, by number.
	pubs map[uint64]pubState
	// left says a client has left, at leftAt (now): see skipLocked.
	left   bool
	leftAt int64
	// advanced, when not nil, is closed when seq moves (waitSeq).
	advanced chan struct{}
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
	// why says which bound of its queue a slow client passed.
	why refusal
	// interrupt, when set, makes a write in flight to the client return
	// at once (its deadline passes): a client cut off while its writer is
	// stuck gets its final notice without waiting for the write timeout.
	interrupt func()
	// conflate, for a conflated fleet stream, is its flush interval;
	// flushed is the fleet state's version at its last flush, and flusher
	// the timer of the next.
	conflate time.Duration
	flushed  uint64
	flusher  *time.Timer
	// all subscribes to every machine; otherwise machines, sorted.
	all      bool
	machines []string
	// filter, when not nil, narrows an all-machines subscription to the
	// machines it accepts; messages without a machine do not pass.
	filter    func(machine string) bool
	transport string
	// key is the client key its stream counts against (MaxPerClient).
	key string
}

// wants reports whether a message for machine goes to c.
func (c *client) wants(machine string) bool {
	if c.all {
		return c.filter == nil || machine != "" && c.filter(machine)
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
		metrics:   newMetrics(reg, opts.Redis != nil, opts.PublishWrite),
		seq:       uint64(time.Now().UnixMicro()),
		epoch:     time.Now(),
		ring:      newRing(opts.ReplaySize, opts.ReplayBytes),
		conflated: make(map[*client]struct{}),
		byMachine: make(map[string]map[*client]struct{}),
		all:       make(map[*client]struct{}),
		clients:   make(map[*client]struct{}),

		allFiltered: make(map[*client]struct{}),
		perKey:      make(map[string]int),
	}
	h.ring.reset(h.seq)
	h.killCtx, h.kill = context.WithCancel(context.Background())
	if opts.Redis != nil {
		h.bus = newBus(opts)
		h.pubs = make(map[uint64]pubState)
	}
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
	counts []int  // estimated size of each group, then samples written
	nums   []int  // samples of each group
	want   []bool // a client wants the group's machine now
	group  []int  // group of each sample
}

// PublishSamples sends samples to the clients subscribed to their machines:
// one message per machine, in the order the machines first appear, each
// encoded once and shared by all its subscribers; a machine's samples keep
// their order. received is the server's ingest time, Unix ms. It never
// blocks on a client.
//
// A machine no client wants now is not encoded: the replay ring keeps a
// copy of its samples, encoded only if a client resuming wants them.
func (h *Hub) PublishSamples(samples []telemetry.Sample, received int64) {
	h.PublishTracedSamples(samples, received, "")
}

// PublishTracedSamples is PublishSamples for the samples of a traced
// batch: every message carries traceparent (a W3C traceparent, "" for
// none), which other replicas forward as it is.
func (h *Hub) PublishTracedSamples(samples []telemetry.Sample, received int64, traceparent string) {
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
				e.drafts = append(e.drafts, draft{machine: s.Machine, absorbed: true})
				e.counts = append(e.counts, 0)
				e.nums = append(e.nums, 0)
			}
			last = s.Machine
		}
		e.group[i] = g
		e.counts[g] += sampleSize(s)
		e.nums[g]++
	}
	e.want = slices.Grow(e.want[:0], len(e.drafts))[:len(e.drafts)]
	h.mu.Lock()
	if h.skipLocked(len(e.drafts)) {
		h.mu.Unlock()
		h.metrics.published.samples.Add(float64(len(e.drafts)))
		clear(e.index)
		clear(e.drafts)
		e.drafts, e.counts, e.nums = e.drafts[:0], e.counts[:0], e.nums[:0]
		h.encoders.Put(e)
		h.metrics.publishDuration.Observe(time.Since(start).Seconds())
		return
	}
	unwanted := 0
	for g := range e.drafts {
		if e.want[g] = h.wantedLocked(e.drafts[g].machine, false); !e.want[g] {
			unwanted += e.nums[g]
		}
	}
	if h.fleet != nil {
		h.fleet.mergeSamples(samples, received)
	}
	h.mu.Unlock()

	// The samples of the machines nobody wants, copied: one allocation.
	var kept []telemetry.Sample
	if unwanted > 0 {
		kept = make([]telemetry.Sample, 0, unwanted)
	}
	for g := range e.drafts {
		machine := e.drafts[g].machine
		if !e.want[g] {
			n := len(kept)
			kept = kept[:n+e.nums[g]]
			e.drafts[g] = draft{machine: machine, absorbed: true,
				lazy: &samplesBody{machine: machine, received: received, traceparent: traceparent, samples: kept[n : n : n+e.nums[g]]}}
			continue
		}
		d := newDraft(machine, len(machine)+64+len(traceparent)+e.counts[g])
		d.buf = samplesHeader(d.buf, d.machine, received, traceparent)
		d.absorbed, d.ingest, d.trace = true, received, traceID(traceparent)
		e.drafts[g] = d
		e.counts[g] = 0 // now: samples written
	}
	for i := range samples {
		g := e.group[i]
		if d := &e.drafts[g]; d.buf == nil {
			sb := d.lazy.(*samplesBody)
			sb.samples = append(sb.samples, samples[i])
			continue
		}
		e.drafts[g].buf = appendSample(e.drafts[g].buf, &samples[i], e.counts[g] == 0)
		e.counts[g]++
	}
	for g := range e.drafts {
		if e.drafts[g].buf != nil {
			e.drafts[g].buf = samplesTrailer(e.drafts[g].buf)
		}
	}

	e.msgs = h.publishDrafts(e.drafts, e.msgs)

	h.metrics.published.samples.Add(float64(len(e.drafts)))
	clear(e.index)
	clear(e.drafts)
	e.drafts, e.counts, e.nums = e.drafts[:0], e.counts[:0], e.nums[:0]
	h.encoders.Put(e)
	h.metrics.publishDuration.Observe(time.Since(start).Seconds())
}

// resumeHorizon is how long after the last client left the hub keeps
// what is published for a client that may come back and resume.
const resumeHorizon = time.Minute

// skipLocked, when no client could want a message now or resume to it
// later (none is connected, none left within resumeHorizon, and no other
// replica shares the stream), takes n seqs for messages it does not make
// at all, expires the cursors before them, and reports true: publishing
// to nobody costs next to nothing.
func (h *Hub) skipLocked(n int) bool {
	if h.bus != nil || len(h.clients) > 0 || h.left && h.now()-h.leftAt < int64(resumeHorizon) {
		return false
	}
	h.seq += uint64(n)
	h.ring.forget(h.seq)
	return true
}

// skip is skipLocked(1) under the lock: a seq jump expires the cursors
// before it, whatever its length.
func (h *Hub) skip() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.skipLocked(1)
}

// Skip reports whether nothing published now could reach a client: none
// is connected, none left within the resume horizon, and no other
// replica shares the stream. It then takes a seq as a publish to nobody
// does (the cursors before it expire), so the caller may skip making the
// message at all: a publish of windows or medians costs one lock then.
func (h *Hub) Skip() bool { return h.skip() }

// wantedLocked reports whether a client on this replica, or with Redis
// maybe on another, wants a message for machine now; passThrough says a
// conflated client takes it too (an alarm, a note).
func (h *Hub) wantedLocked(machine string, passThrough bool) bool {
	if h.bus != nil || len(h.all) > 0 || h.byMachine[machine] != nil {
		return true
	}
	if machine == "" {
		return len(h.allFiltered) > 0 || passThrough && len(h.conflated) > 0
	}
	for c := range h.allFiltered {
		if c.filter(machine) {
			return true
		}
	}
	if passThrough {
		for c := range h.conflated {
			if c.wants(machine) {
				return true
			}
		}
	}
	return false
}

// PublishAlarm sends an alarm change to the clients subscribed to its
// machine, as an AlarmMessage. Conflated streams get it as it is. It never
// blocks on a client.
func (h *Hub) PublishAlarm(a Alarm) { h.publishEvent(a.Machine, TypeAlarm, a) }

// PublishNote sends an operator's note to the clients subscribed to its
// machine, as a NoteMessage. Conflated streams get it as it is. It never
// blocks on a client.
func (h *Hub) PublishNote(n Note) { h.publishEvent(n.Machine, TypeNote, n) }

// PublishTwin sends a change of machine's twin documents to the clients
// subscribed to it, as a TwinMessage; data must encode as TwinData (the
// app passes control.Twin, or {"machine":…,"deleted":true}). Conflated
// streams get it as it is. It never blocks on a client.
func (h *Hub) PublishTwin(machine string, data any) { h.publishEvent(machine, TypeTwin, data) }

// PublishCommand sends a command's transition to the clients subscribed to
// its machine, as a CommandMessage; cmd encodes as a Command (the
// control package's Command does). Conflated streams get it as it is. It
// never blocks on a client.
func (h *Hub) PublishCommand(machine string, cmd json.Marshaler) {
	h.publishEvent(machine, TypeCommand, cmd)
}

// PublishState sends a change of one of a machine's state series to the
// clients subscribed to it, as a StateMessage. Conflated streams get it as
// it is. It never blocks on a client.
func (h *Hub) PublishState(machine string, d StateData) { h.publishEvent(machine, TypeState, d) }

// publishEvent sends a live update of type typ to the clients subscribed
// to machine, as {"seq":N,"type":typ,"machine":machine,"data":data}; data
// is encoded with encoding/json, only if a client wants it: it is for rare
// events (alarms, notes). data must not change once published; data that
// cannot be encoded is sent as null. An empty machine (fleet-wide news)
// reaches all-machines subscribers only, and the message has no
// "machine". Conflated streams get it as it is. It never blocks on a
// client.
func (h *Hub) publishEvent(machine string, typ MessageType, data any) {
	start := time.Now()
	h.mu.Lock()
	if h.skipLocked(1) {
		h.mu.Unlock()
		return
	}
	wanted := h.wantedLocked(machine, true)
	h.mu.Unlock()
	d := draft{machine: machine, lazy: &eventBody{machine: machine, typ: typ, data: data}}
	if wanted {
		b, err := json.Marshal(data)
		if err != nil {
			h.logger.Error("encoding stream event", "machine", machine, "type", typ, "err", err)
			return
		}
		d = eventDraft(machine, typ, b)
	}
	h.publishDrafts([]draft{d}, nil)
	h.metrics.published.events.Inc()
	h.metrics.publishDuration.Observe(time.Since(start).Seconds())
}

// PublishStatus sends a machine's status change,
// {"seq":N,"type":"status","machine":M,"data":{"status":S,"alarm":A,
// "lastSeen":T}} (no lastSeen when 0): status is its liveness ("online" or
// "offline"), alarm whether it has an active alarm other than the offline
// one. It records both in the fleet state of conflated streams. It never
// blocks on a client.
func (h *Hub) PublishStatus(machine, status string, alarm bool, lastSeen int64) {
	start := time.Now()
	h.publishBodies([]string{machine}, []lazyBody{&statusBody{machine: machine, status: status, alarm: alarm, lastSeen: lastSeen}},
		func(f *fleetState) {
			f.apply(fleetUpdate{Machine: machine, Status: status, Alarm: alarm, Seen: lastSeen})
		})
	h.metrics.published.events.Inc()
	h.metrics.publishDuration.Observe(time.Since(start).Seconds())
}

// PublishWindows sends windows, in one publish call, as one message per
// machine: {"seq":N,"type":"windows","machine":M,"windows":[{"metric":…,
// "start":…,"size":…,"kind":…,"count":…,"sum":…,"min":…,"max":…,"avg":…},…]},
// the machines in order of name, a machine's windows in the order given.
// It takes ws over (sorts it, keeps it until encoded). Conflated streams
// do not get windows. It never blocks on a client.
func (h *Hub) PublishWindows(ws []Window) {
	publishPerMachine(h, ws, func(w Window) string { return w.Machine }, func(ws []Window) lazyBody { return windowsBody(ws) })
}

// PublishMedians sends medians, in one publish call, as one message per
// machine: {"seq":N,"type":"median","machine":M,"data":{"metrics":
// {"temp":{"median":71.2,"t":…},…}}}, the machines in order of name. It
// takes ms over (sorts it, keeps it until encoded). Conflated streams do
// not get medians. It never blocks on a client.
func (h *Hub) PublishMedians(ms []Median) {
	publishPerMachine(h, ms, func(m Median) string { return m.Machine }, func(ms []Median) lazyBody { return mediansBody(ms) })
}

// publishPerMachine publishes xs as one message per machine, the body of
// each made by body from that machine's xs, in one publish call.
func publishPerMachine[T any](h *Hub, xs []T, machine func(T) string, body func([]T) lazyBody) {
	if len(xs) == 0 {
		return
	}
	start := time.Now()
	if h.skip() {
		return
	}
	slices.SortStableFunc(xs, func(a, b T) int { return strings.Compare(machine(a), machine(b)) })
	var machines []string
	var bodies []lazyBody
	for i := 0; i < len(xs); {
		j := i + 1
		for j < len(xs) && machine(xs[j]) == machine(xs[i]) {
			j++
		}
		machines = append(machines, machine(xs[i]))
		bodies = append(bodies, body(xs[i:j:j]))
		i = j
	}
	h.publishBodies(machines, bodies, nil)
	h.metrics.published.events.Add(float64(len(bodies)))
	h.metrics.publishDuration.Observe(time.Since(start).Seconds())
}

// publishBodies publishes one message per body, for machines[i], in one
// publish call; conflated streams do not take them (absorbed). A body is
// encoded now if a client wants its machine, else on demand. merge, if not
// nil, updates the fleet state of conflated streams, if any.
func (h *Hub) publishBodies(machines []string, bodies []lazyBody, merge func(*fleetState)) {
	h.mu.Lock()
	if h.skipLocked(len(bodies)) {
		h.mu.Unlock()
		return
	}
	drafts := make([]draft, len(bodies))
	for i := range bodies {
		drafts[i] = draft{machine: machines[i], lazy: bodies[i], absorbed: true}
		if h.wantedLocked(machines[i], false) {
			drafts[i].buf = []byte{} // encoded below, outside the lock
		}
	}
	if merge != nil && h.fleet != nil {
		merge(h.fleet)
	}
	h.mu.Unlock()
	for i := range drafts {
		if drafts[i].buf != nil {
			drafts[i].buf = nil
			drafts[i].encode()
		}
	}
	h.publishDrafts(drafts, nil)
}

// publishDrafts publishes the drafts of one publish call: through Redis
// when the hub has a live bus (every replica, this one included, delivers
// them when they come back), else to this replica's clients at once, with
// the next seqs. scratch is reused for the messages and returned.
func (h *Hub) publishDrafts(drafts []draft, scratch []*message) []*message {
	if h.bus != nil && h.bus.up.Load() {
		for i := range drafts {
			drafts[i].encode()
		}
		no := h.bus.next.Add(1)
		h.mu.Lock()
		h.pubs[no] = pubPending
		floor := h.seq
		h.mu.Unlock()
		err := h.bus.publish(context.Background(), no, drafts, floor)
		if !h.answered(no, err) {
			return scratch
		}
		h.metrics.busErrors.Inc()
		h.logger.Warn("publishing through redis; delivering locally", "err", err)
	}
	slab := make([]message, len(drafts)) // one allocation for the call's messages
	h.mu.Lock()
	msgs := scratch[:0]
	for i, d := range drafts {
		h.seq++
		msgs = append(msgs, d.finish(h.seq, &slab[i]))
	}
	if h.bus != nil {
		h.metrics.busLocal.Add(float64(len(msgs)))
	}
	h.publishLocked(msgs)
	h.advancedLocked()
	h.mu.Unlock()
	clear(msgs)
	return msgs
}

// answered records the answer to publish call no through Redis and
// reports whether the call must be delivered locally: it failed, and has
// not come back from the channel (it will be skipped if it does).
func (h *Hub) answered(no uint64, err error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch st := h.pubs[no]; {
	case st == pubBack:
		delete(h.pubs, no) // delivered from the channel already
		return false
	case err == nil:
		h.pubs[no] = pubDone
		return false
	default:
		h.pubs[no] = pubFailed
		return true
	}
}

// publishLocked keeps msgs, the messages of one publish call with their
// seqs assigned, in the ring and enqueues them for their subscribers; then
// it wakes each subscriber's handler once.
func (h *Hub) publishLocked(msgs []*message) {
	h.mark++
	now := h.now()
	for _, m := range msgs {
		m.at = now
		h.ring.put(m)
		if m.machine == "" {
			continue
		}
		for c := range h.byMachine[m.machine] {
			m.ensure() // published lazily as a client joined: rare
			h.offerLocked(c, now, msgs[:0], m)
		}
	}
	if len(h.all) > 0 {
		for _, m := range msgs {
			m.ensure()
		}
	}
	// An all-machines subscriber takes the whole call at once: one lock
	// and one look at its queue, not one per message.
	for c := range h.all {
		h.offerLocked(c, now, msgs, nil)
	}
	// A filtered one takes its share of the call, also at once; a
	// conflated one the messages that pass through conflation.
	for _, set := range []map[*client]struct{}{h.allFiltered, h.conflated} {
		for c := range set {
			h.filtered = h.filtered[:0]
			for _, m := range msgs {
				if (c.conflate == 0 || !m.absorbed) && c.wants(m.machine) {
					m.ensure()
					h.filtered = append(h.filtered, m)
				}
			}
			h.offerLocked(c, now, h.filtered, nil)
		}
	}
	clear(h.filtered)
	for _, c := range h.touched {
		c.queue.signal()
	}
	clear(h.touched)
	h.touched = h.touched[:0]
}

// now is the clock of the client queues: the time since the hub was made.
func (h *Hub) now() int64 { return int64(time.Since(h.epoch)) }

// offerLocked enqueues msgs, then m if not nil, for c, or cuts c off if its
// queue has no room for them, or if it is too far behind already.
func (h *Hub) offerLocked(c *client, now int64, msgs []*message, m *message) {
	if why := c.queue.push(now, msgs, m); why != pushed {
		c.why = why
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
	if reason == reasonSlowClient {
		// What it has not taken is lost to it: free it now, and make a
		// write in flight give up so that the final notice goes out.
		c.queue.discard()
		if c.interrupt != nil {
			c.interrupt()
		}
	}
	c.queue.signal()
	h.metrics.dropped.WithLabelValues(reason).Inc()
}

// setInterrupt sets the function that aborts a write in flight to c.
func (h *Hub) setInterrupt(c *client, f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.interrupt = f
}

func (h *Hub) unsubscribeLocked(c *client) {
	if c.conflate > 0 {
		delete(h.conflated, c)
		if c.flusher != nil {
			c.flusher.Stop()
		}
		if g := h.groups[c.conflate]; g != nil && c.filter == nil {
			delete(g.clients, c)
			if len(g.clients) == 0 {
				g.timer.Stop()
				delete(h.groups, c.conflate)
			}
		}
		if len(h.conflated) == 0 {
			h.fleet = nil // the next conflated client starts afresh
			h.conflating.Store(false)
		}
		return
	}
	if c.all {
		delete(h.all, c)
		delete(h.allFiltered, c)
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
	if c.key != "" && h.opts.MaxPerClient > 0 && h.perKey[c.key] >= h.opts.MaxPerClient {
		return registration{}, errTooManyForClient
	}
	reg := registration{latest: h.seq, cursor: h.seq}
	hello := helloMessage(h.seq, h.opts, c.conflate)
	switch {
	case c.conflate > 0 && hasCursor:
		// No resume: the client reloads the machine list.
		reg.first = []*message{hello, resetMessage(h.seq, reasonConflated)}
	case !hasCursor:
		reg.first = []*message{hello}
	case cursor > h.seq:
		reg.first = []*message{hello, resetMessage(h.seq, reasonCursorUnknown)}
	case cursor+1 < h.ring.oldest(h.seq):
		reg.first = []*message{hello, resetMessage(h.seq, reasonCursorExpired)}
	default:
		reg.first = h.ring.since(cursor, h.seq, 1)
		reg.first[0] = hello
		for _, m := range reg.first[1:] {
			if m.frame == nil && c.wants(m.machine) {
				m.ensure()
			}
		}
		reg.replay = 1
		reg.cursor = cursor
	}
	if reg.replay == 0 {
		reg.replay = len(reg.first) // nothing to replay
	}
	h.clients[c] = struct{}{}
	if c.key != "" {
		h.perKey[c.key]++
	}
	switch {
	case c.conflate > 0:
		h.conflated[c] = struct{}{}
		if h.fleet == nil {
			h.fleet = newFleetState()
			h.conflating.Store(true)
		}
		c.flushed = h.fleet.v
		if c.filter != nil {
			c.flusher = time.AfterFunc(c.conflate, func() { h.flush(c) })
			break
		}
		g := h.groups[c.conflate]
		if g == nil {
			g = &fleetGroup{interval: c.conflate, clients: map[*client]struct{}{}, flushed: h.fleet.v}
			g.timer = time.AfterFunc(c.conflate, func() { h.flushGroup(g) })
			if h.groups == nil {
				h.groups = map[time.Duration]*fleetGroup{}
			}
			h.groups[c.conflate] = g
		}
		g.clients[c] = struct{}{}
	case c.all && c.filter != nil:
		h.allFiltered[c] = struct{}{}
	case c.all:
		h.all[c] = struct{}{}
	default:
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
		h.left, h.leftAt = true, h.now()
		if c.key != "" {
			if h.perKey[c.key]--; h.perKey[c.key] == 0 {
				delete(h.perKey, c.key)
			}
		}
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

// Run sends heartbeats, and with Redis keeps the hub subscribed to the
// other replicas' messages, until ctx ends, then returns nil.
func (h *Hub) Run(ctx context.Context) error {
	if h.bus != nil {
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.runBus(ctx)
		}()
		defer func() { <-done }()
	}
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

// heartbeat enqueues one shared heartbeat for every client, cutting off
// those too far behind (a stalled client with no new messages is noticed
// here). It is enqueued under the lock after every message up to its seq,
// which makes its seq a valid cursor.
func (h *Hub) heartbeat(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := heartbeatMessage(h.seq, now.UnixMilli())
	clock := h.now()
	for c := range h.clients {
		if c.reason != "" {
			continue
		}
		if why := c.queue.push(clock, nil, m); why != pushed {
			c.why = why
			h.cutLocked(c, reasonSlowClient)
			continue
		}
		c.queue.signal()
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

// ring keeps the most recent messages, in seq order. Their seqs increase
// but may jump (with Redis, the global sequence skips the seqs a replica
// reserved while it was cut off): a jump holds no message, so a cursor in
// it is served like any other.
type ring struct {
	buf  []*message
	head int // index of the oldest message
	n    int // messages held, ≤ len(buf)
	// bytes is the size of the messages held, ≤ maxBytes unless one
	// message is larger.
	bytes, maxBytes int
	// floor, when set, is the seq of the last message evicted or forgotten:
	// a cursor below it can no longer be served.
	floor    uint64
	hasFloor bool
}

func newRing(size, maxBytes int) ring {
	return ring{buf: make([]*message, size), maxBytes: maxBytes}
}

// put adds m, evicting the oldest messages while the ring is full, by
// count or by bytes.
func (r *ring) put(m *message) {
	for r.n > 0 && (r.n == len(r.buf) || r.maxBytes > 0 && r.bytes+m.size > r.maxBytes) {
		r.evict()
	}
	if len(r.buf) == 0 {
		r.floor, r.hasFloor = m.seq, true
		return
	}
	r.buf[r.at(r.n)] = m
	r.n++
	r.bytes += m.size
}

// evict forgets the oldest message.
func (r *ring) evict() {
	old := r.buf[r.head]
	r.floor, r.hasFloor = old.seq, true
	r.bytes -= old.size
	r.buf[r.head] = nil
	if r.head++; r.head == len(r.buf) {
		r.head = 0
	}
	r.n--
}

func (r *ring) at(i int) int {
	i += r.head
	if i >= len(r.buf) {
		i -= len(r.buf)
	}
	return i
}

// forget expires every cursor before floor, the latest seq: the messages
// up to it are not held.
func (r *ring) forget(floor uint64) {
	if r.n > 0 {
		r.reset(floor)
		return
	}
	r.floor, r.hasFloor = floor, true
}

// reset forgets every message held; floor is the latest seq then.
func (r *ring) reset(floor uint64) {
	clear(r.buf)
	r.head, r.n, r.bytes = 0, 0, 0
	r.floor, r.hasFloor = floor, true
}

// oldest returns the oldest seq a cursor may be one below: the cursors
// from oldest-1 on can be served. latest is the hub's latest seq.
func (r *ring) oldest(latest uint64) uint64 {
	switch {
	case r.hasFloor:
		return r.floor + 1
	case r.n == 0:
		return latest + 1
	}
	return r.buf[r.head].seq
}

// since returns the messages held with seq in (cursor, latest], in order,
// in a new slice with room for extra more in front. cursor must not be
// older than oldest-1.
func (r *ring) since(cursor, latest uint64, extra int) []*message {
	// The first message after cursor, by binary search.
	lo, hi := 0, r.n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r.buf[r.at(m)].seq <= cursor {
			lo = m + 1
		} else {
			hi = m
		}
	}
	dst := make([]*message, extra, extra+r.n-lo)
	for i := lo; i < r.n; i++ {
		if m := r.buf[r.at(i)]; m.seq <= latest {
			dst = append(dst, m)
		}
	}
	return dst
}
