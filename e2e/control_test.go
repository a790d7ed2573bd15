package e2e

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// twinDoc is GET /api/v1/machines/{id}/twin.
type twinDoc struct {
	Machine         string         `json:"machine"`
	Desired         map[string]any `json:"desired"`
	Reported        map[string]any `json:"reported"`
	Delta           map[string]any `json:"delta"`
	Version         uint64         `json:"version"`
	ReportedVersion uint64         `json:"reportedVersion"`
}

// command is a command as the API shows it.
type command struct {
	ID      string         `json:"id"`
	Machine string         `json:"machine"`
	Name    string         `json:"name"`
	Params  map[string]any `json:"params"`
	State   string         `json:"state"`
	Result  any            `json:"result"`
	Reason  string         `json:"reason"`
	History []struct {
		State string `json:"state"`
	} `json:"history"`
}

// device is a real MQTT client (paho, not twinline's code) standing for a
// machine: what it receives arrives on msgs.
type device struct {
	c    *paho.Client
	msgs chan *paho.Publish
}

func connectDevice(t *testing.T, ctx context.Context, addr, id string, topics ...string) *device {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{msgs: make(chan *paho.Publish, 64)}
	d.c = paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: id, PingHandler: quietPinger{},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.msgs <- pr.Packet
			return true, nil
		}}})
	if ca, err := d.c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 0, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("device %s: connect: %v %+v", id, err, ca)
	}
	t.Cleanup(func() { d.c.Disconnect(&paho.Disconnect{}) })
	var subs []paho.SubscribeOptions
	for _, tp := range topics {
		subs = append(subs, paho.SubscribeOptions{Topic: tp, QoS: 1})
	}
	sa, err := d.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if err != nil {
		t.Fatalf("device %s: subscribe: %v", id, err)
	}
	for i, r := range sa.Reasons {
		if r > 1 {
			t.Fatalf("device %s: SUBACK %s: reason %#x", id, topics[i], r)
		}
	}
	return d
}

// next returns the next message on topic (others are skipped).
func (d *device) next(t *testing.T, ctx context.Context, topic string) *paho.Publish {
	t.Helper()
	for {
		select {
		case p := <-d.msgs:
			if p.Topic == topic {
				return p
			}
		case <-ctx.Done():
			t.Fatalf("no message on %s", topic)
		}
	}
}

func (d *device) publish(t *testing.T, ctx context.Context, topic, payload string) {
	t.Helper()
	pr, err := d.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	if pr != nil && pr.ReasonCode >= 0x80 {
		t.Fatalf("publish %s: PUBACK reason %#x", topic, pr.ReasonCode)
	}
}

func putMachine(t *testing.T, s *server, id, body string) {
	t.Helper()
	if r := s.do("PUT", "/api/v1/machines/"+id, "application/json", []byte(body)); r.status/100 != 2 {
		t.Fatalf("PUT machine %s: %d %s", id, r.status, r.body)
	}
}

const controlEntry = `{"site":"plant","line":"l1",
	"desiredSchema":{"type":"object","properties":{"tempSetpoint":{"type":"number","minimum":20,"maximum":250},"mode":{"type":"string","enum":["auto","manual"]}}},
	"commands":{"stop":{},"calibrate":{"params":{"type":"object","properties":{"probe":{"type":"string","enum":["a","b"]}},"required":["probe"]}}}}`

