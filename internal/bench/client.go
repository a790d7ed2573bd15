package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// streamMsg is what the bench reads from one stream message.
type streamMsg struct {
	typ string
	// seq is the message's seq ("seq"), or its cursor ("cursor") for a
	// reconnect message; 0 when absent.
	seq uint64
	// ts holds each sample's event time (ms) of a samples message, or
	// each value's of a fleet message.
	ts []int64
	// machines is the number of machines of a fleet message.
	machines int
}

// scanMessage reads the fields the bench needs from one JSON stream
// message without decoding it whole: the type, the seq (or a reconnect's
// cursor) and, for samples, every sample's "ts" (for fleet, every value's
// "ts" and the number of machines). It relies on the hub's
// encoding: string values never hold an unescaped quote, so `"ts":` cannot
// appear inside one. ts is reused.
func scanMessage(msg []byte, ts []int64) (streamMsg, error) {
	out := streamMsg{ts: ts[:0]}
	typ, ok := stringField(msg, `"type":"`)
	if !ok {
		return out, fmt.Errorf("stream message without a type: %.100q", msg)
	}
	out.typ = typ
	key := `"seq":`
	if typ == "reconnect" {
		key = `"cursor":`
	}
	if v, ok := intField(msg, key); ok {
		out.seq = uint64(v)
	}
	list := `"samples":[`
	switch typ {
	case "samples":
	case "fleet":
		list = `"machines":[`
	default:
		return out, nil
	}
	i := bytes.Index(msg, []byte(list))
	if i < 0 {
		return out, fmt.Errorf("%s message without %s: %.100q", typ, list, msg)
	}
	rest := msg[i:]
	if typ == "fleet" {
		out.machines = bytes.Count(rest, []byte(`{"machine":`))
	}
	for {
		j := bytes.Index(rest, []byte(`"ts":`))
		if j < 0 {
			return out, nil
		}
		rest = rest[j+len(`"ts":`):]
		v, n := parseInt(rest)
		if n == 0 {
			return out, fmt.Errorf("sample with a bad ts: %.100q", msg)
		}
		out.ts = append(out.ts, v)
		rest = rest[n:]
	}
}

func stringField(msg []byte, key string) (string, bool) {
	i := bytes.Index(msg, []byte(key))
	if i < 0 {
		return "", false
	}
	rest := msg[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return "", false
	}
	return string(rest[:j]), true
}

func intField(msg []byte, key string) (int64, bool) {
	i := bytes.Index(msg, []byte(key))
	if i < 0 {
		return 0, false
	}
	v, n := parseInt(msg[i+len(key):])
	return v, n > 0
}

// parseInt parses a decimal integer (optionally negative) at the start of
// b and returns it and the bytes it took (0: none).
func parseInt(b []byte) (int64, int) {
	neg := false
	i := 0
	if len(b) > 0 && b[0] == '-' {
		neg, i = true, 1
	}
	var v int64
	start := i
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		v = v*10 + int64(b[i]-'0')
	}
	if i == start {
		return 0, 0
	}
	if neg {
		v = -v
	}
	return v, i
}

// subscriber is one simulated dashboard: a stream client that records the
// latency of every sample it receives.
type subscriber struct {
	base      string // server base URL
	query     string // "machine=…&machine=…" or "all=1"
	transport string
	hist      *Histogram
	m         *meter
	// from is the event time (ms) from which samples are measured; samples
	// before it (warm-up) are counted nowhere.
	from *atomic.Int64
	// wsClient makes WebSocket handshakes.
	wsClient *http.Client
	// fleet, for a client of a conflated fleet stream, records its fleet
	// messages (nil: a machine or all=1 client).
	fleet *fleetMeter
}

// errStreamEnded is a stream the server closed.
var errStreamEnded = errors.New("stream ended")

