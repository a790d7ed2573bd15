package mqtt

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/auth"
)

func TestParseControlTopic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		topic string
		want  controlTopic
	}{
		{"twinline/lyon/a/m1/desired", controlTopic{kind: kindDesired, site: "lyon", line: "a", machine: "m1"}},
		{"twinline/_/_/m1/desired/delta", controlTopic{kind: kindDesired, site: "_", line: "_", machine: "m1"}},
		{"twinline/lyon/a/m1/reported", controlTopic{kind: kindReported, site: "lyon", line: "a", machine: "m1"}},
		{"twinline/lyon/a/m1/commands/c-1", controlTopic{kind: kindCommand, site: "lyon", line: "a", machine: "m1", cmdID: "c-1"}},
		{"twinline/lyon/a/m1/commands/c-1/response", controlTopic{kind: kindResponse, site: "lyon", line: "a", machine: "m1", cmdID: "c-1"}},
		{"twinline/lyon/a/m1/telemetry", controlTopic{}},
		{"twinline/lyon/a/m1/desired/other", controlTopic{}},
		{"twinline/lyon/a/m1/commands", controlTopic{}},
		{"twinline/lyon/a/m1/commands/c-1/other", controlTopic{}},
		{"twinline/lyon//m1/reported", controlTopic{}},
		{"twinline/+/+/+/reported", controlTopic{}},
		{"factory/lyon/a/m1/reported", controlTopic{}},
	}
	for _, tt := range tests {
		got := parseControlTopic(tt.topic)
		if diff := cmp.Diff(got, tt.want, cmp.AllowUnexported(controlTopic{})); diff != "" {
			t.Errorf("parseControlTopic(%q) (-got +want):\n%s", tt.topic, diff)
		}
	}
}