// TestTwinDesiredOverMQTT: PATCH desired → a device (paho) gets the retained
// document → reports → delta empty, seen on the stream; a device that
// connects afterwards gets the retained state at once; If-Match and the
// schema are enforced.
func TestTwinDesiredOverMQTT(t *testing.T) {
	mqttAddr := freeAddr(t)
	s := start(t, "", "--mqtt-listen", mqttAddr)
	c := ctx(t, 30*time.Second)
	putMachine(t, s, "press-07", controlEntry)
	base := "twinline/plant/l1/press-07"
	dev := connectDevice(t, c, mqttAddr, "press-07", base+"/desired", base+"/desired/delta")
	stream := subscribe(t, c, s, "machine=press-07", false)

	// Schema and If-Match.
	r := s.do("PATCH", "/api/v1/machines/press-07/twin/desired", "application/merge-patch+json", []byte(`{"tempSetpoint":400,"mode":"turbo"}`))
	if r.status != 422 || !strings.Contains(string(r.body), "tempSetpoint") || !strings.Contains(string(r.body), "mode") {
		t.Errorf("schema violation: %d %s, want 422 naming tempSetpoint and mode", r.status, r.body)
	}
	r = s.do("PATCH", "/api/v1/machines/press-07/twin/desired", "application/merge-patch+json", []byte(`{"tempSetpoint":180}`), "If-Match", `"5"`)
	if r.status != 412 {
		t.Errorf("stale If-Match: %d %s, want 412", r.status, r.body)
	}
	sent := time.Now()
	r = s.do("PATCH", "/api/v1/machines/press-07/twin/desired", "application/merge-patch+json", []byte(`{"tempSetpoint":180,"mode":"auto"}`), "If-Match", `"0"`)
	if r.status != 200 {
		t.Fatalf("PATCH desired: %d %s", r.status, r.body)
	}
	var tw twinDoc
	r.json(t, &tw)
	if tw.Version != 1 || tw.Delta["tempSetpoint"] != 180.0 {
		t.Fatalf("after PATCH: %+v, want version 1 and tempSetpoint in delta", tw)
	}

	// The device gets the document, with its version.
	var doc struct {
		Version uint64         `json:"version"`
		Desired map[string]any `json:"desired"`
	}
	p := dev.next(t, c, base+"/desired")
	if err := json.Unmarshal(p.Payload, &doc); err != nil || doc.Version != 1 || doc.Desired["tempSetpoint"] != 180.0 {
		t.Fatalf("desired on MQTT: %s, want version 1 tempSetpoint 180", p.Payload)
	}
	// It reports; the delta closes, and the stream shows it.
	dev.publish(t, c, base+"/reported", `{"tempSetpoint":180,"mode":"auto","fw":"1.2"}`)
	for {
		var m message
		select {
		case m = <-stream:
		case <-c.Done():
			t.Fatal("the stream never showed the twin with an empty delta")
		}
		if m.Type != "twin" {
			continue
		}
		var got twinDoc
		if err := json.Unmarshal(m.Data, &got); err != nil {
			t.Fatal(err)
		}
		if got.ReportedVersion > 0 && len(got.Delta) == 0 {
			t.Logf("PATCH desired → device → reported → stream: %s", time.Since(sent))
			break
		}
	}
	r = s.get("/api/v1/machines/press-07/twin")
	tw = twinDoc{} // json.Unmarshal merges into a map it finds
	r.json(t, &tw)
	if r.status != 200 || len(tw.Delta) != 0 || tw.Reported["fw"] != "1.2" || r.header.Get("ETag") == "" {
		t.Errorf("GET twin: %d %+v ETag %q, want an empty delta, fw reported, an ETag", r.status, tw, r.header.Get("ETag"))
	}

	// A device connecting later gets the retained state at once.
	late := connectDevice(t, c, mqttAddr, "press-07-late", base+"/desired")
	p = late.next(t, c, base+"/desired")
	if err := json.Unmarshal(p.Payload, &doc); err != nil || doc.Version != 1 || !p.Retain {
		t.Errorf("late device: %s (retain %v), want version 1, retained", p.Payload, p.Retain)
	}

	// Long-poll: answers once the version passes 1.
	done := make(chan response, 1)
	go func() { done <- s.get("/api/v1/machines/press-07/twin/desired?version=1&wait=20s") }()
	select {
	case r := <-done:
		t.Fatalf("long-poll answered before a change: %d %s", r.status, r.body)
	case <-time.After(200 * time.Millisecond):
	}
	if r := s.do("PATCH", "/api/v1/machines/press-07/twin/desired", "application/merge-patch+json", []byte(`{"mode":null}`)); r.status != 200 {
		t.Fatalf("PATCH: %d %s", r.status, r.body)
	}
	select {
	case r := <-done:
		var got struct {
			Version uint64         `json:"version"`
			Desired map[string]any `json:"desired"`
		}
		r.json(t, &got)
		if _, has := got.Desired["mode"]; got.Version != 2 || has {
			t.Errorf("long-poll: %s, want version 2 without mode", r.body)
		}
	case <-c.Done():
		t.Fatal("long-poll never answered")
	}
}

