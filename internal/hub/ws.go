package hub

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// The hub speaks the server side of WebSocket (RFC 6455) itself, on the
// hijacked connection, instead of through a library Conn: it needs little
// of the protocol (the clients send nothing but control frames), and owning
// it lets the hub write every message of a burst with one system call, keep
// no buffered reader or writer per connection, and read with a goroutine
// whose stack stays small.

// WebSocket opcodes and close codes used by the hub.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA

	closeProtocolError  = 1002
	closeInvalidPayload = 1007
	closeMessageTooBig  = 1009
	closeServiceRestart = 1012
	closeTryAgainLater  = 1013
)

// wsGUID is the key suffix of the opening handshake (RFC 6455 §1.3).
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// maxClientMessage bounds a data message a client may send, over all its
// fragments: clients have nothing to say on the stream, so a longer one is
// refused (close 1009) rather than read.
const maxClientMessage = 16 << 10

// closeWait bounds how long the hub waits for the peer's close frame after
// sending its own, before it closes the connection.
const closeWait = time.Second

// errNotHijacked says the connection could not be hijacked (HTTP/2, or a
// ResponseWriter without it); nothing was written.
var errNotHijacked = errors.New("hijacking the connection")

// wsError is a refused WebSocket handshake.
type wsError struct {
	status int
	msg    string
}

func (e *wsError) Error() string { return e.msg }

// checkWSRequest checks the opening handshake the way
// github.com/coder/websocket does, and the Origin against patterns.
func checkWSRequest(r *http.Request, patterns []string) (key string, err *wsError) {
	if !r.ProtoAtLeast(1, 1) {
		return "", &wsError{http.StatusUpgradeRequired, fmt.Sprintf("websocket handshake must be at least HTTP/1.1, got %q", r.Proto)}
	}
	if v := r.Header.Get("Sec-WebSocket-Version"); v != "13" {
		return "", &wsError{http.StatusBadRequest, fmt.Sprintf("unsupported websocket version %q (only 13 is supported)", v)}
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return "", &wsError{http.StatusBadRequest, "websocket handshake needs exactly one Sec-WebSocket-Key"}
	}
	key = strings.TrimSpace(keys[0])
	if v, err := base64.StdEncoding.DecodeString(key); err != nil || len(v) != 16 {
		return "", &wsError{http.StatusBadRequest, fmt.Sprintf("invalid Sec-WebSocket-Key %q: must be 16 bytes, base64", key)}
	}
	if err := checkOrigin(r, patterns); err != nil {
		return "", &wsError{http.StatusForbidden, err.Error()}
	}
	return key, nil
}

// checkOrigin allows a request without Origin, from the same host, or from
// a host (or scheme://host) matching one of patterns (path.Match, case
// insensitive).
func checkOrigin(r *http.Request, patterns []string) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil {
		return fmt.Errorf("parsing Origin %q: %w", origin, err)
	}
	if strings.EqualFold(r.Host, u.Host) {
		return nil
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, err := path.Match(strings.ToLower(p), strings.ToLower(target)); err == nil && ok {
			return nil
		}
	}
	return fmt.Errorf("origin %q is not allowed for host %q", u.Host, r.Host)
}