func TestControlTopics(t *testing.T) {
	t.Parallel()
	got := []string{
		DesiredTopic("lyon", "a", "m1"), DesiredDeltaTopic("", "", "m1"), ReportedTopic("lyon", "", "m1"),
		CommandTopic("lyon", "a", "m1", "c-1"), ResponseTopic("lyon", "a", "m1", "c-1"),
	}
	want := []string{
		"twinline/lyon/a/m1/desired", "twinline/_/_/m1/desired/delta", "twinline/lyon/_/m1/reported",
		"twinline/lyon/a/m1/commands/c-1", "twinline/lyon/a/m1/commands/c-1/response",
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("topics (-got +want):\n%s", diff)
	}
	// "_" is a valid level for the telemetry parser too.
	if _, err := ParseTopic(TelemetryTopic(level(""), level(""), "m1"), 64); err != nil {
		t.Errorf("telemetry topic with _ levels: %v", err)
	}
	p, err := CommandPayload("c-1", "reset", map[string]any{"counter": "parts"}, time.Date(2026, 12, 7, 15, 1, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(p), `{"id":"c-1","name":"reset","params":{"counter":"parts"},"expiresAt":"2026-12-07T15:01:00.000Z"}`; got != want {
		t.Errorf("CommandPayload = %s, want %s", got, want)
	}
}

func TestControlACL(t *testing.T) {
	t.Parallel()
	device := auth.Identity{Scopes: auth.ScopeIngest, Machine: "m1"}
	gatewayLyon := auth.Identity{Scopes: auth.ScopeIngest, Sites: []string{"lyon"}}
	readLyon := auth.Identity{Scopes: auth.ScopeRead, Sites: []string{"lyon"}}
	readDevice := auth.Identity{Scopes: auth.ScopeRead | auth.ScopeIngest, Machine: "m1"}
	subscribe := []struct {
		name   string
		id     auth.Identity
		filter string
		want   bool
	}{
		{"device, own desired", device, "twinline/lyon/a/m1/desired", true},
		{"device, own delta", device, "twinline/lyon/a/m1/desired/delta", true},
		{"device, own desired/#", device, "twinline/+/+/m1/desired/#", true},
		{"device, own commands/#", device, "twinline/+/+/m1/commands/#", true},
		{"device, own commands/+", device, "twinline/lyon/a/m1/commands/+", true},
		{"device, own command", device, "twinline/lyon/a/m1/commands/c-1", true},
		{"device, shared own commands", device, "$share/g/twinline/lyon/a/m1/commands/#", true},
		{"device, other machine's desired", device, "twinline/lyon/a/m2/desired", false},
		{"device, any machine's desired", device, "twinline/+/+/+/desired", false},
		{"device, own telemetry", device, "twinline/lyon/a/m1/telemetry", false},
		{"device, own reported", device, "twinline/lyon/a/m1/reported", false},
		{"device, own responses", device, "twinline/lyon/a/m1/commands/c-1/response", false},
		{"device, own everything", device, "twinline/lyon/a/m1/#", false},
		{"device, wildcard site #", device, "twinline/#", false},
		{"device with read scope, site", readDevice, "twinline/lyon/#", false},
		{"gateway, machine of its site", gatewayLyon, "twinline/lyon/a/m7/commands/#", true},
		{"gateway, every machine of its site", gatewayLyon, "twinline/lyon/+/+/desired", true},
		{"gateway, wildcard site (checked on delivery)", gatewayLyon, "twinline/+/+/+/desired", true},
		{"gateway, delivery from its site", gatewayLyon, "twinline/lyon/a/m7/desired", true},
		{"gateway, delivery from another site", gatewayLyon, "twinline/paris/a/m7/desired", false},
		{"gateway, another site", gatewayLyon, "twinline/paris/a/m7/desired", false},
		{"read, desired of its site", readLyon, "twinline/lyon/a/m1/desired", true},
		{"read, desired of another site", readLyon, "twinline/paris/a/m1/desired", false},
	}
	for _, tt := range subscribe {
		if got := maySubscribe(tt.id, tt.filter); got != tt.want {
			t.Errorf("%s: maySubscribe(%q) = %v, want %v", tt.name, tt.filter, got, tt.want)
		}
	}
	publish := []struct {
		name  string
		id    auth.Identity
		topic string
		want  bool
	}{
		{"device, own reported", device, "twinline/lyon/a/m1/reported", true},
		{"device, own response", device, "twinline/lyon/a/m1/commands/c-1/response", true},
		{"device, other machine's reported", device, "twinline/lyon/a/m2/reported", false},
		{"device, other machine's response", device, "twinline/lyon/a/m2/commands/c-1/response", false},
		{"device, own desired", device, "twinline/lyon/a/m1/desired", false},
		{"device, own delta", device, "twinline/lyon/a/m1/desired/delta", false},
		{"device, own command", device, "twinline/lyon/a/m1/commands/c-1", false},
		{"device, under a command", device, "twinline/lyon/a/m1/commands/c-1/other", false},
		{"gateway, reported of its site", gatewayLyon, "twinline/lyon/a/m7/reported", true},
		{"gateway, response of its site", gatewayLyon, "twinline/lyon/a/m7/commands/c-9/response", true},
		{"gateway, reported of another site", gatewayLyon, "twinline/paris/a/m7/reported", false},
		{"gateway, desired", gatewayLyon, "twinline/lyon/a/m7/desired", false},
		{"read, reported", readLyon, "twinline/lyon/a/m1/reported", false},
	}
	for _, tt := range publish {
		if got := mayPublish(tt.id, tt.topic); got != tt.want {
			t.Errorf("%s: mayPublish(%q) = %v, want %v", tt.name, tt.topic, got, tt.want)
		}
	}
}

// call is one call of a control handler.
type call struct {
	Machine, Cmd, Body, Identity string
}

// controlRecorder records the calls of its ControlHandlers. fail, when
// set, is returned by Reported and Respond.
type controlRecorder struct {
	reported, responses, delivered, subscribed chan call

	mu       sync.Mutex
	fail     error
	failN    int // calls left to fail; < 0: all
	failures int // calls that failed
}

func newControlRecorder() *controlRecorder {
	return &controlRecorder{reported: make(chan call, 100), responses: make(chan call, 100), delivered: make(chan call, 100), subscribed: make(chan call, 100)}
}

func (r *controlRecorder) setFail(err error) { r.failNext(err, -1) }

// failNext makes the next n calls of Reported and Respond fail with err
// (n < 0: every call).
func (r *controlRecorder) failNext(err error, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail, r.failN = err, n
}

func (r *controlRecorder) failed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failures
}

func (r *controlRecorder) record(ctx context.Context, ch chan call, c call) error {
	if ch == r.reported || ch == r.responses {
		r.mu.Lock()
		err := r.fail
		if err != nil && r.failN != 0 {
			r.failN--
			r.failures++
			r.mu.Unlock()
			return err
		}
		r.mu.Unlock()
	}
	if id, ok := auth.FromContext(ctx); ok {
		c.Identity = id.Name
	}
	ch <- c
	return nil
}

func (r *controlRecorder) handlers() ControlHandlers {
	return ControlHandlers{
		Reported: func(ctx context.Context, machine string, patch []byte) error {
			return r.record(ctx, r.reported, call{Machine: machine, Body: string(patch)})
		},
		Respond: func(ctx context.Context, machine, cmdID string, body []byte) error {
			return r.record(ctx, r.responses, call{Machine: machine, Cmd: cmdID, Body: string(body)})
		},
		Delivered: func(ctx context.Context, machine, cmdID string) error {
			return r.record(ctx, r.delivered, call{Machine: machine, Cmd: cmdID})
		},
		Subscribed: func(ctx context.Context, machine string) error {
			return r.record(ctx, r.subscribed, call{Machine: machine})
		},
	}
}

// next returns the next call on ch, or fails the test.
func next(t *testing.T, ch chan call, what string) call {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(waitFor):
		t.Fatalf("no %s call within %v", what, waitFor)
		return call{}
	}
}

