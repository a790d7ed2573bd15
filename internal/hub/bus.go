package hub

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/valyala/fastjson"
)

// Defaults of the Redis fan-out.
const (
	defaultRedisTimeout = 500 * time.Millisecond
	defaultResumeWait   = 2 * time.Second
	// pingEvery is how long the subscriber waits for a message before it
	// pings Redis; a ping left unanswered that long means the connection
	// is dead.
	pingEvery = 2 * time.Second
)

// maxFailedPubs bounds the failed publish calls remembered.
const maxFailedPubs = 1024

// reasonFanoutGap is the reason of the reset sent to every client when
// messages of other replicas were lost.
const reasonFanoutGap = "fanout_gap"

// ErrFanoutDown is reported by Ready while the hub delivers its own
// replica's messages only, because its Redis subscription is down.
var ErrFanoutDown = errors.New("cross-replica fan-out down: delivering this replica's messages only")

// bus is the cross-replica fan-out through Redis Pub/Sub.
//
// Every replica publishes each publish call, once, with publishScript: one
// round trip that takes the call's seqs from a global counter and
// publishes the call's messages on one channel, prefixed with the counter
// before the call and the first seq. Every replica, the publisher
// included, delivers what arrives on the channel to its own clients, in
// seq order: the seqs, and so the cursors, mean the same on every replica.
// A replica delivers its own call once: when it comes back, or locally if
// the call failed (see pubState); it drops a seq it has passed.
//
// A replica that joins lifts the counter to its own latest seq (the
// script announces the jump), so that everything after is newer than what
// it has delivered; the replay rings skip the jump. A message whose prior
// counter is past the last global seq a replica saw means messages were
// lost (its subscription was down): the replica resets its ring and sends
// its clients a reset.
//
// While the subscription is down, the hub publishes locally, with its own
// seqs, and when it rejoins it tells its clients (a reset) that messages of
// other replicas may have been lost.
type bus struct {
	rdb     redis.UniversalClient
	sharded bool
	timeout time.Duration
	seqKey  string
	channel string
	script  *redis.Script
	// up says the subscription is live: publishes go through Redis.
	up atomic.Bool
	// ps is the live subscription, closed by a publisher that fails so
	// that the subscriber reconnects at once.
	ps atomic.Pointer[redis.PubSub]
	// id tells this replica's publish calls from others'; next numbers
	// them.
	id   uint64
	next atomic.Uint64
	// parser parses the messages that arrive (deliver, on the subscriber's
	// goroutine only).
	parser fastjson.Parser
}

// pubState is where one of this replica's publish calls stands, between
// the script's answer and the message coming back on the channel. A call
// whose answer is lost (a timeout) may still have run in Redis: the
// replica then delivers it locally, and must not deliver it again if it
// comes back; or it has come back already, and must not be delivered
// locally.
type pubState uint8

const (
	pubPending pubState = iota // sent, no answer, not back
	pubBack                    // back from the channel (delivered), no answer yet
	pubDone                    // answered, not back yet
	pubFailed                  // failed and delivered locally: skip it if it comes back
)

// publishScript takes ARGV[1] seqs from the counter KEYS[1], never below
// ARGV[2] (the caller's latest seq), and publishes ARGV[3] prefixed with
// "<counter before> <first seq> " on channel KEYS[2] with command ARGV[4]
// (PUBLISH or SPUBLISH); with no seqs taken it publishes only if it lifted
// the counter, to announce the jump. It returns the counter before and the
// first seq. The channel is passed as a key so that on a cluster the two
// share a slot.
const publishScript = `
local n = tonumber(ARGV[1])
local floor = tonumber(ARGV[2])
local prev = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = prev
if base < floor then base = floor end
if n > 0 or base > prev then
  redis.call('SET', KEYS[1], string.format('%d', base + n))
  redis.call(ARGV[4], KEYS[2], string.format('%d %d ', prev, base + 1) .. ARGV[3])
end
return {prev, base + 1}
`

