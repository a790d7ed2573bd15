package hub

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// An SSE response over HTTP/1.1 is served on the hijacked connection
// (rawSSEStream), in chunked encoding written by the hub: net/http's
// per-connection buffers (a 4 KB reader, a 4 KB writer and a 2 KB
// chunking buffer) and its goroutines go, as for WebSocket. Where the
// connection cannot be hijacked (HTTP/2, a ResponseWriter without it), the
// response goes through the ResponseWriter (sseStream).

// openSSE starts the SSE response. raw says it is on the hijacked
// connection, whose reader calls onGone when it has ended; otherwise the
// handler must serve it before it returns. An error means the client is
// gone.
func (h *Hub) openSSE(w http.ResponseWriter, r *http.Request, onGone func()) (s stream, raw bool, err error) {
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	if r.ProtoMajor == 1 && r.ProtoMinor >= 1 {
		raw := hd.Clone()
		raw.Set("Transfer-Encoding", "chunked")
		raw.Set("Connection", "close") // the stream ends with the connection
		raw.Set("Date", time.Now().UTC().Format(http.TimeFormat))
		c, rd, err := h.hijack(w, "200 OK", raw, onGone)
		switch {
		case err == nil:
			go c.drainLoop(rd)
			return &rawSSEStream{c: c}, true, nil
		case !errors.Is(err, errNotHijacked):
			return nil, false, err
		}
	}
	w.WriteHeader(http.StatusOK)
	return &sseStream{w: w, rc: http.NewResponseController(w), done: r.Context().Done(), timeout: h.opts.WriteTimeout}, false, nil
}

// retryHint opens every SSE stream: the reconnection delay, jittered.
func retryHint() []byte { return fmt.Appendf(nil, "retry: %d\n\n", retryMs()) }

// sseStream is a Server-Sent Events stream through the ResponseWriter.
type sseStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	done    <-chan struct{}
	timeout time.Duration
	started bool
}

func (s *sseStream) send(msgs []*message) error {
	return s.sendWithin(msgs, s.timeout)
}

func (s *sseStream) sendWithin(msgs []*message, timeout time.Duration) error {
	if err := s.rc.SetWriteDeadline(time.Now().Add(timeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("setting write deadline: %w", err)
	}
	if !s.started {
		s.started = true
		if _, err := s.w.Write(retryHint()); err != nil {
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

func (s *sseStream) end(last *message, _ uint16, _ string) {
	_ = s.sendWithin([]*message{last}, noticeTimeout)
}

func (s *sseStream) gone() <-chan struct{} { return s.done }

// partial is false: what a ResponseWriter took of an interrupted write is
// unknown; the final notice is attempted all the same.
func (s *sseStream) partial() bool { return false }

// interrupt makes a write in flight return at once.
func (s *sseStream) interrupt() { _ = s.rc.SetWriteDeadline(time.Now()) }

// rawSSEStream is a Server-Sent Events stream on a hijacked HTTP/1.1
// connection: each burst is one chunk, written with one system call.
type rawSSEStream struct {
	c       *rawConn
	started bool
}

func (s *rawSSEStream) send(msgs []*message) error { return s.write(msgs, false) }

func (s *rawSSEStream) partial() bool { return s.c.partial() }

func (s *rawSSEStream) write(msgs []*message, last bool) error {
	var prefix []byte
	if !s.started {
		s.started = true
		prefix = retryHint()
	}
	return s.c.sendChunk(prefix, msgs, last)
}

// end writes last and the end of the chunked body, then closes the
// connection.
func (s *rawSSEStream) end(last *message, _ uint16, _ string) {
	_ = s.write([]*message{last}, true)
	s.c.close()
}

func (s *rawSSEStream) gone() <-chan struct{} { return s.c.done }

// drainLoop reads, and discards, what the client sends until the
// connection ends; then the stream is gone.
func (c *rawConn) drainLoop(rd io.Reader) {
	defer c.ended()
	buf := make([]byte, 64)
	for {
		if _, err := rd.Read(buf); err != nil {
			return
		}
	}
}

// lastChunk ends a chunked body.
const lastChunk = "0\r\n\r\n"

// sendChunk writes prefix and the SSE frames of msgs as one chunk, and
// with last the end of the body, with one system call.
func (c *rawConn) sendChunk(prefix []byte, msgs []*message, last bool) error {
	w := getWriteBuf()
	defer w.release()
	b := w.b
	n := len(prefix)
	for _, m := range msgs {
		n += len(m.frame)
	}
	if n > 0 {
		b = strconv.AppendInt(b, int64(n), 16)
		b = append(b, "\r\n"...)
		b = append(b, prefix...)
		for _, m := range msgs {
			b = append(b, m.frame...)
		}
		b = append(b, "\r\n"...)
	}
	if last {
		b = append(b, lastChunk...)
	}
	w.b = b
	if len(b) == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if last {
		return c.writeFinalLocked(b)
	}
	return c.writeLocked(b, c.timeout)
}