func acceptKey(key string) string {
	sum := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// rawConn is the server side of one WebSocket connection. Writes (the
// handler's bursts, the reader's pongs and close replies) are serialised by
// mu; the reader goroutine owns the read side.
type rawConn struct {
	conn    net.Conn
	timeout time.Duration

	mu        sync.Mutex
	closeSent bool
	// rest is what an interrupted write left unwritten: the end of a
	// frame (or chunk), written before the final notice.
	rest []byte
	// done is closed when the read side has ended: the peer closed, went
	// away, broke the protocol, or the connection was closed.
	done chan struct{}
	// stopKill unregisters the hub-kill hook.
	stopKill func() bool
	// onGone is called once done is closed.
	onGone func()
}

// hijack takes the connection of w over from net/http and writes the
// response head (status and hd) on it. It returns the connection and the
// reader of what the client sends (bytes net/http had read ahead come
// first); net/http's buffered reader and writer are dropped. An error
// wrapping errNotHijacked means nothing was written; after any other, the
// connection is closed.
func (h *Hub) hijack(w http.ResponseWriter, status string, hd http.Header, onGone func()) (*rawConn, io.Reader, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errNotHijacked, err)
	}
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		early = bytes.Clone(b)
	}
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 ")
	head.WriteString(status)
	head.WriteString("\r\n")
	_ = hd.Write(&head)
	head.WriteString("\r\n")
	_ = conn.SetWriteDeadline(time.Now().Add(h.opts.WriteTimeout))
	if _, err := conn.Write(head.Bytes()); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("writing response head: %w", err)
	}
	c := &rawConn{conn: conn, timeout: h.opts.WriteTimeout, done: make(chan struct{}), onGone: onGone}
	c.stopKill = context.AfterFunc(h.killCtx, func() { conn.Close() })
	var rd io.Reader = conn
	if len(early) > 0 {
		rd = io.MultiReader(bytes.NewReader(early), conn)
	}
	return c, rd, nil
}

// acceptWS completes the opening handshake on a hijacked connection and
// starts the reader, which calls onGone when the connection has ended. It
// has answered the request when it returns an error.
func (h *Hub) acceptWS(w http.ResponseWriter, r *http.Request, onGone func()) (*rawConn, error) {
	key, herr := checkWSRequest(r, h.opts.OriginPatterns)
	if herr != nil {
		if herr.status == http.StatusBadRequest {
			w.Header().Set("Sec-WebSocket-Version", "13")
		}
		http.Error(w, herr.msg, herr.status)
		return nil, herr
	}
	hd := w.Header().Clone()
	hd.Set("Upgrade", "websocket")
	hd.Set("Connection", "Upgrade")
	hd.Set("Sec-WebSocket-Accept", acceptKey(key))
	c, rd, err := h.hijack(w, "101 Switching Protocols", hd, onGone)
	if err != nil {
		if errors.Is(err, errNotHijacked) {
			http.Error(w, http.StatusText(http.StatusNotImplemented), http.StatusNotImplemented)
		}
		return nil, err
	}
	go c.readLoop(rd)
	return c, nil
}

// readLoop reads the client's frames until the connection ends: it answers
// pings and close frames, and checks and discards data messages (clients
// have nothing to say on the stream). It fails the connection (RFC 6455
// §7.1.7) with 1002 on a protocol error (such as a continuation frame
// without a message to continue), 1007 on a text message that is not
// UTF-8, and 1009 on a message longer than maxClientMessage.
func (c *rawConn) readLoop(rd io.Reader) {
	defer c.ended()
	var hdr [8]byte
	var ctl [125]byte
	var msg dataMessage
	for {
		if _, err := io.ReadFull(rd, hdr[:2]); err != nil {
			return
		}
		fin, rsv, op := hdr[0]&0x80 != 0, hdr[0]&0x70, hdr[0]&0x0f
		masked, n := hdr[1]&0x80 != 0, uint64(hdr[1]&0x7f)
		if rsv != 0 || !masked {
			c.fail(closeProtocolError)
			return
		}
		switch n {
		case 126:
			if _, err := io.ReadFull(rd, hdr[:2]); err != nil {
				return
			}
			n = uint64(binary.BigEndian.Uint16(hdr[:2]))
		case 127:
			if _, err := io.ReadFull(rd, hdr[:8]); err != nil {
				return
			}
			if n = binary.BigEndian.Uint64(hdr[:8]); n>>63 != 0 {
				c.fail(closeProtocolError)
				return
			}
		}
		var mask [4]byte
		if _, err := io.ReadFull(rd, mask[:]); err != nil {
			return
		}
		switch op {
		case opContinuation, opText, opBinary:
			code, err := msg.frame(rd, op, fin, n, mask)
			if code != 0 {
				c.fail(code)
				return
			}
			if err != nil {
				return
			}
			continue
		case opClose, opPing, opPong:
		default:
			c.fail(closeProtocolError)
			return
		}
		if !fin || n > uint64(len(ctl)) {
			c.fail(closeProtocolError)
			return
		}
		p := ctl[:n]
		if _, err := io.ReadFull(rd, p); err != nil {
			return
		}
		for i := range p {
			p[i] ^= mask[i&3]
		}
		switch op {
		case opPing:
			if c.writeControl(opPong, p) != nil {
				return
			}
		case opClose:
			// Echo the status code (RFC 6455 §5.5.1), unless the hub has
			// sent its close frame already; then the handshake is done.
			var code []byte
			switch {
			case len(p) == 1:
				c.fail(closeProtocolError)
				return
			case len(p) >= 2:
				code = p[:2]
			}
			_ = c.writeClose(code)
			c.conn.Close()
			return
		}
	}
}

