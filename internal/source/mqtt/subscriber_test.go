package mqtt

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/telemetry"
)

const mosquittoAddr = "127.0.0.1:1883"

// needMosquitto skips the test, or fails it under CI=true, when the shared
// Mosquitto is not reachable.
func needMosquitto(t *testing.T) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", mosquittoAddr, 2*time.Second)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Mosquitto at %s is required under CI=true: %v", mosquittoAddr, err)
		}
		t.Skipf("Mosquitto at %s is not reachable (%v); start it or set CI=true to make this a failure", mosquittoAddr, err)
	}
	conn.Close()
}

// uniq returns a name no other test run uses.
var uniqN atomic.Int64

func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d-%d-%d", prefix, os.Getpid(), time.Now().UnixNano()%1e9, uniqN.Add(1))
}

// runSubscriber runs s until stop is called (or the test ends).
func runSubscriber(t *testing.T, s *Subscriber) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(2 * waitFor):
				t.Errorf("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitReady waits until the subscriber is connected and subscribed.
func waitReady(t *testing.T, s *Subscriber) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitFor)
	for s.Ready() != nil {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("subscriber not ready within %v: %v", waitFor, s.Ready())
		}
	}
}

// dropSession makes the broker forget a client's persistent session when
// the test ends (register it before the subscriber starts, so that it runs
// after the subscriber stopped): a session left behind would queue every
// telemetry message of every later test for an hour.
func dropSession(t *testing.T, addr, clientID string) {
	t.Cleanup(func() {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: clientID})
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		// Clean start, no session expiry: the old session is discarded,
		// and the new one ends with the connection.
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true}); err != nil {
			t.Logf("dropping the session of %s: %v", clientID, err)
			conn.Close()
			return
		}
		_ = c.Disconnect(&paho.Disconnect{})
	})
}

// machineEvents keeps only the events of one machine: the subscription
// also sees other tests' messages.
func (f *fakeLog) valuesOf(machine string) []float64 {
	var vs []float64
	for _, ev := range f.events() {
		if ev.Machine == machine {
			vs = append(vs, ev.Metrics[0].Value)
		}
	}
	return vs
}

func TestSubscriberMosquitto(t *testing.T) {
	t.Parallel()
	needMosquitto(t)
	tests := []struct {
		name  string
		group string
	}{
		{"plain subscription", "-"},
		{"shared subscription", uniq("g")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fl := newFakeLog()
			clientID := uniq("sub")
			dropSession(t, mosquittoAddr, clientID)
			s, err := NewSubscriber("mqtt://"+mosquittoAddr, SubscriberOptions{ClientID: clientID, Group: tt.group}, fl.deps(t, nil))
			if err != nil {
				t.Fatal(err)
			}
			runSubscriber(t, s)
			waitReady(t, s)

			site, machine := uniq("site"), uniq("m")
			pub := connectV5(t, mosquittoAddr, uniq("pub"))
			topic := TelemetryTopic(site, "line-1", machine)
			for _, p := range []string{`{"temp":1}`, `{"temp":`, "env temp=2"} {
				if code, reason := publish(t, pub, topic, p); code != 0 {
					t.Fatalf("publishing to Mosquitto: %#x %s", code, reason)
				}
			}
			fl.waitEvent(t, machine, 2)
			if diff := cmp.Diff(fl.valuesOf(machine), []float64{1, 2}); diff != "" {
				t.Errorf("stored values (-got +want):\n%s", diff)
			}
			reg := fl.waitRegistered(t, machine)
			if diff := cmp.Diff(reg, [2]string{site, "line-1"}); diff != "" {
				t.Errorf("registered (-got +want):\n%s", diff)
			}
			if got := testutil.ToFloat64(s.h.m.rejected.WithLabelValues("payload")); got < 1 {
				t.Errorf("rejected{reason=payload} = %v, want ≥ 1", got)
			}
		})
	}
}

// TestSubscriberRedelivery shows that a message whose submit did not finish
// is not acknowledged and comes again when a subscriber with the same
// client id resumes the session, and that a message published while the
// subscriber was away is delivered on its return.
func TestSubscriberRedelivery(t *testing.T) {
	t.Parallel()
	needMosquitto(t)
	clientID, group := uniq("sub"), uniq("g")
	dropSession(t, mosquittoAddr, clientID)
	machine := uniq("m")
	topic := TelemetryTopic("s", "l", machine)
	pub := connectV5(t, mosquittoAddr, uniq("pub"))

	// First life: the submit never completes (a crash before durability).
	stuck := newFakeLog()
	stuck.entered = make(chan *telemetry.Batch, 100)
	stuck.gate = make(chan error)
	s1, err := NewSubscriber("mqtt://"+mosquittoAddr+"?group="+group, SubscriberOptions{ClientID: clientID, DrainTimeout: 100 * time.Millisecond}, stuck.deps(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	stop1 := runSubscriber(t, s1)
	waitReady(t, s1)
	publish(t, pub, topic, `{"temp":1}`)
	waitEntered(t, stuck, machine)
	stop1()

	// While away: another message.
	publish(t, pub, topic, `{"temp":2}`)

	// Second life, same client id: both come.
	fl := newFakeLog()
	s2, err := NewSubscriber("mqtt://"+mosquittoAddr+"?group="+group, SubscriberOptions{ClientID: clientID}, fl.deps(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	runSubscriber(t, s2)
	fl.waitEvent(t, machine, 1)
	fl.waitEvent(t, machine, 2)
}

// waitEntered waits until Submit is entered with an event of machine.
func waitEntered(t *testing.T, f *fakeLog, machine string) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case b := <-f.entered:
			if len(b.Events) > 0 && b.Events[0].Machine == machine {
				return
			}
		case <-deadline:
			t.Fatalf("Submit not entered for %s", machine)
		}
	}
}

// mosquitto is a private Mosquitto on its own port.
type mosquitto struct {
	t    testing.TB
	port int
	conf string
	cmd  *exec.Cmd
}

func startMosquitto(t testing.TB, port int, extraConf ...string) *mosquitto {
	t.Helper()
	const bin = "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mosquitto binary needed under CI=true: %v", err)
		}
		t.Skipf("no mosquitto binary at %s", bin)
	}
	if port == 0 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	text := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n", port)
	text += strings.Join(extraConf, "\n") + "\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &mosquitto{t: t, port: port, conf: conf}
	m.start()
	t.Cleanup(m.kill)
	return m
}

