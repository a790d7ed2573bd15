package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/tcpproxy"
	"github.com/twinline/twinline/internal/telemetry"
)

// waitFor is how long a test waits for something that should happen.
const waitFor = 10 * time.Second

// fakeLog is a Submit that records batches and registrations. With gate
// set, each Submit first announces its batch on entered and then waits for
// an error (nil: durable) on gate.
type fakeLog struct {
	entered chan *telemetry.Batch
	gate    chan error

	mu         sync.Mutex
	batches    []*telemetry.Batch
	registered map[string][2]string
	fail       error // returned by every Submit when set
	added      chan struct{}
}

func newFakeLog() *fakeLog {
	return &fakeLog{registered: map[string][2]string{}, added: make(chan struct{}, 1)}
}

func (f *fakeLog) submit(ctx context.Context, b *telemetry.Batch) (int, int, error) {
	if f.gate != nil {
		select {
		case f.entered <- b:
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
		select {
		case err := <-f.gate:
			if err != nil {
				return 0, 0, err
			}
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return 0, 0, f.fail
	}
	f.batches = append(f.batches, b)
	select {
	case f.added <- struct{}{}:
	default:
	}
	return len(b.Events), 0, nil
}

func (f *fakeLog) register(machine, site, line string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registered[machine] = [2]string{site, line}
	select {
	case f.added <- struct{}{}:
	default:
	}
}

// waitRegistered returns machine's registered site and line once the
// handler registered it (after its events were stored: a moment after
// waitEvent returns), or fails the test.
func (f *fakeLog) waitRegistered(t *testing.T, machine string) [2]string {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		reg, ok := f.registered[machine]
		f.mu.Unlock()
		if ok {
			return reg
		}
		select {
		case <-f.added:
		case <-deadline.C:
			t.Fatalf("%s not registered within %v", machine, waitFor)
		}
	}
}

func (f *fakeLog) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

// events returns the events stored so far.
func (f *fakeLog) events() []telemetry.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	var evs []telemetry.Event
	for _, b := range f.batches {
		evs = append(evs, b.Events...)
	}
	return evs
}

// waitEvents waits until an event of machine with metric value v is stored.
func (f *fakeLog) waitEvent(t *testing.T, machine string, v float64) telemetry.Event {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		for _, ev := range f.events() {
			if ev.Machine == machine && len(ev.Metrics) > 0 && ev.Metrics[0].Value == v {
				return ev
			}
		}
		select {
		case <-f.added:
		case <-deadline.C:
			t.Fatalf("no event of %s with value %v stored within %v; have %v", machine, v, waitFor, f.events())
		}
	}
}

func (f *fakeLog) deps(t *testing.T, reg prometheus.Registerer) Deps {
	return Deps{Submit: f.submit, Register: f.register, Logger: testLogger(t), Registerer: reg}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// startBroker runs a broker on a free loopback port until the test ends.
func startBroker(t *testing.T, opts BrokerOptions, deps Deps) *Broker {
	t.Helper()
	b, err := NewBroker("127.0.0.1:0", opts, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitFor):
			t.Errorf("Run did not return within %v of cancellation", waitFor)
		}
	})
	return b
}

// connectV5 connects an MQTT 5 client (paho) to addr.
func connectV5(t *testing.T, addr, clientID string) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: clientID})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatalf("connecting %s: %v", clientID, err)
	}
	if ca.ReasonCode != 0 {
		t.Fatalf("connecting %s: reason code %#x", clientID, ca.ReasonCode)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return c
}

// publish publishes with QoS 1 and returns the PUBACK reason code.
func publish(t *testing.T, c *paho.Client, topic, payload string) (byte, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	pr, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if pr == nil {
		t.Fatalf("publishing to %s: %v", topic, err)
	}
	reason := ""
	if pr.Properties != nil {
		reason = pr.Properties.ReasonString
	}
	return pr.ReasonCode, reason
}

// v3Client is a minimal MQTT 3.1.1 client (paho.golang speaks only MQTT 5),
// built on mochi's packet codec.
type v3Client struct {
	conn net.Conn
	r    *bufio.Reader
	id   uint16
}

func connectV3(t *testing.T, addr, clientID string) *v3Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &v3Client{conn: conn, r: bufio.NewReader(conn)}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: clientID, Keepalive: 30},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	ack, err := c.read()
	if err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connecting v3 client: %+v, %v", ack, err)
	}
	return c
}

// publish sends a QoS 1 PUBLISH and returns its packet id.
func (c *v3Client) publish(t *testing.T, topic, payload string) uint16 {
	t.Helper()
	c.id++
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1},
		ProtocolVersion: 4,
		TopicName:       topic,
		PacketID:        c.id,
		Payload:         []byte(payload),
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	return c.id
}

// read reads one CONNACK or PUBACK packet.
func (c *v3Client) read() (packets.Packet, error) {
	if err := c.conn.SetReadDeadline(time.Now().Add(waitFor)); err != nil {
		return packets.Packet{}, err
	}
	hb, err := c.r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return packets.Packet{}, err
	}
	n, err := binary.ReadUvarint(c.r) // MQTT's remaining length is a base-128 varint
	if err != nil {
		return packets.Packet{}, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 4}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d", fh.Type)
	}
	return pk, err
}

// readPuback reads a PUBACK and checks its packet id.
func (c *v3Client) readPuback(t *testing.T, id uint16) {
	t.Helper()
	pk, err := c.read()
	if err != nil {
		t.Fatalf("reading PUBACK %d: %v", id, err)
	}
	if pk.FixedHeader.Type != packets.Puback || pk.PacketID != id {
		t.Fatalf("got packet type %d id %d, want PUBACK %d", pk.FixedHeader.Type, pk.PacketID, id)
	}
}

// isClosed reports whether err means the connection was closed.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET)
}

// proxy is a TCP proxy whose connections the test can cut.
type proxy = tcpproxy.Proxy

func newProxy(t testing.TB, target string) *proxy { return tcpproxy.New(t, target) }