// ended closes done and calls onGone.
func (c *rawConn) ended() {
	close(c.done)
	if c.onGone != nil {
		c.onGone()
	}
}

// dataMessage is the state of the data message a client is sending, frame
// by frame.
type dataMessage struct {
	open bool // a fragmented message awaits its continuation
	text bool
	size uint64
	// tail holds the last bytes of the text so far when they begin a
	// character the next fragment completes.
	tail  [utf8.UTFMax - 1]byte
	ntail int
}

// frame reads and discards the payload of a data frame of n bytes, checking
// it. It returns the close code the connection fails with, or 0 and any
// read error.
func (m *dataMessage) frame(rd io.Reader, op byte, fin bool, n uint64, mask [4]byte) (uint16, error) {
	switch {
	case op == opContinuation && !m.open:
		return closeProtocolError, nil // nothing to continue
	case op != opContinuation && m.open:
		return closeProtocolError, nil // a new message before the last ended
	case op != opContinuation:
		*m = dataMessage{text: op == opText}
	}
	if n > maxClientMessage-m.size {
		return closeMessageTooBig, nil
	}
	m.size += n
	m.open = !fin
	if !m.text {
		_, err := io.CopyN(io.Discard, rd, int64(n))
		return 0, err
	}
	var buf [512]byte
	for off := uint64(0); off < n; {
		k := copy(buf[:], m.tail[:m.ntail])
		chunk := buf[k:min(uint64(len(buf)), uint64(k)+n-off)]
		if _, err := io.ReadFull(rd, chunk); err != nil {
			return 0, err
		}
		for i := range chunk {
			chunk[i] ^= mask[(off+uint64(i))&3]
		}
		off += uint64(len(chunk))
		b := buf[:k+len(chunk)]
		// Keep back a character the next bytes may complete.
		m.ntail = 0
		for i := len(b) - 1; i >= 0 && i >= len(b)-(utf8.UTFMax-1); i-- {
			if utf8.RuneStart(b[i]) {
				if !utf8.FullRune(b[i:]) {
					m.ntail = copy(m.tail[:], b[i:])
					b = b[:i]
				}
				break
			}
		}
		if !utf8.Valid(b) {
			return closeInvalidPayload, nil
		}
	}
	if fin && m.ntail > 0 {
		return closeInvalidPayload, nil // the text ends inside a character
	}
	return 0, nil
}

// fail closes the connection with a close frame of status code.
func (c *rawConn) fail(code uint16) {
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], code)
	_ = c.writeClose(p[:])
	c.conn.Close()
}

// writeClose sends a close frame with payload p unless one was sent.
func (c *rawConn) writeClose(p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return nil
	}
	c.closeSent = true
	return c.writeLocked(append(appendFrameHeader(nil, opClose, len(p)), p...), c.timeout)
}

func (c *rawConn) writeControl(op byte, p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return nil
	}
	return c.writeLocked(append(appendFrameHeader(nil, op, len(p)), p...), c.timeout)
}

// writeLocked writes b, within timeout: one system call. (The burst is
// copied into b rather than written with writev: the connection may be
// wrapped, e.g. by a listener that limits connections, and then
// net.Buffers falls back to one write per buffer.) A write that times out
// part way keeps the rest of b (rest), for the final notice.
func (c *rawConn) writeLocked(b []byte, timeout time.Duration) error {
	if err := c.conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("setting write deadline: %w", err)
	}
	n, err := c.conn.Write(b)
	if err != nil {
		if n > 0 && n < len(b) && errors.Is(err, os.ErrDeadlineExceeded) {
			c.rest = append(c.rest[:0], b[n:]...)
		}
		return fmt.Errorf("writing to the stream connection: %w", err)
	}
	return nil
}

