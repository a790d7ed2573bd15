package mqtt

import (
	"errors"
	"fmt"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
)

// TestSubscriberControl plays a device (a paho client) against the shared
// Mosquitto with the subscriber on the server side: retained desired
// documents (also for a late subscriber), reported patches and command
// responses to the handlers, the broker's PUBACK as the delivery, and
// clearing. Machine ids are unique to the run: other tests share the
// broker.
func TestSubscriberControl(t *testing.T) {
	t.Parallel()
	needMosquitto(t)
	rec := newControlRecorder()
	deps := newFakeLog().deps(t, nil)
	deps.Control = rec.handlers()
	clientID := uniq("ctl")
	dropSession(t, mosquittoAddr, clientID)
	s, err := NewSubscriber("mqtt://"+mosquittoAddr, SubscriberOptions{ClientID: clientID, Group: uniq("g")}, deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PublishDesired("s", "l", "m", 1, nil, nil); err == nil {
		t.Error("PublishDesired before Run: no error")
	}
	runSubscriber(t, s)
	waitReady(t, s)

	site, machine := uniq("site"), uniq("m")
	desired := DesiredTopic(site, "", machine)
	delta := DesiredDeltaTopic(site, "", machine)
	if err := s.PublishDesired(site, "", machine, 3, map[string]any{"tempSetpoint": 180}, map[string]any{}); err != nil {
		t.Fatalf("PublishDesired: %v", err)
	}

	dev := connectDevice(t, mosquittoAddr, uniq("dev"), "")
	codes := dev.subscribe(t,
		paho.SubscribeOptions{Topic: "twinline/+/+/" + machine + "/desired/#", QoS: 1},
		paho.SubscribeOptions{Topic: "twinline/+/+/" + machine + "/commands/+", QoS: 1},
	)
	if diff := cmp.Diff(codes, []byte{1, 1}); diff != "" {
		t.Fatalf("SUBACK (-got +want):\n%s", diff)
	}
	want := []message{
		{Topic: desired, Payload: `{"machine":"` + machine + `","version":3,"desired":{"tempSetpoint":180}}`, Retain: true, QoS: 1},
		{Topic: delta, Payload: `{"machine":"` + machine + `","version":3,"delta":{}}`, Retain: true, QoS: 1},
	}
	if diff := cmp.Diff([]message{dev.next(t, desired), dev.next(t, delta)}, want); diff != "" {
		t.Errorf("retained documents on subscribe (-got +want):\n%s", diff)
	}

	// A late subscriber gets the retained state.
	late := connectDevice(t, mosquittoAddr, uniq("late"), "")
	late.subscribe(t, paho.SubscribeOptions{Topic: desired, QoS: 1})
	if diff := cmp.Diff(late.next(t, desired), want[0]); diff != "" {
		t.Errorf("late subscriber (-got +want):\n%s", diff)
	}

	// Reported and the response reach the handlers (the shared
	// subscription of the subscriber's group).
	if code := dev.publish(t, ReportedTopic(site, "", machine), `{"tempSetpoint":179}`); code >= 0x80 {
		t.Fatalf("reported: PUBACK %#x", code)
	}
	if diff := cmp.Diff(next(t, rec.reported, "Reported"), call{Machine: machine, Body: `{"tempSetpoint":179}`}); diff != "" {
		t.Errorf("Reported (-got +want):\n%s", diff)
	}
	if err := s.PublishCommand(site, "", machine, "c-1", []byte(`{"id":"c-1","name":"stop"}`)); err != nil {
		t.Fatalf("PublishCommand: %v", err)
	}
	if diff := cmp.Diff(next(t, rec.delivered, "Delivered"), call{Machine: machine, Cmd: "c-1"}); diff != "" {
		t.Errorf("Delivered (-got +want):\n%s", diff)
	}
	if got := dev.next(t, CommandTopic(site, "", machine, "c-1")); got.Payload != `{"id":"c-1","name":"stop"}` || got.QoS != 1 {
		t.Errorf("command received: %+v", got)
	}
	if code := dev.publish(t, ResponseTopic(site, "", machine, "c-1"), `{"state":"succeeded"}`); code >= 0x80 {
		t.Fatalf("response: PUBACK %#x", code)
	}
	if diff := cmp.Diff(next(t, rec.responses, "Respond"), call{Machine: machine, Cmd: "c-1", Body: `{"state":"succeeded"}`}); diff != "" {
		t.Errorf("Respond (-got +want):\n%s", diff)
	}

	// A busy handler is tried again until it passes; another failure
	// drops the message (acknowledged, not tried again).
	rec.failNext(fmt.Errorf("storing: %w", ErrBusy), 2)
	if code := dev.publish(t, ReportedTopic(site, "", machine), `{"busy":1}`); code >= 0x80 {
		t.Fatalf("reported: PUBACK %#x", code)
	}
	if diff := cmp.Diff(next(t, rec.reported, "Reported"), call{Machine: machine, Body: `{"busy":1}`}); diff != "" {
		t.Errorf("Reported after ErrBusy (-got +want):\n%s", diff)
	}
	if got := rec.failed(); got != 2 {
		t.Errorf("failed calls = %d, want 2", got)
	}
	rec.failNext(errors.New("not an object"), 1)
	for _, p := range []string{`[]`, `{"after":1}`} {
		if code := dev.publish(t, ReportedTopic(site, "", machine), p); code >= 0x80 {
			t.Fatalf("reported: PUBACK %#x", code)
		}
	}
	// Messages of one topic are handled in order: the next call is the
	// second message's, so the first was not tried again.
	if diff := cmp.Diff(next(t, rec.reported, "Reported"), call{Machine: machine, Body: `{"after":1}`}); diff != "" {
		t.Errorf("Reported after a dropped message (-got +want):\n%s", diff)
	}
	if got := rec.failed(); got != 3 {
		t.Errorf("failed calls = %d, want 3", got)
	}

	// Nobody subscribes to another machine's commands: not delivered.
	err = s.PublishCommand(site, "", uniq("nobody"), "c-2", []byte(`{}`))
	if !errors.Is(err, ErrNoSubscribers) {
		t.Errorf("command nobody subscribes to: %v, want ErrNoSubscribers", err)
	}

	// Clearing: the device gets empty payloads, a later subscriber no
	// retained message (the first it gets is a sentinel published after
	// it subscribed).
	if err := s.ClearDesired(site, "", machine); err != nil {
		t.Fatalf("ClearDesired: %v", err)
	}
	for _, topic := range []string{desired, delta} {
		if got := dev.next(t, topic); got.Payload != "" {
			t.Errorf("%s after ClearDesired: %q, want empty", topic, got.Payload)
		}
	}
	after := connectDevice(t, mosquittoAddr, uniq("after"), "")
	after.subscribe(t, paho.SubscribeOptions{Topic: "twinline/" + site + "/+/" + machine + "/#", QoS: 1})
	sentinel := "twinline/" + site + "/_/" + machine + "/sentinel"
	if code := dev.publish(t, sentinel, "s"); code >= 0x80 {
		t.Fatalf("sentinel: PUBACK %#x", code)
	}
	after.next(t, sentinel)
	if len(after.held) != 0 {
		t.Errorf("retained messages after ClearDesired: %+v", after.held)
	}
}