func (m *mosquitto) addr() string { return fmt.Sprintf("127.0.0.1:%d", m.port) }

// start starts the broker and waits until its log says it is running.
func (m *mosquitto) start() {
	m.t.Helper()
	cmd := exec.Command("/usr/sbin/mosquitto", "-c", m.conf)
	out, err := cmd.StdoutPipe()
	if err != nil {
		m.t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.cmd = cmd
	running := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), "running") {
				close(running)
				signalled = true
			}
		}
	}()
	select {
	case <-running:
	case <-time.After(waitFor):
		m.t.Fatalf("mosquitto on port %d did not start", m.port)
	}
}

// kill stops the broker abruptly.
func (m *mosquitto) kill() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	_ = m.cmd.Wait()
	m.cmd = nil
}

// TestSubscriberBrokerRestart kills a private Mosquitto under a running
// subscriber, restarts it on the same port, and shows the subscriber
// reconnect, subscribe again and receive; then it cuts the network between
// the subscriber and the broker, publishes while the subscriber is away, and
// shows the message delivered after the subscriber reconnects on its own
// (the broker kept it in the subscriber's persistent session).
func TestSubscriberBrokerRestart(t *testing.T) {
	t.Parallel()
	m := startMosquitto(t, 0)
	px := newProxy(t, m.addr())
	fl := newFakeLog()
	s, err := NewSubscriber("mqtt://"+px.Addr(), SubscriberOptions{
		ClientID: "restart", MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	}, fl.deps(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	runSubscriber(t, s)
	waitReady(t, s)
	pub := connectV5(t, m.addr(), "pub1")
	topic := TelemetryTopic("s", "l", "m")
	publish(t, pub, topic, `{"temp":1}`)
	fl.waitEvent(t, "m", 1)

	t.Log("killing and restarting the broker")
	m.kill()
	waitNotReady(t, s)
	m.start()
	waitReady(t, s)
	if got := testutil.ToFloat64(s.connGauge); got != 1 {
		t.Errorf("connected gauge = %v, want 1", got)
	}
	pub2 := connectV5(t, m.addr(), "pub2")
	publish(t, pub2, topic, `{"temp":2}`)
	fl.waitEvent(t, "m", 2)

	t.Log("cutting the subscriber off; the broker stays up")
	px.Cut()
	waitNotReady(t, s)
	if code, reason := publish(t, pub2, topic, `{"temp":3}`); code != 0 {
		t.Fatalf("publishing while the subscriber is away: %#x %s", code, reason)
	}
	px.Restore()
	waitReady(t, s)
	fl.waitEvent(t, "m", 3)
	// QoS 1 is at least once: a message whose acknowledgement was still
	// on its way when the connection broke comes again.
	got := fl.valuesOf("m")
	slices.Sort(got)
	if diff := cmp.Diff(slices.Compact(got), []float64{1, 2, 3}); diff != "" {
		t.Errorf("distinct stored values (-got +want):\n%s", diff)
	}
}

// waitNotReady waits until the subscriber has noticed it is disconnected.
func waitNotReady(t *testing.T, s *Subscriber) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitFor)
	for s.Ready() == nil {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("subscriber still ready after the broker was killed")
		}
	}
}

func TestNewSubscriberURL(t *testing.T) {
	fl := newFakeLog()
	tests := []struct {
		name, url  string
		wantFilter string
		wantClient string
		wantErr    string
	}{
		{"defaults", "mqtt://broker:1883", "$share/twinline/twinline/+/+/+/telemetry", "", ""},
		{"group and client from the query", "mqtt://broker:1883?group=g1&client_id=c1", "$share/g1/twinline/+/+/+/telemetry", "c1", ""},
		{"no shared subscription", "mqtt://broker:1883?group=", "twinline/+/+/+/telemetry", "", ""},
		{"bad scheme", "http://broker", "", "", "scheme"},
		{"no host", "mqtt://", "", "", "no host"},
		{"bad group", "mqtt://b?group=a/b", "", "", "group"},
		{"bad expiry", "mqtt://b?session_expiry=soon", "", "", "session_expiry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSubscriber(tt.url, SubscriberOptions{}, fl.deps(t, nil))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewSubscriber(%q) error = %v, want one containing %q", tt.url, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Filter(); got != tt.wantFilter {
				t.Errorf("Filter() = %q, want %q", got, tt.wantFilter)
			}
			if tt.wantClient != "" && s.opts.ClientID != tt.wantClient {
				t.Errorf("client id = %q, want %q", s.opts.ClientID, tt.wantClient)
			}
			if s.url.RawQuery != "" {
				t.Errorf("query %q kept in the broker url", s.url.RawQuery)
			}
		})
	}
}
