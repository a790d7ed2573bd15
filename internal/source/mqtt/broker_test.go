package mqtt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestBrokerAcksAfterDurable shows that the PUBACK of a QoS 1 message leaves
// only after Submit has returned, and that the event carries the topic's
// machine and the registry gets its site and line.
func TestBrokerAcksAfterDurable(t *testing.T) {
	t.Parallel()
	fl := newFakeLog()
	fl.entered = make(chan *telemetry.Batch)
	fl.gate = make(chan error)
	b := startBroker(t, BrokerOptions{}, fl.deps(t, nil))
	c := connectV5(t, b.Addr().String(), "press")

	type result struct {
		code byte
		err  error
	}
	acked := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		pr, err := c.Publish(ctx, &paho.Publish{
			Topic: "twinline/plant-1/line-a/press-07/telemetry", QoS: 1,
			Payload: []byte(`{"machineId":"ignored","timestamp":"2026-11-30T06:00:00Z","temp":71.5}`),
		})
		r := result{err: err}
		if pr != nil {
			r.code = pr.ReasonCode
		}
		acked <- r
	}()

	var got *telemetry.Batch
	select {
	case got = <-fl.entered:
	case <-time.After(waitFor):
		t.Fatal("Submit was not called")
	}
	// Submit is blocked: no PUBACK may arrive. (A PUBACK sent early would
	// arrive within this window; its absence is what is asserted.)
	select {
	case r := <-acked:
		t.Fatalf("publish completed (%+v) before Submit returned", r)
	case <-time.After(200 * time.Millisecond):
	}
	fl.gate <- nil // durable
	select {
	case r := <-acked:
		if r.err != nil || r.code != 0 {
			t.Fatalf("publish: code %#x, err %v", r.code, r.err)
		}
	case <-time.After(waitFor):
		t.Fatal("no PUBACK after Submit returned")
	}

	want := []telemetry.Event{{Machine: "press-07", Time: 1_795_996_800_000 + 6*3600_000, Metrics: []telemetry.Metric{{Name: "temp", Value: 71.5}}}}
	if diff := cmp.Diff(got.Events, want); diff != "" {
		t.Errorf("submitted events (-got +want):\n%s", diff)
	}
	if got.Protocol != "mqtt" {
		t.Errorf("protocol = %q, want mqtt", got.Protocol)
	}
	reg := fl.waitRegistered(t, "press-07")
	if diff := cmp.Diff(reg, [2]string{"plant-1", "line-a"}); diff != "" {
		t.Errorf("registered site and line (-got +want):\n%s", diff)
	}
}

