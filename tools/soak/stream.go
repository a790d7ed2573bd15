package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/twinline/twinline/internal/bench"
)

// lagRecorder holds one group's latencies of the current interval.
type lagRecorder struct {
	h atomic.Pointer[bench.Histogram]
}

func newLagRecorder() *lagRecorder {
	r := &lagRecorder{}
	r.h.Store(bench.NewHistogram())
	return r
}

// take returns the interval's figures and starts the next interval. A
// client that loaded the old histogram just before may still add to it:
// a sample or two of an interval counted nowhere, not a wrong figure.
func (r *lagRecorder) take() lagStat {
	h := r.h.Swap(bench.NewHistogram())
	return lagStat{N: h.Count(), P50: h.Quantile(0.50), P99: h.Quantile(0.99)}
}

// streams are the stream clients: WebSocket subscribers that measure each
// sample's latency (arrival − event time) and reconnect when cut off.
type streams struct {
	base     string
	client   *http.Client
	lag      [numGroups]*lagRecorder
	received atomic.Int64
	reconn   atomic.Int64
	// slowCut counts the slow readers' connections the server ended.
	slowCut atomic.Int64
}

func newStreams(base string) *streams {
	s := &streams{base: base, client: &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: -1}}}
	for g := range s.lag {
		s.lag[g] = newLagRecorder()
	}
	return s
}

func (s *streams) dial(ctx context.Context, query string) (*websocket.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(dctx, s.base+"/api/v1/stream?"+query, &websocket.DialOptions{HTTPClient: s.client})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dialing stream %s: %w", resp.Status, err)
		}
		return nil, fmt.Errorf("dialing stream: %w", err)
	}
	c.SetReadLimit(32 << 20)
	return c, nil
}

// conflateSupported says whether the server takes ?conflate=: a 400 on
// the handshake says no; so does an OpenAPI document that does not name
// the parameter (a server that ignores unknown parameters would otherwise
// pass for one that conflates).
func (s *streams) conflateSupported(ctx context.Context, query string) (bool, string) {
	c, err := s.dial(ctx, query)
	if err != nil {
		return false, fmt.Sprintf("the server refused %q (%v)", query, err)
	}
	c.CloseNow()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.base+"/api/openapi.json", nil)
	resp, err := s.client.Do(req)
	if err != nil {
		return false, fmt.Sprintf("reading the OpenAPI document: %v", err)
	}
	defer resp.Body.Close()
	doc, _ := io.ReadAll(resp.Body)
	if !bytes.Contains(doc, []byte(`"conflate"`)) {
		return false, "the server accepted ?conflate= but its OpenAPI document does not name it (ignored)"
	}
	return true, ""
}

// subscribe runs one subscriber of the group until ctx ends.
func (s *streams) subscribe(ctx context.Context, query string, group int) {
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		if !first {
			s.reconn.Add(1)
		}
		first = false
		if s.session(ctx, query, group) {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (s *streams) session(ctx context.Context, query string, group int) (got bool) {
	c, err := s.dial(ctx, query)
	if err != nil {
		return false
	}
	defer c.CloseNow()
	var buf bytes.Buffer
	var ts []int64
	var lat []time.Duration
	for {
		_, r, err := c.Reader(ctx)
		if err != nil {
			return got
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return got
		}
		now := time.Now().UnixNano()
		got = true
		ts = sampleTimes(buf.Bytes(), ts[:0])
		if len(ts) == 0 {
			continue
		}
		lat = lat[:0]
		for _, t := range ts {
			lat = append(lat, time.Duration(now-t*int64(time.Millisecond)))
		}
		s.lag[group].h.Load().RecordMany(lat)
		s.received.Add(int64(len(ts)))
	}
}

// slowReader subscribes to every machine and reads one message every
// pause: the server must cut it off (its queue full) rather than hold
// memory for it. Each cut is counted; it then subscribes again.
func (s *streams) slowReader(ctx context.Context, pause time.Duration) {
	for ctx.Err() == nil {
		c, err := s.dial(ctx, "all=1")
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		for {
			_, r, err := c.Reader(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.slowCut.Add(1)
				}
				break
			}
			_, _ = io.Copy(io.Discard, r)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
			if ctx.Err() != nil {
				break
			}
		}
		c.CloseNow()
	}
}

// sampleTimes appends the event time (ms) of every sample of a "samples"
// message, and of every value of a conflated "fleet" message (its lag then
// includes the conflation interval), read without decoding the JSON whole:
// the hub writes each "ts" as a plain integer and no string value holds a
// quote.
func sampleTimes(msg []byte, ts []int64) []int64 {
	var i int
	switch {
	case bytes.Contains(msg, []byte(`"type":"samples"`)):
		i = bytes.Index(msg, []byte(`"samples":[`))
	case bytes.Contains(msg, []byte(`"type":"fleet"`)):
		i = bytes.Index(msg, []byte(`"machines":[`))
	default:
		return ts
	}
	if i < 0 {
		return ts
	}
	rest := msg[i:]
	for {
		j := bytes.Index(rest, []byte(`"ts":`))
		if j < 0 {
			return ts
		}
		rest = rest[j+len(`"ts":`):]
		k := 0
		for k < len(rest) && rest[k] >= '0' && rest[k] <= '9' {
			k++
		}
		if v, err := strconv.ParseInt(string(rest[:k]), 10, 64); err == nil {
			ts = append(ts, v)
		}
		rest = rest[k:]
	}
}
