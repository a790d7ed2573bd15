package hub

import "sync"

// queue is a client's bounded queue of messages. The publisher pushes
// every message of one publish call, then wakes the client's handler once
// (not once per message: with a channel per client, each message sent to
// a waiting handler costs a goroutine wake-up). The handler pops in bursts.
// The ring is allocated by the first push, starts small and grows as
// needed, so that an idle client costs a few hundred bytes.
//
// The bound is what the client is really behind by, not a count of
// publishes: the bytes queued (limits.bytes), the age of the oldest queued
// message (limits.lag: how far behind the head the client is), and, as a
// safety cap far above realistic use, the messages queued
// (limits.messages). A push that would pass a bound is refused: the hub
// then cuts the client off.
type queue struct {
	mu     sync.Mutex
	buf    []slot // ring
	head   int
	n      int
	bytes  int // sizes of the queued messages
	limits queueLimits
	// wake holds a token when the handler should look at the queue; for a
	// queue without run (below the transport, in tests).
	wake chan struct{}
	// run, when set, is started in a new goroutine by signal unless it is
	// running (running); again says it was signalled while running.
	run     func()
	running bool
	again   bool
}

// queueLimits bound a client's queue; a zero field is no bound.
type queueLimits struct {
	messages int
	bytes    int
	// lag bounds the age of the oldest queued message, in the clock of
	// push (nanoseconds).
	lag int64
}

// slot is one queued message and when it was queued.
type slot struct {
	m  *message
	at int64
}

// initialQueue is the ring size a queue starts with.
const initialQueue = 16

// newQueue returns an empty queue; its ring is allocated by the first
// push.
func newQueue(limits queueLimits) queue {
	return queue{limits: limits, wake: make(chan struct{}, 1)}
}

// Why a push is refused.
type refusal uint8

const (
	pushed  refusal = iota
	tooMany         // the message cap
	tooBig          // the byte bound
	tooLate         // the lag bound
)

func (r refusal) String() string {
	switch r {
	case tooMany:
		return "messages"
	case tooBig:
		return "bytes"
	case tooLate:
		return "lag"
	}
	return "none"
}

// push adds msgs, then m if not nil, queued at now (nanoseconds, any
// monotonic clock), or reports why it has no room for them (and then adds
// none). A push of nothing checks the lag bound only.
func (q *queue) push(now int64, msgs []*message, m *message) refusal {
	n, size := len(msgs), 0
	for _, x := range msgs {
		size += x.size
	}
	if m != nil {
		n++
		size += m.size
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if l := q.limits; l.lag > 0 && q.n > 0 && now-q.buf[q.head].at > l.lag {
		return tooLate
	}
	if n == 0 {
		return pushed
	}
	switch l := q.limits; {
	case l.messages > 0 && q.n+n > l.messages:
		return tooMany
	case l.bytes > 0 && q.n > 0 && q.bytes+size > l.bytes:
		// An empty queue takes one push whatever its size: a client is cut
		// off for falling behind, not for one large publish.
		return tooBig
	}
	if q.n+n > len(q.buf) {
		q.grow(q.n + n)
	}
	for _, x := range msgs {
		q.put(x, now)
	}
	if m != nil {
		q.put(m, now)
	}
	q.bytes += size
	return pushed
}

func (q *queue) index(i int) int {
	i += q.head
	if i >= len(q.buf) {
		i -= len(q.buf)
	}
	return i
}

func (q *queue) put(m *message, now int64) {
	q.buf[q.index(q.n)] = slot{m: m, at: now}
	q.n++
}

// grow makes room for at least n messages.
func (q *queue) grow(n int) {
	size := max(len(q.buf), initialQueue)
	for size < n {
		size *= 2
	}
	buf := make([]slot, size)
	k := copy(buf, q.buf[q.head:min(q.head+q.n, len(q.buf))])
	copy(buf[k:], q.buf[:q.n-k])
	q.buf, q.head = buf, 0
}

// setRun makes signal start run.
func (q *queue) setRun(run func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.run = run
}

// signal wakes the handler, without blocking: it starts run in a new
// goroutine unless it is running already (then run goes on once more).
func (q *queue) signal() {
	q.mu.Lock()
	run := q.run
	if run == nil {
		q.mu.Unlock()
		select {
		case q.wake <- struct{}{}:
		default:
		}
		return
	}
	if q.running {
		q.again = true
		q.mu.Unlock()
		return
	}
	q.running = true
	q.mu.Unlock()
	go run()
}

// idle is called by run when it has nothing left to do: it reports true,
// and run must return, unless signal was called since run last called it.
func (q *queue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.again {
		q.again = false
		return false
	}
	q.running = false
	return true
}

// len returns the number of queued messages.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// pop appends to dst the oldest messages, up to upTo in all, and removes
// them from the queue.
func (q *queue) pop(dst []*message, upTo int) []*message {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n > 0 && len(dst) < upTo {
		sl := q.buf[q.head]
		dst = append(dst, sl.m)
		q.bytes -= sl.m.size
		q.buf[q.head] = slot{}
		q.head++
		if q.head == len(q.buf) {
			q.head = 0
		}
		q.n--
	}
	return dst
}

// discard empties the queue (the client is cut off) and releases its ring.
func (q *queue) discard() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.buf, q.head, q.n, q.bytes = nil, 0, 0, 0
}