func newBus(opts Options) *bus {
	timeout := opts.RedisTimeout
	if timeout <= 0 {
		timeout = defaultRedisTimeout
	}
	// The hash tag keeps the counter and the channel in one cluster slot.
	return &bus{
		rdb:     opts.Redis,
		sharded: opts.RedisSharded,
		timeout: timeout,
		seqKey:  opts.RedisPrefix + "hub:{live}:seq",
		channel: opts.RedisPrefix + "hub:{live}",
		script:  redis.NewScript(publishScript),
		id:      rand.Uint64() | 1, // never 0, the origin of a jump
	}
}

// encodeDrafts packs the publish call no of replica origin: uvarint
// origin and no, then each draft as uvarint length and machine, uvarint
// length and body (the JSON after `{"seq":N,`).
func encodeDrafts(origin, no uint64, drafts []draft) string {
	n := 2 * binary.MaxVarintLen64
	for _, d := range drafts {
		n += 2*binary.MaxVarintLen32 + len(d.machine) + len(d.buf) - headroom
	}
	b := make([]byte, 0, n)
	b = binary.AppendUvarint(b, origin)
	b = binary.AppendUvarint(b, no)
	for _, d := range drafts {
		body := d.buf[headroom : len(d.buf)-2] // without "\n\n"
		b = binary.AppendUvarint(b, uint64(len(d.machine)))
		b = append(b, d.machine...)
		b = binary.AppendUvarint(b, uint64(len(body)))
		b = append(b, body...)
	}
	return string(b)
}

// published is a decoded channel message: the counter before it, its
// first seq, and the publish call it carries (none for the announcement
// of a jump).
type published struct {
	prev, first uint64
	origin, no  uint64
	drafts      []draft
}

// decodeDrafts parses a channel message.
func decodeDrafts(payload string) (p published, err error) {
	num := func() (uint64, error) {
		sp := strings.IndexByte(payload, ' ')
		if sp < 0 {
			return 0, errors.New("decoding fan-out message: no seq")
		}
		n, err := strconv.ParseUint(payload[:sp], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("decoding fan-out message seq: %w", err)
		}
		payload = payload[sp+1:]
		return n, nil
	}
	if p.prev, err = num(); err != nil {
		return published{}, err
	}
	if p.first, err = num(); err != nil {
		return published{}, err
	}
	if p.first <= p.prev {
		return published{}, fmt.Errorf("decoding fan-out message: first seq %d not after %d", p.first, p.prev)
	}
	if payload == "" {
		return p, nil // a jump
	}
	b := []byte(payload)
	for _, v := range []*uint64{&p.origin, &p.no} {
		n, k := binary.Uvarint(b)
		if k <= 0 {
			return published{}, errors.New("decoding fan-out message: truncated")
		}
		*v, b = n, b[k:]
	}
	for len(b) > 0 {
		var machine, body []byte
		if machine, b, err = field(b); err != nil {
			return published{}, err
		}
		if body, b, err = field(b); err != nil {
			return published{}, err
		}
		d := newDraft(string(machine), len(body)+2)
		d.buf = append(d.buf, body...)
		d.buf = append(d.buf, "\n\n"...)
		p.drafts = append(p.drafts, d)
	}
	if len(p.drafts) == 0 {
		return published{}, errors.New("decoding fan-out message: no messages")
	}
	return p, nil
}

func field(b []byte) (v, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, errors.New("decoding fan-out message: truncated")
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}

// publish publishes drafts, publish call no, through Redis; floor is the
// hub's latest seq. On failure it takes the bus down, until the subscriber
// has reconnected.
func (b *bus) publish(ctx context.Context, no uint64, drafts []draft, floor uint64) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	_, _, err := b.call(ctx, len(drafts), floor, encodeDrafts(b.id, no, drafts))
	if err != nil && b.up.CompareAndSwap(true, false) {
		if ps := b.ps.Load(); ps != nil {
			ps.Close()
		}
	}
	return err
}

