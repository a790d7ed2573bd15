package hub

import "sync"

// queue is a client's bounded queue of messages. The publisher pushes
// every message of one publish call, then wakes the client's handler once
// (not once per message: with a channel per client, each message sent to
// a waiting handler costs a goroutine wake-up). The handler pops in bursts.
// The ring is allocated by the first push, starts small and grows as
// needed, so that an idle client costs a few hundred bytes.
//
// The bound counts pushes, not messages: a client may fall at most limit
// publish calls behind, whatever the number of machines in each (an
// all-machines client receives every machine of a call in one push; a
// machine client one message). maxMessagesPerPush × limit messages bound
// the memory a slow client can pin.
type queue struct {
	mu    sync.Mutex
	buf   []slot // ring
	head  int
	n     int
	limit int // pushes
	// pushes counts the pushes with a message still queued.
	pushes int
	// wake holds a token when the handler should look at the queue; for a
	// queue without run (below the transport, in tests).
	wake chan struct{}
	// run, when set, is started in a new goroutine by signal unless it is
	// running (running); again says it was signalled while running.
	run     func()
	running bool
	again   bool
}

// slot is one queued message; last marks the last message of a push.
type slot struct {
	m    *message
	last bool
}

// initialQueue is the ring size a queue starts with.
const initialQueue = 16

// maxMessagesPerPush scales limit into the cap on queued messages.
const maxMessagesPerPush = 64

// newQueue returns an empty queue; its ring is allocated by the first
// push.
func newQueue(limit int) queue {
	return queue{limit: limit, wake: make(chan struct{}, 1)}
}

// push adds msgs, then m if not nil, as one push, or reports false if the
// queue has no room for it (and then adds none).
func (q *queue) push(msgs []*message, m *message) bool {
	n := len(msgs)
	if m != nil {
		n++
	}
	if n == 0 {
		return true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pushes+1 > q.limit || q.n+n > q.limit*maxMessagesPerPush {
		return false
	}
	if q.n+n > len(q.buf) {
		q.grow(q.n + n)
	}
	for _, m := range msgs {
		q.put(m)
	}
	if m != nil {
		q.put(m)
	}
	q.buf[q.index(q.n-1)].last = true
	q.pushes++
	return true
}

func (q *queue) index(i int) int {
	i += q.head
	if i >= len(q.buf) {
		i -= len(q.buf)
	}
	return i
}

func (q *queue) put(m *message) {
	q.buf[q.index(q.n)] = slot{m: m}
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
		if sl.last {
			q.pushes--
		}
		q.buf[q.head] = slot{}
		q.head++
		if q.head == len(q.buf) {
			q.head = 0
		}
		q.n--
	}
	return dst
}
