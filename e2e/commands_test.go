package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

type e2eCommand struct {
	ID      string `json:"id"`
	Machine string `json:"machine"`
	Name    string `json:"name"`
	State   string `json:"state"`
	History []struct {
		State string `json:"state"`
		Via   string `json:"via"`
	} `json:"history"`
}

// awaitCommand returns the first command message on ch in state.
func awaitCommand(t *testing.T, c context.Context, ch <-chan message, id, state string) e2eCommand {
	t.Helper()
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("stream ended")
			}
			if m.Type != "command" {
				continue
			}
			var cmd e2eCommand
			if err := json.Unmarshal(m.Data, &cmd); err != nil {
				t.Fatal(err)
			}
			if cmd.ID == id && cmd.State == state {
				return cmd
			}
		case <-c.Done():
			t.Fatalf("no command %s %s on the stream", id, state)
		}
	}
}

// TestCommandsLifecycle: an operator's command reaches the stream, a
// device fetches it over HTTP and answers; an idempotent repeat creates
// nothing; after kill -9 the commands are still there, and one left open
// expires on time and is streamed.
func TestCommandsLifecycle(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	c := ctx(t, 60*time.Second)
	entry := `{"name":"Press 7","commands":{"stop":{"description":"stop the press"},` +
		`"reset":{"params":{"type":"object","required":["counter"],"properties":{"counter":{"type":"string","enum":["parts"]}}}}}}`
	if r := s.do("PUT", "/api/v1/machines/press-07", "application/json", []byte(entry)); r.status != 201 {
		t.Fatalf("PUT machine: %d %s", r.status, r.body)
	}
	ws := subscribe(t, c, s, "machine=press-07", false)

	r := s.do("POST", "/api/v1/machines/press-07/commands", "application/json", []byte(`{"name":"reset","params":{"counter":"parts"}}`),
		"Idempotency-Key", "op-1")
	if r.status != 202 {
		t.Fatalf("POST command: %d %s", r.status, r.body)
	}
	var cmd e2eCommand
	r.json(t, &cmd)
	if loc := r.header.Get("Location"); loc != "/api/v1/machines/press-07/commands/"+cmd.ID {
		t.Errorf("Location %q", loc)
	}
	awaitCommand(t, c, ws, cmd.ID, "pending")
	if r := s.do("POST", "/api/v1/machines/press-07/commands", "application/json", []byte(`{"name":"reset","params":{"counter":"parts"}}`),
		"Idempotency-Key", "op-1"); r.status != 200 {
		t.Errorf("repeat with the key: %d %s, want 200", r.status, r.body)
	}
	if r := s.do("POST", "/api/v1/machines/press-07/commands", "application/json", []byte(`{"name":"reset","params":{"counter":"bolts"}}`)); r.status != 422 {
		t.Errorf("params against the schema: %d %s, want 422", r.status, r.body)
	}

	// The device's fetch (auth is open: every scope).
	var fetched struct {
		Commands []e2eCommand `json:"commands"`
	}
	s.get("/api/v1/machines/press-07/commands?state=pending&wait=5s").json(t, &fetched)
	if len(fetched.Commands) != 1 || fetched.Commands[0].ID != cmd.ID || fetched.Commands[0].State != "delivered" {
		t.Fatalf("fetch = %+v, want %s delivered", fetched.Commands, cmd.ID)
	}
	awaitCommand(t, c, ws, cmd.ID, "delivered")
	if r := s.do("POST", "/api/v1/machines/press-07/commands/"+cmd.ID+"/response", "application/json",
		[]byte(`{"state":"succeeded","result":{"parts":0}}`)); r.status != 200 {
		t.Fatalf("response: %d %s", r.status, r.body)
	}
	awaitCommand(t, c, ws, cmd.ID, "succeeded")
	if r := s.do("POST", "/api/v1/machines/press-07/commands/"+cmd.ID+"/response", "application/json",
		[]byte(`{"state":"failed"}`)); r.status != 409 {
		t.Errorf("an answer after the end: %d %s, want 409", r.status, r.body)
	}

	// One left open, then kill -9: it is kept, and expires on time.
	r = s.do("POST", "/api/v1/machines/press-07/commands", "application/json", []byte(`{"name":"stop","timeout":"3s"}`))
	var open e2eCommand
	r.json(t, &open)
	s.kill()
	s2 := start(t, dir)
	ws2 := subscribe(t, c, s2, "machine=press-07", false)
	var got e2eCommand
	s2.get("/api/v1/machines/press-07/commands/"+cmd.ID).json(t, &got)
	if got.State != "succeeded" || len(got.History) != 3 {
		t.Errorf("after kill -9: %+v, want succeeded after 3 transitions", got)
	}
	s2.get("/api/v1/machines/press-07/commands/"+open.ID).json(t, &got)
	if got.State != "pending" && got.State != "expired" {
		t.Errorf("the open command after kill -9: %s", got.State)
	}
	if got.State == "pending" {
		awaitCommand(t, c, ws2, open.ID, "expired")
	}
}