// call runs publishScript and returns the counter before and the first
// seq taken.
func (b *bus) call(ctx context.Context, n int, floor uint64, payload string) (prev, first uint64, err error) {
	cmd := "PUBLISH"
	if b.sharded {
		cmd = "SPUBLISH"
	}
	res, err := b.script.Run(ctx, b.rdb, []string{b.seqKey, b.channel}, n, floor, payload, cmd).Int64Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("publishing to redis: %w", err)
	}
	if len(res) != 2 || res[0] < 0 || res[1] < 1 {
		return 0, 0, fmt.Errorf("publishing to redis: unexpected answer %v", res)
	}
	return uint64(res[0]), uint64(res[1]), nil
}

func (b *bus) subscribe(ctx context.Context) *redis.PubSub {
	if b.sharded {
		return b.rdb.SSubscribe(ctx, b.channel)
	}
	return b.rdb.Subscribe(ctx, b.channel)
}

// runBus keeps the hub subscribed to the channel until ctx ends,
// resubscribing after any failure with a capped backoff.
func (h *Hub) runBus(ctx context.Context) {
	b := h.bus
	backoff := 50 * time.Millisecond
	down := false
	for ctx.Err() == nil {
		connected, err := h.busSession(ctx)
		b.up.Store(false)
		h.metrics.busUp.Set(0)
		if ctx.Err() != nil {
			return
		}
		if connected {
			backoff = 50 * time.Millisecond
		}
		if !down || connected {
			h.logger.Warn("cross-replica fan-out down; delivering local messages only", "err", err)
			down = true
		}
		h.metrics.busErrors.Inc()
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// busSession subscribes and delivers until the subscription fails; it
// reports whether it got connected.
func (h *Hub) busSession(ctx context.Context) (bool, error) {
	b := h.bus
	ps := b.subscribe(ctx)
	defer ps.Close()
	b.ps.Store(ps)
	defer b.ps.Store(nil)
	// A blocked receive does not watch ctx: closing ps ends it.
	defer context.AfterFunc(ctx, func() { ps.Close() })()
	if _, err := ps.ReceiveTimeout(ctx, b.timeout); err != nil {
		return false, fmt.Errorf("subscribing to redis: %w", err)
	}
	// Lift the global sequence above this replica's, so that the messages
	// to come are newer than any it has delivered.
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	_, first, err := b.call(cctx, 0, h.joinFloor(), "")
	cancel()
	if err != nil {
		return false, err
	}
	h.joined(first - 1)
	b.up.Store(true)
	h.metrics.busUp.Set(1)
	h.logger.Info("cross-replica fan-out connected", "channel", b.channel, "sharded", b.sharded)
	pinged := false
	for {
		m, err := ps.ReceiveTimeout(ctx, pingEvery)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !pinged && ctx.Err() == nil {
				if err := ps.Ping(ctx); err != nil {
					return true, fmt.Errorf("pinging redis: %w", err)
				}
				pinged = true
				continue
			}
			return true, fmt.Errorf("receiving from redis: %w", err)
		}
		pinged = false
		if msg, ok := m.(*redis.Message); ok {
			h.deliver(msg.Payload)
		}
	}
}

// deliver hands a message from the channel to this replica's clients.
func (h *Hub) deliver(payload string) {
	p, err := decodeDrafts(payload)
	if err != nil {
		h.metrics.busErrors.Inc()
		h.logger.Error("dropping fan-out message", "err", err)
		return
	}
	prev, first, drafts := p.prev, p.first, p.drafts
	// Each message's type says whether conflated streams take it as it is;
	// another replica's samples and status also feed their fleet state,
	// and its samples, medians and alarms the OnRemote* callbacks.
	var remote []fleetUpdate
	for i := range drafts {
		remote = h.decodeRemote(&drafts[i], p.origin != h.bus.id, remote)
	}
	last := first + uint64(len(drafts)) - 1 // first-1 for a jump
	slab := make([]message, len(drafts))
	msgs := make([]*message, 0, len(drafts))
	h.mu.Lock()
	defer h.mu.Unlock()
	if prev > h.global {
		// Seqs in (h.global, prev] were taken by messages this replica
		// never got.
		h.lostLocked()
	}
	h.global = max(h.global, last)
	if h.fleet != nil {
		h.fleet.merge(remote)
	}
	if p.origin == h.bus.id {
		switch st, ok := h.pubs[p.no]; {
		case !ok:
		case st == pubPending:
			h.pubs[p.no] = pubBack
		case st == pubFailed:
			// Delivered locally when its publish failed.
			delete(h.pubs, p.no)
			h.metrics.busStale.Add(float64(len(drafts)))
			return
		default:
			delete(h.pubs, p.no)
		}
	}
	for i, d := range drafts {
		seq := first + uint64(i)
		if seq <= h.seq {
			// Passed already: published before this replica joined.
			h.metrics.busStale.Inc()
			continue
		}
		msgs = append(msgs, d.finish(seq, &slab[i]))
	}
	if len(msgs) == 0 {
		return
	}
	h.seq = last
	h.publishLocked(msgs)
	h.advancedLocked()
}

// joinFloor is the seq the global counter must reach when the hub
// (re)joins: past its latest seq; on a rejoin one more, the seq of the
// reset its clients get, below which every cursor is expired.
func (h *Hub) joinFloor() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.connected {
		return h.seq + 1
	}
	return h.seq
}