// writeFinalLocked writes what an interrupted write left, then b, within
// noticeTimeout: the last write to a client that is dropped.
func (c *rawConn) writeFinalLocked(b []byte) error {
	if len(c.rest) > 0 {
		b = append(c.rest, b...)
		c.rest = nil
	}
	return c.writeLocked(b, noticeTimeout)
}

// interrupt makes a write in flight return at once (its deadline passes).
// It does not wait for the write: the writer holds mu meanwhile.
func (c *rawConn) interrupt() { _ = c.conn.SetWriteDeadline(time.Now()) }

// partial reports whether the last write was interrupted part way.
func (c *rawConn) partial() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.rest) > 0
}

// appendFrameHeader appends the header of an unmasked, final frame of n
// bytes.
func appendFrameHeader(b []byte, op byte, n int) []byte {
	b = append(b, 0x80|op)
	switch {
	case n <= 125:
		return append(b, byte(n))
	case n <= 0xffff:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// writeBuf is the scratch space a burst is assembled in. Pooled: an idle
// connection holds none.
type writeBuf struct{ b []byte }

var writeBufs = sync.Pool{New: func() any { return &writeBuf{b: make([]byte, 0, 4096)} }}

// maxPooledWrite bounds the buffers kept in the pool.
const maxPooledWrite = 256 << 10

func getWriteBuf() *writeBuf { return writeBufs.Get().(*writeBuf) }

func (w *writeBuf) release() {
	if cap(w.b) <= maxPooledWrite {
		w.b = w.b[:0]
		writeBufs.Put(w)
	}
}

// sendMessages writes msgs, in order, with one system call: one text frame
// each, or with batch one text frame holding them all as a JSON array; then
// a close frame with code and reason if code is not 0 (the final notice:
// after the rest of an interrupted write, within noticeTimeout).
func (c *rawConn) sendMessages(msgs []*message, batch bool, code uint16, reason string) error {
	w := getWriteBuf()
	defer w.release()
	b := w.b
	if batch && len(msgs) > 0 {
		n := 1 + len(msgs) // brackets and commas
		for _, m := range msgs {
			n += len(m.json())
		}
		b = appendFrameHeader(b, opText, n)
		b = append(b, '[')
		for i, m := range msgs {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, m.json()...)
		}
		b = append(b, ']')
	} else {
		for _, m := range msgs {
			js := m.json()
			b = appendFrameHeader(b, opText, len(js))
			b = append(b, js...)
		}
	}
	defer func() { w.b = b }()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		// The peer started the close handshake: no more data frames.
		if len(msgs) > 0 {
			return errors.New("writing websocket frames: connection closing")
		}
		return nil
	}
	if code != 0 {
		c.closeSent = true
		b = appendFrameHeader(b, opClose, 2+len(reason))
		b = binary.BigEndian.AppendUint16(b, code)
		b = append(b, reason...)
		return c.writeFinalLocked(b)
	}
	if len(b) == 0 {
		return nil
	}
	return c.writeLocked(b, c.timeout)
}

// close closes the connection and stops watching the hub's kill.
func (c *rawConn) close() {
	c.stopKill()
	c.conn.Close()
}

// wsStream is a WebSocket stream.
type wsStream struct {
	c     *rawConn
	batch bool
}

func (s *wsStream) send(msgs []*message) error { return s.c.sendMessages(msgs, s.batch, 0, "") }

// end writes last and a close frame, waits for the peer's close frame (at
// most closeWait), then closes the connection.
func (s *wsStream) end(last *message, code uint16, reason string) {
	if err := s.c.sendMessages([]*message{last}, s.batch, code, reason); err != nil {
		s.c.close()
		return
	}
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-s.c.done:
	case <-t.C:
	}
	s.c.close()
}

func (s *wsStream) gone() <-chan struct{} { return s.c.done }

func (s *wsStream) partial() bool { return s.c.partial() }
