package hub

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
)

// These tests cover the hub's own WebSocket and hijacked-SSE code: the
// handshake, control frames, protocol errors, the opt-in batched frames and
// the chunked SSE response.

func TestWebSocketBatch(t *testing.T) {
	ctx := testContext(t)
	h, _ := newTestHub(t, Options{QueueSize: 4096})
	srv := newTestServer(t, h)
	conn, _, err := websocket.Dial(ctx, srv.URL+"/api/v1/stream?all=1&batch=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(-1)
	frames := make(chan []msg, 1024)
	go func() {
		defer close(frames)
		for {
			typ, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			var ms []msg
			if typ != websocket.MessageText || json.Unmarshal(b, &ms) != nil || len(ms) == 0 {
				t.Errorf("frame %q (type %v): want a non-empty JSON array", b, typ)
				return
			}
			frames <- ms
		}
	}()
	next := func() []msg {
		t.Helper()
		select {
		case ms, ok := <-frames:
			if !ok {
				t.Fatal("stream ended")
			}
			return ms
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		return nil
	}
	hello := next()
	if len(hello) != 1 || hello[0].Type != "hello" {
		t.Fatalf("first frame: got %+v, want [hello]", hello)
	}
	from := hello[0].Seq
	const n = 500
	for i := range n {
		h.PublishSamples(samples(fmt.Sprint("m", i%7), "x", float64(i)), int64(i))
	}
	var got []uint64
	frameCount := 0
	for len(got) < n {
		frameCount++
		for _, m := range next() {
			got = append(got, m.Seq)
			if m.Type != "samples" || m.Samples[0].Value != float64(m.Seq-from-1) {
				t.Fatalf("message: got %+v", m)
			}
		}
	}
	if want := seqRange(from+1, from+n); !cmp.Equal(got, want) {
		t.Errorf("seqs: got %d messages, not %d consecutive from %d", len(got), n, from+1)
	}
	if frameCount > n {
		t.Errorf("frames: got %d for %d messages", frameCount, n)
	}
	t.Logf("%d messages in %d frames", n, frameCount)
}

func TestWebSocketPingAndClose(t *testing.T) {
	ctx := testContext(t)
	h, _ := newTestHub(t, Options{})
	srv := newTestServer(t, h)
	c := dial(t, ctx, srv, transportWS, "all=1", nil)
	c.hello(t, ctx)
	// The client's reader goroutine (dial) reads the pong.
	if err := c.conn.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	// A close handshake started by the client: the hub echoes the status
	// and ends the stream.
	if err := c.conn.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Errorf("closing: got %v, want a clean close handshake", err)
	}
	waitClients(t, ctx, h, 0)
}

// waitClients waits until h has n clients.
func waitClients(t *testing.T, ctx context.Context, h *Hub, n int) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for h.Clients() != n {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("clients: got %d, want %d: %v", h.Clients(), n, ctx.Err())
		}
	}
}

func TestWebSocketHandshakeRefused(t *testing.T) {
	tests := []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"bad version", map[string]string{"Sec-WebSocket-Version": "8"}, http.StatusBadRequest},
		{"no key", map[string]string{"Sec-WebSocket-Key": ""}, http.StatusBadRequest},
		{"short key", map[string]string{"Sec-WebSocket-Key": "c2hvcnQ="}, http.StatusBadRequest},
		{"foreign origin", map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newTestHub(t, Options{})
			srv := newTestServer(t, h)
			req, err := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/stream?all=1", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			for k, v := range tt.header {
				if v == "" {
					req.Header.Del(k)
					continue
				}
				req.Header.Set(k, v)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status: got %d, want %d", resp.StatusCode, tt.want)
			}
			if got := h.Clients(); got != 0 {
				t.Errorf("clients: got %d, want 0", got)
			}
		})
	}
}

// rawWS is a hand-made WebSocket client on a TCP connection, to send what
// a library would not.
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

