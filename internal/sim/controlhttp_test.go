package sim

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// seenRequest is what a control server was asked.
type seenRequest struct {
	Method, URI, ContentType, Body string
}

// controlServer answers every request with status and body, and records
// them.
type controlServer struct {
	mu     sync.Mutex
	seen   []seenRequest
	status int
	body   string
}

func (s *controlServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.seen = append(s.seen, seenRequest{r.Method, r.RequestURI, r.Header.Get("Content-Type"), string(b)})
	status, body := s.status, s.body
	s.mu.Unlock()
	if status >= 400 {
		w.Header().Set("Content-Type", "application/problem+json")
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func startControl(t *testing.T, status int, body string) (*controlServer, *HTTPControl) {
	t.Helper()
	srv := &controlServer{status: status, body: body}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return srv, NewHTTPControl(ts.URL+"/", ts.Client(), 20*time.Second)
}

func TestHTTPControlDesired(t *testing.T) {
	for _, tt := range []struct {
		name        string
		status      int
		body        string
		wantVersion uint64
		wantDoc     map[string]any
	}{
		{"changed", 200, `{"machine":"press 01","version":8,"desired":{"tempSetpoint":180,"mode":"auto"}}`, 8, map[string]any{"tempSetpoint": 180.0, "mode": "auto"}},
		{"timeout with the current document", 200, `{"machine":"press 01","version":7,"desired":{"mode":"auto"}}`, 7, map[string]any{"mode": "auto"}},
		{"never set", 200, `{"machine":"press 01","version":0,"desired":null}`, 0, map[string]any{}},
		{"not modified", 304, ``, 7, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, c := startControl(t, tt.status, tt.body)
			v, doc, err := c.Desired(t.Context(), "press 01", 7)
			if err != nil {
				t.Fatal(err)
			}
			if v != tt.wantVersion {
				t.Errorf("version = %d, want %d", v, tt.wantVersion)
			}
			if diff := cmp.Diff(doc, tt.wantDoc); diff != "" {
				t.Errorf("desired (-got +want):\n%s", diff)
			}
			want := []seenRequest{{"GET", "/api/v1/machines/press%2001/twin/desired?version=7&wait=20s", "", ""}}
			if diff := cmp.Diff(srv.seen, want); diff != "" {
				t.Errorf("requests (-got +want):\n%s", diff)
			}
		})
	}
}

func TestHTTPControlReportAndRespond(t *testing.T) {
	srv, c := startControl(t, 200, `{}`)
	if err := c.Report(t.Context(), "m/1", map[string]any{"mode": "auto", "tempSetpoint": nil}); err != nil {
		t.Fatal(err)
	}
	if err := c.Respond(t.Context(), "m/1", "c-1", Succeeded, map[string]any{"state": "STOPPED"}, ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Respond(t.Context(), "m/1", "c-2", Rejected, nil, "unknown command"); err != nil {
		t.Fatal(err)
	}
	want := []seenRequest{
		{"PATCH", "/api/v1/machines/m%2F1/twin/reported", "application/merge-patch+json", `{"mode":"auto","tempSetpoint":null}`},
		{"POST", "/api/v1/machines/m%2F1/commands/c-1/response", "application/json", `{"state":"succeeded","result":{"state":"STOPPED"}}`},
		{"POST", "/api/v1/machines/m%2F1/commands/c-2/response", "application/json", `{"state":"rejected","reason":"unknown command"}`},
	}
	if diff := cmp.Diff(srv.seen, want); diff != "" {
		t.Errorf("requests (-got +want):\n%s", diff)
	}
}

func TestHTTPControlCommands(t *testing.T) {
	want := []Cmd{{ID: "c-1", Name: "reset", Params: map[string]any{"counter": "parts"}}, {ID: "c-2", Name: "stop"}}
	for _, tt := range []struct {
		name, body string
		want       []Cmd
	}{
		{"object", `{"commands":[{"id":"c-1","machine":"m1","name":"reset","params":{"counter":"parts"},"state":"delivered"},{"id":"c-2","name":"stop"}]}`, want},
		{"array", `[{"id":"c-1","name":"reset","params":{"counter":"parts"}},{"id":"c-2","name":"stop"}]`, want},
		{"none", `{"commands":[]}`, []Cmd{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, c := startControl(t, 200, tt.body)
			got, err := c.Commands(t.Context(), "m1", 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("commands (-got +want):\n%s", diff)
			}
			wantReq := []seenRequest{{"GET", "/api/v1/machines/m1/commands?state=pending&wait=30s", "", ""}}
			if diff := cmp.Diff(srv.seen, wantReq); diff != "" {
				t.Errorf("requests (-got +want):\n%s", diff)
			}
		})
	}
	t.Run("command without an id", func(t *testing.T) {
		_, c := startControl(t, 200, `[{"name":"stop"}]`)
		if _, err := c.Commands(t.Context(), "m1", time.Second); err == nil {
			t.Error("Commands = nil error, want one")
		}
	})
}

// TestHTTPControlErrors: an error status is a *StatusError with the
// problem's detail; a body that is not JSON is an error.
func TestHTTPControlErrors(t *testing.T) {
	_, c := startControl(t, 409, `{"title":"Conflict","detail":"command c-1 is expired"}`)
	err := c.Respond(t.Context(), "m1", "c-1", Succeeded, nil, "")
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != 409 || se.Detail != "command c-1 is expired" {
		t.Errorf("Respond = %v, want a 409 *StatusError with the detail", err)
	}
	_, c = startControl(t, 200, `not json`)
	if _, _, err := c.Desired(t.Context(), "m1", 0); err == nil {
		t.Error("Desired with a bad body = nil error, want one")
	}
}

// TestHTTPControlBoundedLongPolls: the device side of a 50-machine fleet
// with ControlConfig.Machines 3 holds exactly two long-polls per machine —
// desired and commands — of the first three machines, after each reported
// its boot state.
func TestHTTPControlBoundedLongPolls(t *testing.T) {
	type arrival struct{ machine, route string }
	arrivals := make(chan arrival, 100)
	mux := http.NewServeMux()
	mux.HandleFunc("PATCH /api/v1/machines/{id}/twin/reported", func(w http.ResponseWriter, r *http.Request) {
		arrivals <- arrival{r.PathValue("id"), "reported"}
		w.WriteHeader(http.StatusNoContent)
	})
	longPoll := func(route string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("wait") != "30s" {
				t.Errorf("%s wait = %q, want 30s", route, r.URL.Query().Get("wait"))
			}
			arrivals <- arrival{r.PathValue("id"), route}
			<-r.Context().Done() // nothing changes: hold until the client goes
		}
	}
	mux.HandleFunc("GET /api/v1/machines/{id}/twin/desired", longPoll("desired"))
	mux.HandleFunc("GET /api/v1/machines/{id}/commands", longPoll("commands"))
	ts := httptest.NewServer(mux)
	defer ts.Close()

	s := New(Config{Machines: 50, Seed: 1}, nil, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- s.RunControl(ctx, NewHTTPControl(ts.URL, ts.Client(), 30*time.Second), ControlConfig{Machines: 3}, nil)
	}()
	got := map[arrival]int{}
	for range 9 { // 3 × (reported, desired, commands)
		got[<-arrivals]++
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("RunControl = %v", err)
	}
	want := map[arrival]int{}
	for _, m := range s.Machines()[:3] {
		for _, route := range []string{"reported", "desired", "commands"} {
			want[arrival{m.ID, route}] = 1
		}
	}
	if diff := cmp.Diff(got, want, cmp.AllowUnexported(arrival{})); diff != "" {
		t.Errorf("requests (-got +want):\n%s", diff)
	}
	select {
	case a := <-arrivals:
		t.Errorf("an extra request: %+v", a)
	default:
	}
}
