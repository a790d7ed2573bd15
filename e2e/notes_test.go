package e2e

import (
	"encoding/json"
	"testing"
	"time"
)

// TestNotesLive: a note posted by one client arrives on another client's
// stream, is listed, and survives a restart.
func TestNotesLive(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	c := ctx(t, 30*time.Second)
	if r := s.do("PUT", "/api/v1/machines/press-07", "application/json", []byte(`{"name":"Press 7"}`)); r.status != 201 {
		t.Fatalf("PUT machine: %d %s", r.status, r.body)
	}
	ws := subscribe(t, c, s, "machine=press-07", false)
	sse := subscribe(t, c, s, "machine=press-07", true)
	other := subscribe(t, c, s, "machine=oven-01", true)

	r := s.do("POST", "/api/v1/machines/press-07/notes", "application/json", []byte(`{"text":"bearing noise on the left side","author":"ana"}`))
	if r.status != 201 {
		t.Fatalf("POST note: %d %s", r.status, r.body)
	}
	type note struct {
		ID, Machine, Text, Author string
	}
	var posted note
	r.json(t, &posted)

	for name, ch := range map[string]<-chan message{"websocket": ws, "sse": sse} {
		got := awaitNote(t, c, ch)
		var n note
		if err := json.Unmarshal(got, &n); err != nil {
			t.Fatal(err)
		}
		if n != posted {
			t.Errorf("%s: note %+v, want %+v", name, n, posted)
		}
	}
	// The other machine's subscriber: its next data message is oven-01's
	// sample, published after the note, so a misrouted note would come first.
	if r := s.do("POST", "/api/v1/events", "application/json", []byte(`{"machineId":"oven-01","temp":180}`)); r.status != 202 {
		t.Fatalf("post: %d %s", r.status, r.body)
	}
	for done := false; !done; {
		select {
		case m := <-other:
			switch m.Type {
			case "note":
				t.Fatalf("a subscriber of another machine got the note: %+v", m)
			case "samples":
				done = true
			}
		case <-c.Done():
			t.Fatal("oven-01's subscriber got nothing")
		}
	}

	if r := s.do("POST", "/api/v1/machines/press-07/notes", "application/json", []byte(`{"text":""}`)); r.status != 400 {
		t.Errorf("empty note: %d %s, want 400", r.status, r.body)
	}
	if r := s.do("POST", "/api/v1/machines/nope/notes", "application/json", []byte(`{"text":"x"}`)); r.status != 404 {
		t.Errorf("note on unknown machine: %d, want 404", r.status)
	}

	s.stop()
	s2 := start(t, dir)
	var list struct {
		Notes []note `json:"notes"`
	}
	s2.get("/api/v1/machines/press-07/notes").json(t, &list)
	if len(list.Notes) != 1 || list.Notes[0] != posted {
		t.Errorf("notes after restart = %+v, want [%+v]", list.Notes, posted)
	}
}

// awaitNote returns the data of the first note message on ch.
func awaitNote(t *testing.T, c interface{ Done() <-chan struct{} }, ch <-chan message) json.RawMessage {
	t.Helper()
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("stream ended before the note")
			}
			if m.Type == "note" {
				return m.Data
			}
		case <-c.Done():
			t.Fatal("no note on the stream")
		}
	}
}