const wsRequest = "GET /api/v1/stream?all=1 HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// dialRaw sends the handshake followed by extra bytes in the same write,
// and reads the handshake answer.
func dialRaw(t *testing.T, addr string, extra []byte) *rawWS {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(append(fmt.Appendf(nil, wsRequest, addr), extra...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("handshake answer: %d %v", resp.StatusCode, resp.Header)
	}
	return &rawWS{conn: conn, br: br}
}

// frame returns the opcode and payload of the next frame (unmasked, final,
// as the server sends them).
func (c *rawWS) frame(t *testing.T) (byte, []byte) {
	t.Helper()
	var hdr [2]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		t.Fatal(err)
	}
	if hdr[0]&0x80 == 0 || hdr[1]&0x80 != 0 {
		t.Fatalf("frame header %x: want final and unmasked", hdr)
	}
	n := int(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			t.Fatal(err)
		}
		n = int(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			t.Fatal(err)
		}
		n = int(binary.BigEndian.Uint64(b[:]))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		t.Fatal(err)
	}
	return hdr[0] & 0x0f, p
}

// clientFrame encodes a client frame, masked unless unmasked.
func clientFrame(op byte, p []byte, unmasked bool) []byte {
	b := []byte{0x80 | op, byte(len(p))}
	if unmasked {
		return append(b, p...)
	}
	b[1] |= 0x80
	mask := []byte{1, 2, 3, 4}
	b = append(b, mask...)
	for i, c := range p {
		b = append(b, c^mask[i&3])
	}
	return b
}

func TestWebSocketRawFrames(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	srv := newTestServer(t, h)
	addr := srv.Listener.Addr().String()

	t.Run("ping sent with the handshake", func(t *testing.T) {
		// Frames that arrive with the request are read ahead by net/http;
		// the hub must still see them.
		c := dialRaw(t, addr, clientFrame(opPing, []byte("early"), false))
		got := map[byte]string{}
		for range 2 {
			op, p := c.frame(t)
			got[op] = string(p)
		}
		if !strings.Contains(got[opText], `"type":"hello"`) || got[opPong] != "early" {
			t.Errorf("frames: got %q, want hello and pong \"early\"", got)
		}
	})
	t.Run("data frames are ignored", func(t *testing.T) {
		c := dialRaw(t, addr, nil)
		c.frame(t) // hello
		if _, err := c.conn.Write(append(clientFrame(opText, []byte("hi"), false), clientFrame(opPing, []byte("p"), false)...)); err != nil {
			t.Fatal(err)
		}
		if op, p := c.frame(t); op != opPong || string(p) != "p" {
			t.Errorf("got frame %x %q, want pong \"p\"", op, p)
		}
	})
	t.Run("unmasked frame is a protocol error", func(t *testing.T) {
		c := dialRaw(t, addr, nil)
		c.frame(t) // hello
		if _, err := c.conn.Write(clientFrame(opPing, nil, true)); err != nil {
			t.Fatal(err)
		}
		op, p := c.frame(t)
		if op != opClose || len(p) < 2 || binary.BigEndian.Uint16(p) != closeProtocolError {
			t.Errorf("got frame %x %x, want close 1002", op, p)
		}
		if _, err := c.br.ReadByte(); err != io.EOF {
			t.Errorf("after the close frame: got %v, want EOF", err)
		}
	})
}

func TestSSEHijackedResponse(t *testing.T) {
	ctx := testContext(t)
	h, _ := newTestHub(t, Options{})
	srv := newTestServer(t, h)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/stream?machine=a", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := map[string]string{}
	for _, k := range []string{"Content-Type", "Cache-Control", "X-Accel-Buffering"} {
		got[k] = resp.Header.Get(k)
	}
	want := map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	if resp.StatusCode != http.StatusOK || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("got status %d, transfer encoding %v; want 200, chunked", resp.StatusCode, resp.TransferEncoding)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "retry: ") {
		t.Errorf("first line: got %q, %v; want the retry hint", line, err)
	}
	if err := h.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Errorf("reading to the end of the body: %v", err)
	}
	if !strings.Contains(string(rest), `"type":"reconnect","reason":"shutdown"`) {
		t.Errorf("end of the body: got %q, want the reconnect", rest)
	}
}