// message is a PUBLISH a device received.
type message struct {
	Topic   string
	Payload string
	Retain  bool
	QoS     byte
}

// device is a paho MQTT 5 client (not twinline code) that records what it
// receives.
type device struct {
	*paho.Client
	id   string
	msgs chan message
	held []message // received, not returned by next yet
}

// connectDevice connects a device to addr with password (a token; none
// when empty), clean start, no PINGREQ (see quietPinger).
func connectDevice(t *testing.T, addr, clientID, password string) *device {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{id: clientID, msgs: make(chan message, 100)}
	d.Client = paho.NewClient(paho.ClientConfig{
		Conn: conn, ClientID: clientID, PingHandler: quietPinger{},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.msgs <- message{Topic: pr.Packet.Topic, Payload: string(pr.Packet.Payload), Retain: pr.Packet.Retain, QoS: pr.Packet.QoS}
			return true, nil
		}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true}
	if password != "" {
		cp.UsernameFlag, cp.Username = true, "token"
		cp.PasswordFlag, cp.Password = true, []byte(password)
	}
	ca, err := d.Connect(ctx, cp)
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connecting %s: %+v, %v", clientID, ca, err)
	}
	t.Cleanup(func() { _ = d.Disconnect(&paho.Disconnect{}) })
	return d
}

// subscribe subscribes in one SUBSCRIBE packet and returns the SUBACK
// reason codes. One packet: mochi refuses a packet id the client uses
// while the same id is in flight from the server (0x91), as the retained
// QoS 1 messages a subscription brings are.
func (d *device) subscribe(t *testing.T, subs ...paho.SubscribeOptions) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	sa, err := d.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if sa == nil {
		t.Fatalf("subscribing %s: %v", d.id, err)
	}
	return sa.Reasons
}

// publish publishes with QoS 1 and returns the PUBACK reason code.
func (d *device) publish(t *testing.T, topic, payload string) byte {
	t.Helper()
	code, _ := publish(t, d.Client, topic, payload)
	return code
}

// next returns the first message on topic not returned yet (messages on
// other topics are kept for later calls), or fails the test.
func (d *device) next(t *testing.T, topic string) message {
	t.Helper()
	for i, m := range d.held {
		if m.Topic == topic {
			d.held = append(d.held[:i], d.held[i+1:]...)
			return m
		}
	}
	timeout := time.After(waitFor)
	for {
		select {
		case m := <-d.msgs:
			if m.Topic == topic {
				return m
			}
			d.held = append(d.held, m)
		case <-timeout:
			t.Fatalf("%s: nothing on %s within %v (other messages: %+v)", d.id, topic, waitFor, d.held)
			return message{}
		}
	}
}

// Device tokens of controlAuthenticate; other passwords are
// fakeAuthenticate's.
var deviceTokens = map[string]auth.Identity{
	"dev-m1": {Name: "dev-m1", Kind: auth.KindToken, Scopes: auth.ScopeIngest, Machine: "m1", TokenID: "d1"},
	"dev-m2": {Name: "dev-m2", Kind: auth.KindToken, Scopes: auth.ScopeIngest, Machine: "m2", TokenID: "d2"},
}

func controlAuthenticate(ctx context.Context, user string, password []byte, cert *x509.Certificate) (auth.Identity, error) {
	if id, ok := deviceTokens[string(password)]; ok {
		return id, nil
	}
	return fakeAuthenticate(ctx, user, password, cert)
}

