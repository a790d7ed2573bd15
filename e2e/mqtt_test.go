package e2e

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestMQTTEmbeddedBroker: events published with QoS 1 to the embedded
// broker are acknowledged once durable — queryable right after the PUBACK,
// and still there after a kill -9 — the topic's site and line land in the
// registry, and a bad payload is refused with a reason code while good ones
// keep flowing on the same connection.
func TestMQTTEmbeddedBroker(t *testing.T) {
	dir := t.TempDir()
	mqttAddr := freeAddr(t)
	s := start(t, dir, "--mqtt-listen", mqttAddr)

	c := ctx(t, 30*time.Second)
	conn, err := net.Dial("tcp", mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	client := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "e2e-press"})
	if ca, err := client.Connect(c, &paho.Connect{ClientID: "e2e-press", KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer client.Disconnect(&paho.Disconnect{})
	publish := func(topic, payload string) byte {
		t.Helper()
		pr, err := client.Publish(c, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
		if pr == nil {
			t.Fatalf("publish: %v", err)
		}
		return pr.ReasonCode
	}
	now := time.Now().UnixMilli()
	if rc := publish("twinline/lyon/line-a/mq-1/telemetry", `{"timestamp":`+itoa(now-2000)+`,"temp":70.5}`); rc != 0 {
		t.Fatalf("JSON publish: reason code %#x", rc)
	}
	if rc := publish("twinline/lyon/line-a/mq-1/telemetry", `{"temp":`); rc < 0x80 {
		t.Errorf("bad payload: reason code %#x, want a failure (≥ 0x80)", rc)
	}
	if rc := publish("twinline/lyon/line-a/mq-1/telemetry", "env temp=71.5 "+itoa(now-1000)+"000000"); rc != 0 {
		t.Fatalf("line-protocol publish: reason code %#x", rc)
	}
	// Acknowledged means durable: queryable at once.
	got := s.series("mq-1", "temp")
	if len(got.V) != 1 || got.V[0] != 70.5 {
		t.Errorf("temp after the PUBACK: %v, want [70.5]", got.V)
	}
	if got := s.series("mq-1", "env_temp"); len(got.V) != 1 || got.V[0] != 71.5 {
		t.Errorf("env_temp after the PUBACK: %v, want [71.5]", got.V)
	}
	var m struct{ Site, Line string }
	s.get("/api/v1/machines/mq-1").json(t, &m)
	if m.Site != "lyon" || m.Line != "line-a" {
		t.Errorf("registry: site %q line %q, want lyon, line-a", m.Site, m.Line)
	}

	s.kill()
	s2 := start(t, dir, "--mqtt-listen", freeAddr(t))
	if got := s2.series("mq-1", "temp"); len(got.V) != 1 {
		t.Errorf("after kill -9: %d temp samples, want 1", len(got.V))
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// TestMQTTExternalBroker: twinline subscribed to the local Mosquitto (a
// shared subscription of its own group) stores what a device publishes
// there, and tells /readyz it is connected.
func TestMQTTExternalBroker(t *testing.T) {
	const broker = "127.0.0.1:1883"
	conn, err := net.DialTimeout("tcp", broker, 5*time.Second)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Mosquitto is required on %s under CI: %v", broker, err)
		}
		t.Skipf("Mosquitto not reachable on %s: %v", broker, err)
	}
	id := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	s := start(t, "", "--mqtt-broker", "mqtt://"+broker+"?client_id="+id+"&group="+id+"&session_expiry=1s")
	c := ctx(t, 30*time.Second)
	// Ready, not degraded: subscribed (a shared subscription keeps nothing
	// published before it exists).
	awaitReady(t, c, s)

	client := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: id + "-device"})
	if ca, err := client.Connect(c, &paho.Connect{ClientID: id + "-device", KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer client.Disconnect(&paho.Disconnect{})
	machine := id + "-m"
	if _, err := client.Publish(c, &paho.Publish{Topic: "twinline/plant/l1/" + machine + "/telemetry", QoS: 1,
		Payload: []byte(`{"timestamp":` + itoa(time.Now().UnixMilli()-1000) + `,"temp":42.5}`)}); err != nil {
		t.Fatal(err)
	}
	// Delivery to the subscriber is asynchronous: poll the query API.
	for {
		if r := s.get("/api/v1/machines/" + machine + "/latest"); r.status == 200 {
			if got := s.series(machine, "temp"); len(got.V) != 1 || got.V[0] != 42.5 {
				t.Errorf("temp = %v, want [42.5]", got.V)
			}
			return
		}
		select {
		case <-c.Done():
			t.Fatal("the event published on Mosquitto never arrived")
		case <-time.After(20 * time.Millisecond):
		}
	}
}
