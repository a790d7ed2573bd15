package api

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/twin"
)

func TestStatesRoute(t *testing.T) {
	a := newTestAPI(t, &fakeLog{real: eventlog.New(10, nil)})
	now := time.UnixMilli(100_000)
	a.clock = func() time.Time { return now }
	mem := storetest.NewMemory()
	states := &mem.MemoryStates
	a.store = mem
	if _, _, err := a.registry.Put("m", twin.Info{}); err != nil {
		t.Fatal(err)
	}
	ch := func(ts int64, v string) store.StateChange {
		return store.StateChange{Machine: "m", Name: "state", Time: ts, Value: v}
	}
	if err := states.AppendStates(context.Background(), []store.StateChange{
		ch(10_000, "IDLE"), ch(50_000, "RUNNING"), ch(60_000, "DOWN"), ch(70_000, "RUNNING"),
	}); err != nil {
		t.Fatal(err)
	}
	get := func(query string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/machines/m/states?"+query, nil))
		return rec
	}

	t.Run("clipped, to beyond now", func(t *testing.T) {
		rec := get("name=state&from=40000&to=200000")
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		var got statesResponse
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		want := statesResponse{Machine: "m", Name: "state", From: 40_000, To: 200_000,
			Intervals: []stateInterval{
				{Value: "IDLE", From: 40_000, To: 50_000, DurationMs: 10_000},
				{Value: "RUNNING", From: 50_000, To: 60_000, DurationMs: 10_000},
				{Value: "DOWN", From: 60_000, To: 70_000, DurationMs: 10_000},
				{Value: "RUNNING", From: 70_000, To: 100_000, DurationMs: 30_000},
			},
			Totals: map[string]int64{"IDLE": 10_000, "RUNNING": 40_000, "DOWN": 10_000}}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("states (-got +want):\n%s", diff)
		}
	})
	t.Run("default last 24h, empty series", func(t *testing.T) {
		rec := get("name=mode")
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"intervals":[],"totals":{}`) {
			t.Errorf("empty series: %d %s", rec.Code, rec.Body)
		}
		if want := `"from":` + "-86300000"; !strings.Contains(rec.Body.String(), want) {
			t.Errorf("body %s lacks %s", rec.Body, want)
		}
	})
	for _, tt := range []struct {
		query string
		names []string
	}{
		{"", []string{"name"}},
		{"name=state&from=soon&to=later", []string{"to", "from"}},
		{"name=state&from=2000&to=1000", []string{"from"}},
	} {
		t.Run("bad "+tt.query, func(t *testing.T) {
			rec := get(tt.query)
			if rec.Code != 400 || rec.Header().Get("Content-Type") != "application/problem+json" {
				t.Fatalf("status %d %s, want a 400 problem", rec.Code, rec.Header().Get("Content-Type"))
			}
			var p problem.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, ip := range p.InvalidParams {
				names = append(names, ip.Name)
			}
			if diff := cmp.Diff(names, tt.names); diff != "" {
				t.Errorf("invalidParams names (-got +want):\n%s", diff)
			}
		})
	}
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/machines/nope/states?name=state", nil))
	if rec.Code != 404 {
		t.Errorf("unknown machine: %d %s; want 404", rec.Code, rec.Body)
	}
	a.store = struct{ store.Store }{storetest.NewMemory()} // hides its StateStore
	if rec := get("name=state"); rec.Code != 503 {
		t.Errorf("a store without state series: %d %s; want 503", rec.Code, rec.Body)
	}
}