// TestBrokerControl plays a device (a paho client) against the embedded
// broker with authentication: retained desired documents on subscribe and
// for a late subscriber, reported patches and command responses to the
// handlers (with the identity), the device's PUBACK as the delivery,
// clearing, handler errors in the PUBACK, and the ACL around it all.
func TestBrokerControl(t *testing.T) {
	t.Parallel()
	rec := newControlRecorder()
	deps := newFakeLog().deps(t, nil)
	deps.Authenticate = controlAuthenticate
	deps.Authorize = fakeAuthorize
	deps.Control = rec.handlers()
	b := startBroker(t, BrokerOptions{}, deps)
	addr := b.Addr().String()

	// Published before the device connects: retained.
	if err := b.PublishDesired("lyon", "a", "m1", 1, map[string]any{"tempSetpoint": 180}, map[string]any{"tempSetpoint": 180}); err != nil {
		t.Fatalf("PublishDesired: %v", err)
	}
	dev := connectDevice(t, addr, "dev-m1", "dev-m1")
	codes := dev.subscribe(t,
		paho.SubscribeOptions{Topic: "twinline/+/+/m1/desired/#", QoS: 0},
		paho.SubscribeOptions{Topic: "twinline/+/+/m1/desired", QoS: 0},
		paho.SubscribeOptions{Topic: "twinline/lyon/a/m1/commands/+", QoS: 1},
		paho.SubscribeOptions{Topic: "twinline/lyon/a/m2/desired", QoS: 0},   // another machine's
		paho.SubscribeOptions{Topic: "twinline/+/+/+/commands/#", QoS: 1},    // every machine's
		paho.SubscribeOptions{Topic: "twinline/lyon/a/m1/telemetry", QoS: 0}, // not a control topic
	)
	if diff := cmp.Diff(codes, []byte{0, 0, 1, 0x87, 0x87, 0x87}); diff != "" {
		t.Errorf("SUBACK reason codes (-got +want):\n%s", diff)
	}
	// Subscribed to its commands: the time to send the pending ones.
	if diff := cmp.Diff(next(t, rec.subscribed, "Subscribed"), call{Machine: "m1"}); diff != "" {
		t.Errorf("Subscribed (-got +want):\n%s", diff)
	}
	wantDoc := message{Topic: "twinline/lyon/a/m1/desired", Payload: `{"machine":"m1","version":1,"desired":{"tempSetpoint":180}}`, Retain: true}
	if diff := cmp.Diff(dev.next(t, wantDoc.Topic), wantDoc); diff != "" {
		t.Errorf("retained desired on subscribe (-got +want):\n%s", diff)
	}
	wantDelta := message{Topic: "twinline/lyon/a/m1/desired/delta", Payload: `{"machine":"m1","version":1,"delta":{"tempSetpoint":180}}`, Retain: true}
	if diff := cmp.Diff(dev.next(t, wantDelta.Topic), wantDelta); diff != "" {
		t.Errorf("retained delta on subscribe (-got +want):\n%s", diff)
	}

	// A change reaches the subscribed device; an older version is skipped.
	if err := b.PublishDesired("lyon", "a", "m1", 2, map[string]any{"tempSetpoint": 185, "mode": "auto"}, map[string]any{"mode": "auto"}); err != nil {
		t.Fatal(err)
	}
	if err := b.PublishDesired("lyon", "a", "m1", 1, map[string]any{"tempSetpoint": 1}, nil); err != nil {
		t.Fatal(err)
	}
	wantDoc2 := `{"machine":"m1","version":2,"desired":{"mode":"auto","tempSetpoint":185}}`
	if got := dev.next(t, wantDoc.Topic); got.Payload != wantDoc2 {
		t.Errorf("desired after the change: %s, want %s", got.Payload, wantDoc2)
	}
	wantDelta2 := `{"machine":"m1","version":2,"delta":{"mode":"auto"}}`
	if got := dev.next(t, wantDelta.Topic); got.Payload != wantDelta2 {
		t.Errorf("delta after the change: %s, want %s", got.Payload, wantDelta2)
	}

	// A late subscriber (the read scope may) gets the retained state: the
	// latest version only.
	late := connectDevice(t, addr, "late", "read-lyon")
	if codes := late.subscribe(t, paho.SubscribeOptions{Topic: "twinline/lyon/a/m1/desired", QoS: 0}); codes[0] != 0 {
		t.Fatalf("read-lyon subscribing to desired: %#x", codes[0])
	}
	if got := late.next(t, wantDoc.Topic); got.Payload != wantDoc2 || !got.Retain {
		t.Errorf("late subscriber got %+v, want retained %s", got, wantDoc2)
	}

	// Reported: to the handler, as the device.
	if code := dev.publish(t, "twinline/lyon/a/m1/reported", `{"tempSetpoint":181}`); code != 0 {
		t.Errorf("reported: PUBACK %#x", code)
	}
	if diff := cmp.Diff(next(t, rec.reported, "Reported"), call{Machine: "m1", Body: `{"tempSetpoint":181}`, Identity: "dev-m1"}); diff != "" {
		t.Errorf("Reported (-got +want):\n%s", diff)
	}

	// A command: received with QoS 1; the device's PUBACK is the delivery.
	payload, err := CommandPayload("c-1", "reset", map[string]any{"counter": "parts"}, time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.PublishCommand("lyon", "a", "m1", "c-1", payload); err != nil {
		t.Fatalf("PublishCommand: %v", err)
	}
	if got := dev.next(t, "twinline/lyon/a/m1/commands/c-1"); got.Payload != string(payload) || got.QoS != 1 {
		t.Errorf("command received: %+v, want QoS 1 %s", got, payload)
	}
	if diff := cmp.Diff(next(t, rec.delivered, "Delivered"), call{Machine: "m1", Cmd: "c-1"}); diff != "" {
		t.Errorf("Delivered (-got +want):\n%s", diff)
	}

	// The response: to the handler.
	if code := dev.publish(t, "twinline/lyon/a/m1/commands/c-1/response", `{"state":"succeeded"}`); code != 0 {
		t.Errorf("response: PUBACK %#x", code)
	}
	if diff := cmp.Diff(next(t, rec.responses, "Respond"), call{Machine: "m1", Cmd: "c-1", Body: `{"state":"succeeded"}`, Identity: "dev-m1"}); diff != "" {
		t.Errorf("Respond (-got +want):\n%s", diff)
	}

	// Handler errors come back in the PUBACK.
	t.Run("handler errors", func(t *testing.T) {
		for _, tt := range []struct {
			err  error
			want byte
		}{
			{errors.New("patch is not an object"), 0x83},
			{fmt.Errorf("storing: %w", ErrBusy), 0x97},
		} {
			rec.setFail(tt.err)
			code := dev.publish(t, "twinline/lyon/a/m1/reported", `[]`)
			rec.setFail(nil)
			if code != tt.want {
				t.Errorf("Reported failing with %v: PUBACK %#x, want %#x", tt.err, code, tt.want)
			}
		}
	})

	// Refused publications: another machine's topics and the server's.
	t.Run("acl", func(t *testing.T) {
		for _, topic := range []string{
			"twinline/lyon/a/m2/reported",
			"twinline/lyon/a/m2/commands/c-1/response",
			"twinline/lyon/a/m1/desired",
			"twinline/lyon/a/m1/desired/delta",
			"twinline/lyon/a/m1/commands/c-9",
		} {
			if code := dev.publish(t, topic, `{"state":"succeeded"}`); code != 0x87 {
				t.Errorf("publish to %s: PUBACK %#x, want 0x87", topic, code)
			}
		}
		// An ingest token of lyon may report for m9 only if Authorize
		// lets it: m9 is registered at paris.
		gw := connectDevice(t, addr, "gateway", "ingest-lyon")
		if code := gw.publish(t, "twinline/lyon/a/m9/reported", `{"x":1}`); code != 0x87 {
			t.Errorf("gateway reporting for a paris machine: PUBACK %#x, want 0x87", code)
		}
		if code := gw.publish(t, "twinline/lyon/a/m7/reported", `{"x":2}`); code != 0 {
			t.Errorf("gateway reporting for m7: PUBACK %#x, want 0", code)
		}
		if diff := cmp.Diff(next(t, rec.reported, "Reported"), call{Machine: "m7", Body: `{"x":2}`, Identity: "ingest-lyon"}); diff != "" {
			t.Errorf("Reported of the gateway (-got +want):\n%s", diff)
		}
		select {
		case c := <-rec.reported:
			t.Errorf("a refused message reached the handler: %+v", c)
		case c := <-rec.responses:
			t.Errorf("a refused message reached the handler: %+v", c)
		default:
		}
	})

	// A reader that receives a command (and acknowledges it) is no
	// delivery: only a client that may answer for the machine counts.
	t.Run("reader is no delivery", func(t *testing.T) {
		reader := connectDevice(t, addr, "reader", "read-all")
		if codes := reader.subscribe(t, paho.SubscribeOptions{Topic: "twinline/+/+/+/commands/#", QoS: 1}); codes[0] != 1 {
			t.Fatalf("reader subscribing: %#x", codes[0])
		}
		if err := b.PublishCommand("lyon", "a", "m2", "c-2", []byte(`{"id":"c-2"}`)); err != nil {
			t.Fatal(err)
		}
		reader.next(t, "twinline/lyon/a/m2/commands/c-2")
		// OnQosPublish ran before the message was written.
		b.deliveries.mu.Lock()
		inFlight := len(b.deliveries.m["reader"])
		b.deliveries.mu.Unlock()
		if inFlight != 0 {
			t.Errorf("%d commands tracked for the reader", inFlight)
		}
		// Nor did its subscription (any machine's commands, and no
		// ingest scope) count as a device's: the device subscribing
		// again is the next call (mochi calls OnSubscribed before the
		// SUBACK, and the calls are made in order).
		if codes := dev.subscribe(t, paho.SubscribeOptions{Topic: "twinline/lyon/a/m1/commands/#", QoS: 1}); codes[0] != 1 {
			t.Fatalf("device subscribing again: %#x", codes[0])
		}
		if diff := cmp.Diff(next(t, rec.subscribed, "Subscribed"), call{Machine: "m1"}); diff != "" {
			t.Errorf("Subscribed after the reader's subscription (-got +want):\n%s", diff)
		}
	})

	// Clearing: the subscribed device gets empty retained payloads (the
	// next messages on the topics: version 1, published after 2, was
	// skipped), and a later subscriber nothing.
	if err := b.ClearDesired("lyon", "a", "m1"); err != nil {
		t.Fatalf("ClearDesired: %v", err)
	}
	for _, topic := range []string{wantDoc.Topic, wantDelta.Topic} {
		if got := dev.next(t, topic); got.Payload != "" {
			t.Errorf("%s after ClearDesired: %q, want empty", topic, got.Payload)
		}
		if msgs := b.srv.Topics.Messages(topic); len(msgs) != 0 {
			t.Errorf("%s still retained after ClearDesired: %d messages", topic, len(msgs))
		}
	}
	if got := testutil.ToFloat64(b.control.messages.WithLabelValues("delivered", "ok")); got != 1 {
		t.Errorf("control{delivered,ok} = %v, want 1", got)
	}
}

// TestBrokerControlOpen shows an open broker (no Authenticate): any client
// acknowledging a command is its delivery, and nothing is refused.
func TestBrokerControlOpen(t *testing.T) {
	t.Parallel()
	rec := newControlRecorder()
	deps := newFakeLog().deps(t, nil)
	deps.Control = rec.handlers()
	b := startBroker(t, BrokerOptions{}, deps)
	dev := connectDevice(t, b.Addr().String(), "anyone", "")
	if codes := dev.subscribe(t, paho.SubscribeOptions{Topic: "twinline/_/_/m5/commands/+", QoS: 1}); codes[0] != 1 {
		t.Fatalf("subscribing: %#x", codes[0])
	}
	if err := b.PublishCommand("", "", "m5", "c-5", []byte(`{"id":"c-5"}`)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(next(t, rec.subscribed, "Subscribed"), call{Machine: "m5"}); diff != "" {
		t.Errorf("Subscribed (-got +want):\n%s", diff)
	}
	dev.next(t, "twinline/_/_/m5/commands/c-5")
	if diff := cmp.Diff(next(t, rec.delivered, "Delivered"), call{Machine: "m5", Cmd: "c-5"}); diff != "" {
		t.Errorf("Delivered (-got +want):\n%s", diff)
	}
	if code := dev.publish(t, "twinline/_/_/m5/commands/c-5/response", `{"state":"accepted"}`); code != 0 {
		t.Errorf("response: PUBACK %#x", code)
	}
	if diff := cmp.Diff(next(t, rec.responses, "Respond"), call{Machine: "m5", Cmd: "c-5", Body: `{"state":"accepted"}`, Identity: "anonymous"}); diff != "" {
		t.Errorf("Respond (-got +want):\n%s", diff)
	}
	for _, bad := range []struct{ site, line, machine, cmd string }{{"a/b", "l", "m", "c"}, {"s", "l", "", "c"}, {"s", "l", "m", "c+"}} {
		if err := b.PublishCommand(bad.site, bad.line, bad.machine, bad.cmd, nil); err == nil {
			t.Errorf("PublishCommand(%q, %q, %q, %q): no error", bad.site, bad.line, bad.machine, bad.cmd)
		}
	}
}
