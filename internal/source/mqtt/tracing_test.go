package mqtt

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/twinline/twinline/internal/otlptest"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

const (
	traceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	parentID    = "00f067aa0ba902b7"
	traceparent = "00-" + traceID + "-" + parentID + "-01"
)

// publishTraced publishes with QoS 1 and the given W3C user properties.
func publishTraced(t *testing.T, c *paho.Client, topic, payload, traceparent, tracestate string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	props := &paho.PublishProperties{User: paho.UserProperties{{Key: "traceparent", Value: traceparent}, {Key: "tracestate", Value: tracestate}}}
	pr, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload), Properties: props})
	if pr == nil || pr.ReasonCode != 0 {
		t.Fatalf("publishing to %s: %v %+v %+v", topic, err, pr, pr.Properties)
	}
}

// batchOf returns the batch fl took with the event of machine whose first
// value is v.
func (f *fakeLog) batchOf(machine string, v float64) *telemetry.Batch {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.batches {
		for _, ev := range b.Events {
			if ev.Machine == machine && ev.Metrics[0].Value == v {
				return b
			}
		}
	}
	return nil
}

// TestTraceThroughMQTT: an MQTT 5 message with traceparent and tracestate
// user properties is received in an "mqtt receive" span under that
// context (messaging conventions), and its batch carries the span on; one
// without is not traced at sampler 0 — on the embedded broker and through
// the subscriber to Mosquitto.
func TestTraceThroughMQTT(t *testing.T) {
	for _, source := range []string{"broker", "subscriber"} {
		t.Run(source, func(t *testing.T) {
			rcv := otlptest.Start(t)
			tr, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: rcv.HTTPURL, Sample: 0}, tracing.Identity{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
			fl := newFakeLog()
			deps := fl.deps(t, nil)
			deps.Tracer = tr.Tracer("mqtt")
			var addr, client string
			if source == "broker" {
				addr = startBroker(t, BrokerOptions{}, deps).Addr().String()
				client = uniq("pub")
			} else {
				needMosquitto(t)
				addr, client = mosquittoAddr, uniq("sub")
				dropSession(t, addr, client)
				s, err := NewSubscriber("mqtt://"+addr, SubscriberOptions{ClientID: client, Group: uniq("g")}, deps)
				if err != nil {
					t.Fatal(err)
				}
				runSubscriber(t, s)
				waitReady(t, s)
			}
			pubID := uniq("pub")
			if source == "broker" {
				pubID = client
			}
			pub := connectV5(t, addr, pubID)
			machine := uniq("m")
			topic := TelemetryTopic("lyon", "line-1", machine)
			if code, reason := publish(t, pub, topic, `{"temp":1}`); code != 0 {
				t.Fatalf("untraced publish: %#x %s", code, reason)
			}
			fl.waitEvent(t, machine, 1) // alone in its batch
			publishTraced(t, pub, topic, `{"temp":2}`, traceparent, "vendor=x")
			fl.waitEvent(t, machine, 2)
			// The event is in the log before its receive span ends (the
			// subscriber ends it after Submit returns): flush until the
			// span is exported, then stop.
			spans := waitSpans(t, tr, rcv, traceID)
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if len(spans) != 1 || spans[0].Name != "mqtt receive" {
				t.Fatalf("spans of the trace: %v, want one mqtt receive", spans)
			}
			s := spans[0]
			if s.ParentID() != parentID || s.Kind.String() != "SPAN_KIND_CONSUMER" || s.TraceState != "vendor=x" {
				t.Errorf("mqtt receive: parent %s, kind %v, tracestate %q; want under %s, a consumer span, vendor=x", s.ParentID(), s.Kind, s.TraceState, parentID)
			}
			want := map[string]string{"messaging.system": "mqtt", "messaging.operation.type": "receive", "messaging.destination.name": topic,
				"messaging.destination.template": "twinline/{site}/{line}/{machineId}/telemetry", "messaging.client.id": client, "twinline.events": "1"}
			for k, v := range want {
				if got := s.Attr(k); got != v {
					t.Errorf("mqtt receive %s = %q, want %q", k, got, v)
				}
			}
			if b := fl.batchOf(machine, 1); b == nil || b.Trace.IsValid() {
				t.Errorf("the untraced message's batch carries a trace context: %+v", b)
			}
			b := fl.batchOf(machine, 2)
			if b == nil || !b.Trace.IsSampled() || b.Trace.TraceID().String() != traceID || b.Trace.SpanID().String() != s.SpanID() {
				t.Errorf("the traced message's batch carries %+v, want the mqtt receive span %s", b, s.SpanID())
			}
		})
	}
}

// waitSpans flushes tr until the receiver holds spans of traceID, and
// returns them (none after waitFor: the caller's check fails). A flush
// exports only the spans ended before it, so it is repeated, a few
// milliseconds apart, until the receive span has ended.
func waitSpans(t *testing.T, tr *tracing.Tracing, rcv *otlptest.Receiver, traceID string) []otlptest.Span {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		if err := tr.ForceFlush(context.Background()); err != nil {
			t.Fatal(err)
		}
		if spans := otlptest.Trace(rcv.Spans(), traceID); len(spans) > 0 || time.Now().After(deadline) {
			return spans
		}
		time.Sleep(5 * time.Millisecond) // a poll interval: the span ends in another goroutine, unobservable here
	}
}