// joined records that the hub's subscription is (re)established and that
// the global counter stands at cur.
func (h *Hub) joined(cur uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq = max(h.seq, cur)
	h.global = max(h.global, cur)
	for no, st := range h.pubs {
		// Answered but never back: lost with the old subscription.
		if st == pubDone || len(h.pubs) > maxFailedPubs {
			delete(h.pubs, no)
		}
	}
	if h.connected {
		// Back from an outage: other replicas' messages may have been
		// lost, published locally by them or missed by this one.
		h.lostLocked()
	}
	h.connected = true
	h.advancedLocked()
}

// lostLocked handles lost messages: it forgets the replay ring (a cursor
// from before is expired) and sends every client a reset, so that it
// reloads what it shows.
func (h *Hub) lostLocked() {
	h.ring.reset(h.seq)
	h.metrics.busGaps.Inc()
	m := resetMessage(h.seq, reasonFanoutGap)
	h.mark++
	now := h.now()
	for c := range h.clients {
		if c.reason == "" {
			h.offerLocked(c, now, nil, m)
		}
	}
	for _, c := range h.touched {
		c.queue.signal()
	}
	clear(h.touched)
	h.touched = h.touched[:0]
}

// latest returns the hub's latest seq.
func (h *Hub) latest() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

// advancedLocked wakes the waiters of waitSeq.
func (h *Hub) advancedLocked() {
	if h.advanced != nil {
		close(h.advanced)
		h.advanced = nil
	}
}

// waitSeq waits until the hub's latest seq is at least seq, at most for d:
// a client resuming on this replica with a cursor from another may be a
// little ahead of it.
func (h *Hub) waitSeq(ctx context.Context, seq uint64, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		h.mu.Lock()
		if h.seq >= seq {
			h.mu.Unlock()
			return
		}
		if h.advanced == nil {
			h.advanced = make(chan struct{})
		}
		ch := h.advanced
		h.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// Ready reports nil when the hub fans out across replicas (or has no
// Redis), else ErrFanoutDown: the hub still serves its own replica's
// messages.
func (h *Hub) Ready() error {
	if h.bus == nil || h.bus.up.Load() {
		return nil
	}
	return ErrFanoutDown
}