// TestBrokerRejectsV5 shows bad messages rejected with MQTT 5 reason codes
// while good ones on the same connection keep flowing.
func TestBrokerRejectsV5(t *testing.T) {
	t.Parallel()
	fl := newFakeLog()
	reg := prometheus.NewRegistry()
	deps := fl.deps(t, reg)
	opts := BrokerOptions{Ingest: IngestOptions{Decode: ingest.Options{AdmitMachine: func(id string) string {
		if id == "m-new" {
			return "fleet limit of 1 machines reached"
		}
		return ""
	}}}}
	b := startBroker(t, opts, deps)
	c := connectV5(t, b.Addr().String(), "v5")

	tests := []struct {
		name, topic, payload string
		fail                 error
		wantCode             byte
		wantReason           string
	}{
		{"good json", "twinline/s/l/m1/telemetry", `{"temp":1}`, nil, 0, ""},
		{"not json", "twinline/s/l/m1/telemetry", `{"temp":`, nil, 0x99, "invalid JSON"},
		{"no metric", "twinline/s/l/m1/telemetry", `{"temp":["hot"]}`, nil, 0x99, "temp"},
		{"good line protocol", "twinline/s/l/m1/telemetry", "env temp=2", nil, 0, ""},
		{"bad line protocol", "twinline/s/l/m1/telemetry", "env temp=", nil, 0x99, "item 1"},
		{"bad topic", "twinline/s/m1/telemetry", `{"temp":3}`, nil, 0x90, "levels"},
		{"machine refused", "twinline/s/l/m-new/telemetry", `{"temp":3}`, nil, 0x97, "fleet limit"},
		{"log busy", "twinline/s/l/m1/telemetry", `{"temp":4}`, fmt.Errorf("appending: %w", ErrBusy), 0x97, "busy"},
		{"log broken", "twinline/s/l/m1/telemetry", `{"temp":5}`, errors.New("disk on fire"), 0x80, "disk on fire"},
		{"too large for the log", "twinline/s/l/m1/telemetry", `{"temp":6}`, fmt.Errorf("appending: %w", ErrUnprocessable), 0x83, "cannot be stored"},
		{"good again", "twinline/s/l/m1/telemetry", `{"temp":7}`, nil, 0, ""},
		{"other topic passes through", "twinline/s/l/m1/status", `not telemetry`, nil, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fl.setFail(tt.fail)
			defer fl.setFail(nil)
			code, reason := publish(t, c, tt.topic, tt.payload)
			if code != tt.wantCode || !strings.Contains(reason, tt.wantReason) {
				t.Errorf("PUBACK %#x %q, want %#x with %q", code, reason, tt.wantCode, tt.wantReason)
			}
		})
	}
	t.Run("qos 2", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		for _, tt := range []struct {
			payload  string
			wantCode byte
		}{{`{"temp":`, 0x99}, {`{"temp":8}`, 0}} {
			pr, err := c.Publish(ctx, &paho.Publish{Topic: "twinline/s/l/m1/telemetry", QoS: 2, Payload: []byte(tt.payload)})
			if err != nil || pr.ReasonCode != tt.wantCode {
				t.Errorf("QoS 2 %s: response %+v, %v; want reason code %#x", tt.payload, pr, err, tt.wantCode)
			}
		}
	})
	var got []float64
	for _, ev := range fl.events() {
		got = append(got, ev.Metrics[0].Value)
	}
	if diff := cmp.Diff(got, []float64{1, 2, 7, 8}); diff != "" {
		t.Errorf("stored values (-got +want):\n%s", diff)
	}
	for reason, want := range map[string]float64{"payload": 4, "topic": 1, "machine": 1, "busy": 1, "error": 1, "unprocessable": 1} {
		if got := testutil.ToFloat64(b.h.m.rejected.WithLabelValues(reason)); got != want {
			t.Errorf("rejected{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	if got := testutil.ToFloat64(b.h.m.accepted); got != 4 {
		t.Errorf("accepted = %v, want 4", got)
	}
	if n, err := testutil.GatherAndCount(reg, "twinline_mqtt_clients_connected"); err != nil || n != 1 {
		t.Errorf("clients gauge: %d series, %v", n, err)
	}
}

// TestBrokerV311 shows an MQTT 3.1.1 client, which has no negative
// acknowledgement: a bad payload is acknowledged and dropped and the
// session goes on; a failed submit closes the connection without a PUBACK,
// so that the client sends the message again.
func TestBrokerV311(t *testing.T) {
	t.Parallel()
	fl := newFakeLog()
	b := startBroker(t, BrokerOptions{}, fl.deps(t, nil))
	c := connectV3(t, b.Addr().String(), "v3")

	c.readPuback(t, c.publish(t, "twinline/s/l/v3m/telemetry", `{"temp":1}`))
	c.readPuback(t, c.publish(t, "twinline/s/l/v3m/telemetry", `{"temp":`))
	c.readPuback(t, c.publish(t, "twinline/s/l/v3m/telemetry", "env temp=2 1795996800000000000\n"))
	var got []float64
	for _, ev := range fl.events() {
		got = append(got, ev.Metrics[0].Value)
	}
	if diff := cmp.Diff(got, []float64{1, 2}); diff != "" {
		t.Errorf("stored values (-got +want):\n%s", diff)
	}

	fl.setFail(ErrBusy)
	c.publish(t, "twinline/s/l/v3m/telemetry", `{"temp":3}`)
	pk, err := c.read()
	if !isClosed(err) {
		t.Fatalf("after a failed submit: got %+v, %v; want the connection closed", pk, err)
	}
}

// TestBrokerLimits shows the client cap and the packet size limit.
func TestBrokerLimits(t *testing.T) {
	t.Parallel()
	fl := newFakeLog()
	b := startBroker(t, BrokerOptions{MaxClients: 1}, fl.deps(t, nil))
	connectV5(t, b.Addr().String(), "first")

	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	second := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "second"})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ca, err := second.Connect(ctx, &paho.Connect{ClientID: "second", KeepAlive: 30, CleanStart: true})
	if err == nil || ca == nil || ca.ReasonCode != 0x89 {
		t.Errorf("second client: connack %+v, err %v; want refused with 0x89 Server busy", ca, err)
	}

	// An MQTT 3.1.1 client (which is not told the limit) sending a packet
	// over the limit is disconnected.
	small := startBroker(t, BrokerOptions{MaxPacketSize: 1024}, fl.deps(t, nil))
	v3 := connectV3(t, small.Addr().String(), "big")
	v3.readPuback(t, v3.publish(t, "twinline/s/l/m/telemetry", `{"temp":1}`))
	v3.publish(t, "twinline/s/l/m/telemetry", `{"temp":2,"pad":"`+strings.Repeat("x", 2048)+`"}`)
	if pk, err := v3.read(); !isClosed(err) {
		t.Errorf("after a 2 KiB packet with a 1 KiB limit: got %+v, %v; want the connection closed", pk, err)
	}
	var got []float64
	for _, ev := range fl.events() {
		got = append(got, ev.Metrics[0].Value)
	}
	if diff := cmp.Diff(got, []float64{1}); diff != "" {
		t.Errorf("stored values (-got +want):\n%s", diff)
	}
}