// run keeps the subscription open until ctx ends, reconnecting (from its
// cursor) when the server closes it. connected is called once, at the
// first hello; failed at each connection attempt that fails before it.
func (s *subscriber) run(ctx context.Context, connected func(), failed func(error)) {
	var cursor uint64
	first := true
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		hello := func() {
			if first {
				first = false
				connected()
			}
		}
		got, err := s.session(ctx, &cursor, hello)
		if ctx.Err() != nil {
			return
		}
		if first {
			failed(err)
		} else {
			s.m.reconnects.Add(1)
		}
		if got {
			backoff = 100 * time.Millisecond
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// session runs one connection; it reports whether it received anything.
func (s *subscriber) session(ctx context.Context, cursor *uint64, hello func()) (bool, error) {
	q := s.query
	if *cursor > 0 {
		q += "&cursor=" + strconv.FormatUint(*cursor, 10)
	}
	var next func() ([]byte, error)
	var closeFn func()
	switch s.transport {
	case "sse":
		rd, c, err := dialSSE(ctx, s.base, q)
		if err != nil {
			return false, err
		}
		next, closeFn = rd, c
	default:
		rd, c, err := dialWS(ctx, s.wsClient, s.base, q)
		if err != nil {
			return false, err
		}
		next, closeFn = rd, c
	}
	defer closeFn()
	var ts []int64
	var lat []time.Duration
	var lastFleet time.Time // arrival of this session's previous fleet message
	got := false
	for {
		msg, err := next()
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusTryAgainLater {
				s.m.closeNotices.Add(1)
			}
			return got, err
		}
		arrival := time.Now()
		got = true
		sm, err := scanMessage(msg, ts)
		if err != nil {
			return got, err
		}
		ts = sm.ts
		switch sm.typ {
		case "hello":
			hello()
		case "reconnect":
			*cursor = sm.seq
			s.m.reconnectNotices.Add(1)
			// A WebSocket close frame (1013) follows: count it too.
			for range 4 {
				if _, err := next(); err != nil {
					if websocket.CloseStatus(err) == websocket.StatusTryAgainLater {
						s.m.closeNotices.Add(1)
					}
					break
				}
			}
			return got, errStreamEnded
		case "fleet":
			if s.fleet != nil && arrival.UnixMilli() >= s.from.Load() {
				var gap time.Duration
				if !lastFleet.IsZero() {
					gap = arrival.Sub(lastFleet)
				}
				s.fleet.record(arrival, gap, len(msg), sm.machines, sm.ts)
			}
			lastFleet = arrival
		case "samples":
			if sm.seq > 0 {
				*cursor = sm.seq
			}
			from := s.from.Load()
			lat = lat[:0]
			now := arrival.UnixNano()
			for _, t := range sm.ts {
				if t >= from {
					lat = append(lat, time.Duration(now-t*int64(time.Millisecond)))
				}
			}
			if len(lat) > 0 {
				s.hist.RecordMany(lat)
				s.m.messages.Add(1)
				s.m.received.Add(int64(len(lat)))
			}
		default:
			if sm.seq > 0 && sm.typ != "heartbeat" {
				*cursor = sm.seq
			}
		}
	}
}

// dialWS opens a WebSocket subscription; next returns each message.
func dialWS(ctx context.Context, client *http.Client, base, query string) (next func() ([]byte, error), closeFn func(), err error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(dctx, base+"/api/v1/stream?"+query, &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		if resp != nil {
			return nil, nil, fmt.Errorf("websocket dial: %s", resp.Status)
		}
		return nil, nil, fmt.Errorf("websocket dial: %w", err)
	}
	c.SetReadLimit(16 << 20)
	var buf bytes.Buffer
	next = func() ([]byte, error) {
		_, r, err := c.Reader(ctx)
		if err != nil {
			return nil, err
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	return next, func() { c.CloseNow() }, nil
}

// dialSSE opens a Server-Sent Events subscription over a plain TCP
// connection (lighter than net/http's client: one goroutine, small
// buffers); next returns each event's data.
func dialSSE(ctx context.Context, base, query string) (next func() ([]byte, error), closeFn func(), err error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, nil, err
	}
	if u.Scheme != "http" {
		return nil, nil, fmt.Errorf("the sse transport speaks plain http only, not %s", u.Scheme)
	}
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, nil, fmt.Errorf("sse dial: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	closeFn = func() { stop(); conn.Close() }
	path := u.Path + "/api/v1/stream?" + query
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nUser-Agent: twinline-bench\r\n\r\n", path, u.Host); err != nil {
		closeFn()
		return nil, nil, fmt.Errorf("sse request: %w", err)
	}
	br := bufio.NewReaderSize(conn, 2048)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		closeFn()
		return nil, nil, fmt.Errorf("sse response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		closeFn()
		return nil, nil, fmt.Errorf("sse: %s: %s", resp.Status, b)
	}
	lines := bufio.NewReaderSize(resp.Body, 4096)
	var long []byte
	next = func() ([]byte, error) {
		for {
			line, err := readLine(lines, &long)
			if err != nil {
				return nil, err
			}
			if data, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
				return data, nil
			}
		}
	}
	return next, closeFn, nil
}

// readLine returns the next line without its "\n"; a line longer than the
// reader's buffer is assembled in *long.
func readLine(r *bufio.Reader, long *[]byte) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err == nil {
		return bytes.TrimSuffix(line, []byte("\n")), nil
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	*long = append((*long)[:0], line...)
	for {
		line, err = r.ReadSlice('\n')
		*long = append(*long, line...)
		if err == nil {
			return bytes.TrimSuffix(*long, []byte("\n")), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}
