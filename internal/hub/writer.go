package hub

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// writer writes one client's stream: the first messages (hello, a reset,
// the replay), then what its queue receives, until the client goes away or
// is cut off. It has no goroutine of its own: the client's queue starts
// one (loop) when there is something to do — messages queued, the client
// cut off, its peer gone, a write interval passed — and the goroutine ends
// when the queue is empty. An idle client costs no writer goroutine.
//
// Only one loop runs at a time (the queue's running flag), so the fields
// below need no lock.
type writer struct {
	h      *Hub
	c      *client
	s      stream
	sent   prometheus.Counter
	remote string
	// first are the messages to write before the queue.
	first []*message
	// cursor is what a reconnect may resume from: every message up to it
	// that c wants has been written. latest is the hub's seq when c
	// registered: once first is written, the cursor is at least latest.
	cursor, latest uint64
	lastWrite      time.Time
	pace           *time.Timer // pending when paceAt is not zero
	paceAt         time.Time
	// hooks are stopped, and closeConn called, when the stream ends.
	hooks     []func() bool
	closeConn func()
	// finished, if not nil, is closed when the stream has ended.
	finished chan struct{}
}

// start makes the client's queue run w and runs it once, to write the
// first messages. closeConn, if not nil, closes the connection at the end.
func (w *writer) start(s stream, closeConn func()) {
	w.s, w.closeConn = s, closeConn
	w.c.queue.setRun(w.loop)
	w.c.queue.signal()
}

// loop runs passes until the stream ends or there is nothing left to do.
func (w *writer) loop() {
	for {
		if reason, ended := w.pass(); ended {
			w.finish(reason)
			return // the queue stays "running": nothing starts w again
		}
		if w.c.queue.idle() {
			return
		}
	}
}

// pass does what there is to do now; ended says the stream has ended, and
// why.
func (w *writer) pass() (reason string, ended bool) {
	c, h := w.c, w.h
	for len(w.first) > 0 {
		n := min(len(w.first), burst)
		if !w.write(w.first[:n]) {
			return w.failed(), true
		}
		clear(w.first[:n])
		w.first = w.first[n:]
		select {
		case <-c.cut:
			if c.reason != reasonShutdown {
				return h.end(c, w.s, w.cursor), true
			}
			// On shutdown, finish the replay and drain the queue below.
		default:
		}
		if reason, gone := w.gone(); gone {
			return reason, true
		}
	}
	if w.first != nil {
		w.first = nil
		w.cursor = max(w.cursor, w.latest)
	}
	select {
	case <-c.cut:
		if c.reason == reasonShutdown {
			// Deliver what is queued, then say goodbye.
			if !w.drain() {
				return w.failed(), true
			}
			w.cursor = max(w.cursor, c.cutSeq)
		}
		return h.end(c, w.s, w.cursor), true
	default:
	}
	if reason, gone := w.gone(); gone {
		return reason, true
	}
	// With a write interval, what arrives within it of the last write
	// waits for the rest of it, and goes out with what follows.
	if interval := h.opts.WriteInterval; interval > 0 && c.queue.len() > 0 {
		now := time.Now()
		if next := w.lastWrite.Add(interval); now.Before(next) {
			if w.paceAt.IsZero() {
				w.paceAt = next
				if w.pace == nil {
					w.pace = time.AfterFunc(next.Sub(now), c.queue.signal)
				} else {
					w.pace.Reset(next.Sub(now))
				}
			}
			return "", false
		}
		w.paceAt = time.Time{}
		w.lastWrite = now
	}
	if !w.drain() {
		return w.failed(), true
	}
	return "", false
}

// failed ends the stream after a write failed: unless the peer is gone,
// the client is dropped (write_error, unless the hub cut it off already
// and interrupted the write) and sent its final notice, within
// noticeTimeout, after the rest of the interrupted write.
func (w *writer) failed() string {
	if reason, gone := w.gone(); gone {
		return reason
	}
	w.h.drop(w.c, reasonWriteError) // a no-op if cut off already
	return w.h.end(w.c, w.s, w.cursor)
}

// gone reports whether the peer has gone away or the hub was killed.
func (w *writer) gone() (string, bool) {
	select {
	case <-w.s.gone():
		return "gone", true
	case <-w.h.killCtx.Done():
		return "killed", true
	default:
		return "", false
	}
}

// drain writes what the queue holds, in bursts; it reports false if a
// write failed.
func (w *writer) drain() bool {
	bp := bursts.Get().(*[]*message)
	defer bursts.Put(bp)
	for {
		batch := w.c.queue.pop((*bp)[:0], burst)
		if len(batch) == 0 {
			return true
		}
		ok := w.write(batch)
		if ok {
			w.h.metrics.delivered(w.h.now(), batch)
		}
		clear(batch)
		if !ok {
			return false
		}
	}
}

// write sends msgs and moves the cursor; it reports false if the write
// failed. A write interrupted part way moves the cursor too: the final
// notice, which carries the cursor, completes it before it (or does not
// arrive).
func (w *writer) write(msgs []*message) bool {
	if err := w.s.send(msgs); err != nil {
		w.h.logger.Debug("writing to stream client", "transport", w.c.transport, "remote_addr", w.remote, "err", err)
		if w.s.partial() {
			w.advance(msgs)
		}
		return false
	}
	w.sent.Add(float64(len(msgs)))
	w.advance(msgs)
	return true
}

// advance moves the cursor past msgs.
func (w *writer) advance(msgs []*message) {
	for _, m := range msgs {
		if m.id {
			w.cursor = m.seq
		}
	}
}

// finish releases what the stream held and unregisters the client.
func (w *writer) finish(reason string) {
	if w.pace != nil {
		w.pace.Stop()
	}
	for _, stop := range w.hooks {
		stop()
	}
	if w.closeConn != nil {
		w.closeConn()
	}
	w.h.unregister(w.c)
	w.h.logger.Debug("stream client disconnected", "transport", w.c.transport, "remote_addr", w.remote, "reason", reason)
	if w.finished != nil {
		close(w.finished)
	}
}