// TestCommandsOverMQTT: a command reaches a device, is delivered on its
// PUBACK, answered on the response topic; rejected, failed with a result,
// and expired at each step; unknown commands and bad params get 422; an
// Idempotency-Key repeat returns the same command.
func TestCommandsOverMQTT(t *testing.T) {
	mqttAddr := freeAddr(t)
	s := start(t, "", "--mqtt-listen", mqttAddr)
	c := ctx(t, 60*time.Second)
	putMachine(t, s, "press-08", controlEntry)
	base := "twinline/plant/l1/press-08"
	dev := connectDevice(t, c, mqttAddr, "press-08", base+"/commands/+")

	create := func(body string, header ...string) (command, int) {
		t.Helper()
		r := s.do("POST", "/api/v1/machines/press-08/commands", "application/json", []byte(body), header...)
		var cmd command
		if r.status/100 == 2 {
			r.json(t, &cmd)
			if r.status == 202 && r.header.Get("Location") != "/api/v1/machines/press-08/commands/"+cmd.ID {
				t.Errorf("Location %q for command %s", r.header.Get("Location"), cmd.ID)
			}
		}
		return cmd, r.status
	}
	get := func(id string) command {
		t.Helper()
		var cmd command
		r := s.get("/api/v1/machines/press-08/commands/" + id)
		if r.status != 200 {
			t.Fatalf("GET command %s: %d %s", id, r.status, r.body)
		}
		r.json(t, &cmd)
		return cmd
	}
	// await polls the command until it is in state (the answers travel
	// over MQTT, asynchronously).
	await := func(id, state string) command {
		t.Helper()
		for {
			cmd := get(id)
			if cmd.State == state {
				return cmd
			}
			select {
			case <-c.Done():
				t.Fatalf("command %s stayed %s, want %s", id, cmd.State, state)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	if _, st := create(`{"name":"explode"}`); st != 422 {
		t.Errorf("unknown command: %d, want 422", st)
	}
	if _, st := create(`{"name":"calibrate","params":{"probe":"z"}}`); st != 422 {
		t.Errorf("bad params: %d, want 422", st)
	}

	cases := []struct {
		name    string
		answers []string // responses the device sends, in order
		want    string
		result  bool
	}{
		{"succeeded", []string{`{"state":"accepted"}`, `{"state":"succeeded","result":{"stoppedAt":12}}`}, "succeeded", true},
		{"rejected", []string{`{"state":"rejected","reason":"door open"}`}, "rejected", false},
		{"failed", []string{`{"state":"accepted"}`, `{"state":"failed","result":{"code":7}}`}, "failed", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd, st := create(`{"name":"stop","timeout":"30s"}`)
			if st != 202 || cmd.State != "pending" {
				t.Fatalf("create: %d %+v", st, cmd)
			}
			p := dev.next(t, c, base+"/commands/"+cmd.ID)
			var got struct {
				ID, Name string
			}
			if err := json.Unmarshal(p.Payload, &got); err != nil || got.ID != cmd.ID || got.Name != "stop" {
				t.Fatalf("command on MQTT: %s", p.Payload)
			}
			await(cmd.ID, "delivered")
			for _, a := range tc.answers {
				dev.publish(t, c, base+"/commands/"+cmd.ID+"/response", a)
			}
			done := await(cmd.ID, tc.want)
			if tc.result && done.Result == nil {
				t.Errorf("no result: %+v", done)
			}
			var states []string
			for _, h := range done.History {
				states = append(states, h.State)
			}
			if states[0] != "pending" || states[1] != "delivered" || states[len(states)-1] != tc.want {
				t.Errorf("history %v", states)
			}
		})
	}

	t.Run("idempotent", func(t *testing.T) {
		a, st := create(`{"name":"stop"}`, "Idempotency-Key", "k-1")
		if st != 202 {
			t.Fatalf("create: %d", st)
		}
		b, st := create(`{"name":"stop"}`, "Idempotency-Key", "k-1")
		if st != 200 || b.ID != a.ID {
			t.Errorf("repeat: %d %s, want 200 and command %s", st, b.ID, a.ID)
		}
	})

	t.Run("expired", func(t *testing.T) {
		// Pending: no device listens on this machine.
		putMachine(t, s, "press-09", controlEntry)
		r := s.do("POST", "/api/v1/machines/press-09/commands", "application/json", []byte(`{"name":"stop","timeout":"1s"}`))
		var pending command
		r.json(t, &pending)
		// Delivered, never answered; accepted, never finished.
		delivered, _ := create(`{"name":"stop","timeout":"1s"}`)
		accepted, _ := create(`{"name":"stop","timeout":"2s"}`)
		dev.next(t, c, base+"/commands/"+accepted.ID)
		await(accepted.ID, "delivered")
		dev.publish(t, c, base+"/commands/"+accepted.ID+"/response", `{"state":"accepted"}`)
		await(accepted.ID, "accepted")
		for _, id := range []string{delivered.ID, accepted.ID} {
			await(id, "expired")
		}
		for {
			var cmd command
			s.get("/api/v1/machines/press-09/commands/"+pending.ID).json(t, &cmd)
			if cmd.State == "expired" {
				break
			}
			select {
			case <-c.Done():
				t.Fatalf("pending command never expired: %+v", cmd)
			case <-time.After(20 * time.Millisecond):
			}
		}
		// An answer after the end is refused.
		r = s.do("POST", "/api/v1/machines/press-08/commands/"+delivered.ID+"/response", "application/json", []byte(`{"state":"succeeded"}`))
		if r.status != 409 {
			t.Errorf("answer after expiry: %d %s, want 409", r.status, r.body)
		}
	})
}

// TestCommandsHTTPLongPoll: a device without MQTT fetches its pending
// commands by long-poll (which delivers them) and answers over HTTP.
func TestCommandsHTTPLongPoll(t *testing.T) {
	s := start(t, "")
	c := ctx(t, 30*time.Second)
	putMachine(t, s, "oven-01", controlEntry)
	fetched := make(chan response, 1)
	go func() { fetched <- s.get("/api/v1/machines/oven-01/commands?state=pending&wait=20s") }()
	select {
	case r := <-fetched:
		t.Fatalf("fetch answered before a command existed: %d %s", r.status, r.body)
	case <-time.After(200 * time.Millisecond):
	}
	r := s.do("POST", "/api/v1/machines/oven-01/commands", "application/json", []byte(`{"name":"calibrate","params":{"probe":"a"}}`))
	if r.status != 202 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var created command
	r.json(t, &created)
	var got []command
	select {
	case r := <-fetched:
		if err := json.Unmarshal(r.body, &got); err != nil {
			var wrapped struct {
				Commands []command `json:"commands"`
			}
			if err := json.Unmarshal(r.body, &wrapped); err != nil {
				t.Fatalf("fetch: %d %s", r.status, r.body)
			}
			got = wrapped.Commands
		}
	case <-c.Done():
		t.Fatal("the long-poll never returned the command")
	}
	if len(got) != 1 || got[0].ID != created.ID || got[0].Params["probe"] != "a" {
		t.Fatalf("fetched %+v, want command %s", got, created.ID)
	}
	var cmd command
	s.get("/api/v1/machines/oven-01/commands/"+created.ID).json(t, &cmd)
	if cmd.State != "delivered" {
		t.Errorf("after the fetch: %s, want delivered", cmd.State)
	}
	for _, a := range []string{`{"state":"accepted"}`, `{"state":"succeeded","result":{"offset":0.3}}`} {
		if r := s.do("POST", "/api/v1/machines/oven-01/commands/"+created.ID+"/response", "application/json", []byte(a)); r.status != 200 {
			t.Fatalf("response %s: %d %s", a, r.status, r.body)
		}
	}
	s.get("/api/v1/machines/oven-01/commands/"+created.ID).json(t, &cmd)
	if cmd.State != "succeeded" {
		t.Errorf("final state %s, want succeeded", cmd.State)
	}
}

// TestCommandSurvivesKill: a pending command outlives kill -9 and is
// delivered once to the device that connects after the restart.
func TestCommandSurvivesKill(t *testing.T) {
	dir := t.TempDir()
	mqttAddr := freeAddr(t)
	s := start(t, dir, "--mqtt-listen", mqttAddr)
	putMachine(t, s, "mill-03", controlEntry)
	r := s.do("POST", "/api/v1/machines/mill-03/commands", "application/json", []byte(`{"name":"stop","timeout":"10m"}`))
	if r.status != 202 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var created command
	r.json(t, &created)
	s.kill()

	s = start(t, dir, "--mqtt-listen", mqttAddr)
	c := ctx(t, 30*time.Second)
	base := "twinline/plant/l1/mill-03"
	dev := connectDevice(t, c, mqttAddr, "mill-03", base+"/commands/+")
	p := dev.next(t, c, base+"/commands/"+created.ID)
	if !strings.Contains(string(p.Payload), created.ID) {
		t.Fatalf("payload %s", p.Payload)
	}
	dev.publish(t, c, base+"/commands/"+created.ID+"/response", `{"state":"succeeded"}`)
	var cmd command
	for cmd.State != "succeeded" {
		s.get("/api/v1/machines/mill-03/commands/"+created.ID).json(t, &cmd)
		select {
		case <-c.Done():
			t.Fatalf("command %+v never succeeded", cmd)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Delivered once: nothing more arrives for it.
	select {
	case p := <-dev.msgs:
		if p.Topic == base+"/commands/"+created.ID {
			t.Errorf("the command was delivered twice")
		}
	case <-time.After(300 * time.Millisecond):
	}
}
