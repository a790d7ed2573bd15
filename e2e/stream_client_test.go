package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// message is a stream message as clients see it.
type message struct {
	Seq      uint64 `json:"seq"`
	Type     string `json:"type"`
	Machine  string `json:"machine"`
	IngestTS int64  `json:"ingestTs"`
	// Traceparent is a traced batch's trace context (samples).
	Traceparent string          `json:"traceparent"`
	Reason      string          `json:"reason"`
	Cursor      uint64          `json:"cursor"`
	Data        json.RawMessage `json:"data"`
	// Windows are the windows a processed group closed for the machine
	// (type "windows").
	Windows []json.RawMessage `json:"windows"`
	Samples []struct {
		Metric string  `json:"metric"`
		TS     int64   `json:"ts"`
		Value  float64 `json:"value"`
	} `json:"samples"`
}

// subscribe opens a stream (SSE when sse, else WebSocket) and returns its
// messages on a channel that closes when the stream ends.
func subscribe(t *testing.T, ctx context.Context, s *server, query string, sse bool) <-chan message {
	t.Helper()
	out := make(chan message, 4096)
	if sse {
		req, err := http.NewRequestWithContext(ctx, "GET", s.url+"/api/v1/stream?"+query, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("SSE subscribe: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		go func() {
			defer close(out)
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 1<<20), 16<<20)
			for sc.Scan() {
				data, ok := strings.CutPrefix(sc.Text(), "data:")
				if !ok {
					continue
				}
				var m message
				if json.Unmarshal([]byte(strings.TrimSpace(data)), &m) == nil {
					out <- m
				}
			}
		}()
		return out
	}
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.url, "http")+"/api/v1/stream?"+query, nil)
	if err != nil {
		t.Fatalf("WebSocket subscribe: %v (%v)", err, resp)
	}
	c.SetReadLimit(16 << 20)
	go func() {
		defer close(out)
		defer c.CloseNow()
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			var m message
			if json.Unmarshal(b, &m) == nil {
				out <- m
			}
		}
	}()
	return out
}

// awaitSamples reads messages until want samples of machine arrived, and
// returns them as metric → values.
func awaitSamples(t *testing.T, ctx context.Context, msgs <-chan message, machine string, want int) map[string][]float64 {
	t.Helper()
	got := map[string][]float64{}
	n := 0
	for n < want {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("stream ended after %d of %d samples of %s", n, want, machine)
			}
			if m.Type != "samples" || m.Machine != machine {
				continue
			}
			if m.IngestTS == 0 {
				t.Errorf("samples message without ingestTs: %+v", m)
			}
			for _, s := range m.Samples {
				if s.TS == 0 {
					t.Errorf("sample without event time: %+v", s)
				}
				got[s.Metric] = append(got[s.Metric], s.Value)
				n++
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %d samples of %s: got %d: %v", want, machine, n, ctx.Err())
		}
	}
	return got
}
