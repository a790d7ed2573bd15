package hub

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/problem"
)

// identityHandler stands for the HTTP layer: a request with X-Site sees
// only the machines of that site (ids starting "site-"), and X-Client
// keys its streams.
func identityHandler(h *Hub) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if site := r.Header.Get("X-Site"); site != "" {
			prefix := site + "-"
			ctx = WithFilter(ctx, func(machine string) bool { return strings.HasPrefix(machine, prefix) })
		}
		if key := r.Header.Get("X-Client"); key != "" {
			ctx = WithClientKey(ctx, key)
		}
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

func TestStreamSiteFilter(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			ctx := testContext(t)
			h, _ := newTestHub(t, Options{})
			srv := newTestServer(t, identityHandler(h))
			site1 := http.Header{"X-Site": {"s1"}}

			from := h.seq
			publish := func() {
				h.PublishSamples(samples("s1-a", "t", 1.0, "s2-b", "t", 2.0, "s1-c", "t", 3.0), 10)
				h.publishEvent("s2-b", "alarm", "hot")
				h.publishEvent("", "fleet", nil) // not for a filtered client
				h.publishEvent("s1-a", "note", "hello")
			}
			filtered := dial(t, ctx, srv, tr, "all=1", site1)
			all := dial(t, ctx, srv, tr, "all=1", nil)
			// machine=ID streams are checked by the API layer, not filtered.
			named := dial(t, ctx, srv, tr, "machine=s2-b", site1)
			for _, c := range []*streamClient{filtered, all, named} {
				c.hello(t, ctx)
			}
			publish()
			h.publishEvent("s1-c", "end", nil)
			h.publishEvent("s2-b", "end", nil)
			read := func(c *streamClient, end uint64) []string {
				var got []string
				for _, m := range c.until(t, ctx, from+end) {
					got = append(got, fmt.Sprint(m.Machine, " ", m.Seq-from))
				}
				return got
			}
			if diff := cmp.Diff(read(filtered, 7), []string{"s1-a 1", "s1-c 3", "s1-a 6", "s1-c 7"}); diff != "" {
				t.Errorf("filtered all=1 (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(read(all, 8), []string{"s1-a 1", "s2-b 2", "s1-c 3", "s2-b 4", " 5", "s1-a 6", "s1-c 7", "s2-b 8"}); diff != "" {
				t.Errorf("unfiltered all=1 (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(read(named, 8), []string{"s2-b 2", "s2-b 4", "s2-b 8"}); diff != "" {
				t.Errorf("machine=s2-b (-got +want):\n%s", diff)
			}

			// A filtered client resuming gets the filtered replay, then the
			// filtered live stream.
			again := dial(t, ctx, srv, tr, "all=1&cursor="+strconv.FormatUint(from, 10), site1)
			again.hello(t, ctx)
			publish()
			h.publishEvent("s1-c", "end", nil)
			want := []string{"s1-a 1", "s1-c 3", "s1-a 6", "s1-c 7", "s1-a 9", "s1-c 11", "s1-a 14", "s1-c 15"}
			if diff := cmp.Diff(read(again, 15), want); diff != "" {
				t.Errorf("filtered resume (-got +want):\n%s", diff)
			}
		})
	}
}

func TestMaxPerClient(t *testing.T) {
	ctx := testContext(t)
	h, _ := newTestHub(t, Options{MaxPerClient: 2})
	srv := newTestServer(t, identityHandler(h))
	ana := http.Header{"X-Client": {"ana"}}

	first := dial(t, ctx, srv, transportWS, "all=1", ana)
	first.hello(t, ctx)
	dial(t, ctx, srv, transportSSE, "machine=m", ana).hello(t, ctx)

	// The third stream of ana is refused; bo and a request without a key
	// are not affected.
	req := httptest.NewRequest(http.MethodGet, "/api/v1/stream?all=1", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("X-Client", "ana")
	rec := httptest.NewRecorder()
	identityHandler(h).ServeHTTP(rec, req)
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("third stream: status %d, want 429", rec.Code)
	}
	if p := decodeProblem(t, rec); p.Type != problem.TypeRateLimited || !strings.HasPrefix(p.Detail, "too many streams for this client") {
		t.Errorf("problem = %+v", p)
	}
	if _, resp, err := websocket.Dial(ctx, srv.URL+"/api/v1/stream?all=1", &websocket.DialOptions{HTTPHeader: ana}); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("third stream over WebSocket: %v, %v; want 429", resp, err)
	}
	if got := testutil.ToFloat64(h.metrics.rejected.WithLabelValues(rejectMaxPerClient)); got != 2 {
		t.Errorf("rejected max_per_client = %v, want 2", got)
	}
	dial(t, ctx, srv, transportWS, "all=1", http.Header{"X-Client": {"bo"}}).hello(t, ctx)
	dial(t, ctx, srv, transportWS, "all=1", nil).hello(t, ctx)

	// A stream that ends gives its slot back.
	first.conn.Close(websocket.StatusNormalClosure, "")
	waitClients(t, ctx, h, 3)
	dial(t, ctx, srv, transportWS, "all=1", ana).hello(t, ctx)
}
