package app

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestStatesEndToEnd: states sent over HTTP reach the store as changes
// (the states route), the twin (latest) and the live stream ("state"
// messages), on the embedded server as wired by New.
func TestStatesEndToEnd(t *testing.T) {
	o := newObservedApp(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	machine := fmt.Sprintf("states-%d", time.Now().UnixNano())
	req, err := http.NewRequestWithContext(ctx, "GET", o.url+"/api/v1/stream?machine="+machine, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := o.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "data:") && strings.Contains(line, `"type":"state"`) {
				got <- strings.TrimSpace(strings.TrimPrefix(line, "data:"))
			}
		}
	}()

	t0 := time.Now().Add(-time.Minute).UnixMilli()
	body := fmt.Sprintf(`[{"machineId":%q,"timestamp":%d,"state":"RUNNING","temp":1},
		{"machineId":%q,"timestamp":%d,"states":{"state":"RUNNING"}},
		{"machineId":%q,"timestamp":%d,"state":"DOWN"}]`, machine, t0, machine, t0+1000, machine, t0+2000)
	post, err := o.client.Post(o.url+"/api/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(post.Body)
	post.Body.Close()
	if post.StatusCode != http.StatusAccepted {
		t.Fatalf("ingest: %d %s", post.StatusCode, b)
	}

	var values []string
	for len(values) < 2 {
		select {
		case m := <-got:
			var msg struct {
				Machine string `json:"machine"`
				Data    struct {
					Name, Value string
					TS          int64
				} `json:"data"`
			}
			if err := json.Unmarshal([]byte(m), &msg); err != nil {
				t.Fatalf("state message %s: %v", m, err)
			}
			if msg.Machine != machine || msg.Data.Name != "state" {
				t.Fatalf("state message %s, want one of machine %s, name state", m, machine)
			}
			values = append(values, fmt.Sprintf("%s@%d", msg.Data.Value, msg.Data.TS-t0))
		case <-ctx.Done():
			t.Fatalf("state messages so far %v, want 2", values)
		}
	}
	if diff := cmp.Diff(values, []string{"RUNNING@0", "DOWN@2000"}); diff != "" {
		t.Errorf("state messages (-got +want):\n%s", diff)
	}

	raw, _ := o.get(t, fmt.Sprintf("/api/v1/machines/%s/states?name=state&from=%d&to=%d", machine, t0-1000, t0+3000), "")
	var states struct {
		Intervals []struct {
			Value      string
			From, To   int64
			DurationMs int64
		}
		Totals map[string]int64
	}
	if err := json.Unmarshal(raw, &states); err != nil {
		t.Fatal(err)
	}
	if len(states.Intervals) != 2 || states.Totals["RUNNING"] != 2000 || states.Totals["DOWN"] != 1000 {
		t.Errorf("states = %s, want RUNNING 2000 ms then DOWN 1000 ms", raw)
	}

	raw, _ = o.get(t, "/api/v1/machines/"+machine+"/latest", "")
	var latest struct {
		States map[string]struct {
			Value string
			TS    int64
		}
	}
	if err := json.Unmarshal(raw, &latest); err != nil {
		t.Fatal(err)
	}
	if s := latest.States["state"]; s.Value != "DOWN" || s.TS != t0+2000 {
		t.Errorf("latest states = %s, want state DOWN at the last event", raw)
	}
}
