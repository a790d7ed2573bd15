package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

type alarm struct {
	ID, Machine, Metric, Kind, State string
	Acked                            bool   `json:"acknowledged"`
	AckedBy                          string `json:"acknowledgedBy"`
}

// awaitAlarm returns the next alarm message on ch.
func awaitAlarm(t *testing.T, c interface{ Done() <-chan struct{} }, ch <-chan message) alarm {
	t.Helper()
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("stream ended before an alarm")
			}
			if m.Type == "alarm" {
				var a alarm
				if err := json.Unmarshal(m.Data, &a); err != nil {
					t.Fatal(err)
				}
				return a
			}
		case <-c.Done():
			t.Fatal("no alarm on the stream")
		}
	}
}

// TestAlarms: a threshold from the registry raises an alarm that is pushed
// live, listed, shown in the machine's status, acknowledged once, cleared
// past the deadband, kept across a restart; silence raises an offline alarm.
func TestAlarms(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir, "--offline-after", "1s", "--lateness", "0s")
	c := ctx(t, 60*time.Second)
	if r := s.do("PUT", "/api/v1/machines/oven-02", "application/json", []byte(`{"thresholds":{"temp":{"high":90,"deadband":2}}}`)); r.status != 201 {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	live := subscribe(t, c, s, "machine=oven-02", false)
	// Explicit event times, a second apart: two samples of one metric at
	// the same millisecond are the same sample (the first one wins).
	ts := time.Now().Add(-time.Minute).UnixMilli()
	post := func(v float64) {
		t.Helper()
		ts += 1000
		if r := s.do("POST", "/api/v1/events", "application/json", []byte(fmt.Sprintf(`{"machineId":"oven-02","timestamp":%d,"temp":%g}`, ts, v))); r.status != 202 {
			t.Fatalf("post: %d %s", r.status, r.body)
		}
	}

	post(95)
	raised := awaitAlarm(t, c, live)
	if st := awaitStatus(t, c, live); st != (liveStatus{"online", true}) {
		t.Errorf("status pushed after the raise = %+v, want online in alarm", st)
	}
	if raised.Kind != "high" || raised.State != "active" || raised.Metric != "temp" {
		t.Fatalf("raised = %+v", raised)
	}
	var list struct {
		Alarms []alarm `json:"alarms"`
	}
	s.get("/api/v1/alarms?machine=oven-02").json(t, &list)
	if len(list.Alarms) != 1 || list.Alarms[0].ID != raised.ID {
		t.Errorf("active alarms = %+v, want [%s]", list.Alarms, raised.ID)
	}
	var m liveStatus
	s.get("/api/v1/machines/oven-02").json(t, &m)
	if m != (liveStatus{"online", true}) {
		t.Errorf("machine status = %+v, want online in alarm", m)
	}

	if r := s.do("POST", "/api/v1/alarms/"+raised.ID+"/ack", "application/json", []byte(`{"by":"ana","note":"door open"}`)); r.status != 200 {
		t.Fatalf("ack: %d %s", r.status, r.body)
	}
	if a := awaitAlarm(t, c, live); !a.Acked || a.AckedBy != "ana" {
		t.Errorf("ack pushed = %+v", a)
	}
	if r := s.do("POST", "/api/v1/alarms/"+raised.ID+"/ack", "application/json", []byte(`{"by":"bo"}`)); r.status != 409 {
		t.Errorf("second ack: %d, want 409", r.status)
	}
	if r := s.do("POST", "/api/v1/alarms/999/ack", "application/json", nil); r.status != 404 {
		t.Errorf("ack unknown: %d, want 404", r.status)
	}

	post(89) // within the deadband: still active
	post(87) // past it: cleared
	if a := awaitAlarm(t, c, live); a.ID != raised.ID || a.State != "cleared" {
		t.Errorf("cleared = %+v", a)
	}
	if st := awaitStatus(t, c, live); st != (liveStatus{"online", false}) {
		t.Errorf("status after the clear = %+v, want online, no alarm", st)
	}
	// Silence: after --offline-after the machine gets an offline alarm.
	if a := awaitAlarm(t, c, live); a.Kind != "offline" || a.State != "active" {
		t.Errorf("offline = %+v", a)
	}
	// Offline is liveness, not an alarm: the fleet counts it as offline.
	if st := awaitStatus(t, c, live); st != (liveStatus{"offline", false}) {
		t.Errorf("status with the offline alarm = %+v, want offline, no alarm", st)
	}
	s.get("/api/v1/machines/oven-02").json(t, &m)
	if m != (liveStatus{"offline", false}) {
		t.Errorf("machine status while offline = %+v, want offline, no alarm", m)
	}

	s.stop()
	s2 := start(t, dir)
	s2.get("/api/v1/alarms?state=all&machine=oven-02").json(t, &list)
	if len(list.Alarms) != 2 || list.Alarms[1].ID != raised.ID || list.Alarms[1].State != "cleared" || !list.Alarms[1].Acked {
		t.Errorf("after restart = %+v; want the offline alarm and the cleared, acknowledged high alarm", list.Alarms)
	}
}

// liveStatus is a machine's liveness and alarm flag, as status messages and
// the machine JSON carry them.
type liveStatus struct {
	Status string `json:"status"`
	Alarm  bool   `json:"alarm"`
}

// awaitStatus returns the status of the next status message on ch.
func awaitStatus(t *testing.T, c interface{ Done() <-chan struct{} }, ch <-chan message) liveStatus {
	t.Helper()
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("stream ended before a status")
			}
			if m.Type == "status" {
				var st liveStatus
				if err := json.Unmarshal(m.Data, &st); err != nil {
					t.Fatal(err)
				}
				return st
			}
		case <-c.Done():
			t.Fatal("no status on the stream")
		}
	}
}