// TestBrokerRunEnds shows Run returning when its context ends, while a
// client waits in Submit, and the listener closed.
func TestBrokerRunEnds(t *testing.T) {
	t.Parallel()
	fl := newFakeLog()
	fl.entered = make(chan *telemetry.Batch, 1)
	fl.gate = make(chan error) // never released
	b, err := NewBroker("127.0.0.1:0", BrokerOptions{}, fl.deps(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if b.Ready() == nil {
		t.Error("Ready before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	c := connectV5(t, b.Addr().String(), "stuck")
	go func() {
		pctx, pcancel := context.WithTimeout(context.Background(), waitFor)
		defer pcancel()
		_, _ = c.Publish(pctx, &paho.Publish{Topic: "twinline/s/l/m/telemetry", QoS: 1, Payload: []byte(`{"temp":1}`)})
	}()
	select {
	case <-fl.entered:
	case <-time.After(waitFor):
		t.Fatal("Submit was not called")
	}
	if err := b.Ready(); err != nil {
		t.Errorf("Ready while serving: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return")
	}
	if conn, err := net.Dial("tcp", b.Addr().String()); err == nil {
		conn.Close()
		t.Error("listener still accepts after Run returned")
	}
	if b.Ready() == nil {
		t.Error("Ready after Run returned")
	}
	if got := testutil.ToFloat64(b.h.m.rejected.WithLabelValues("shutdown")); got != 1 {
		t.Errorf("rejected{reason=shutdown} = %v, want 1", got)
	}
}

// TestBrokerRunEndsWithSilentConnection: a connection that never sent
// CONNECT does not hold the broker's shutdown (mochi waits for every
// connection): Run returns once the close grace is over.
func TestBrokerRunEndsWithSilentConnection(t *testing.T) {
	b, err := NewBroker("127.0.0.1:0", BrokerOptions{}, Deps{Submit: newFakeLog().submit})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Wait until the broker serves: a client completes a connection.
	c := connectV5(t, b.Addr().String(), "probe")
	_ = c.Disconnect(&paho.Disconnect{})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(closeGrace + waitFor):
		t.Fatal("Run did not return: the silent connection holds the shutdown")
	}
}
