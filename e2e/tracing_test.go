package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/twinline/twinline/internal/otlptest"
)

// TestTraceMQTTKafkaPostgres: the sensor-to-screen trace, across
// three twinline processes: a device publishes one event over MQTT 5 with
// a traceparent user property to a gateway (embedded broker, Kafka
// producer, exporting over OTLP/gRPC); a processor consumes it from Kafka
// (kfake) and commits it to PostgreSQL (exporting over OTLP/HTTP); an API
// replica streams it to a WebSocket client through the Redis fan-out. The
// in-test collector gets one trace: mqtt receive (under the device's span)
// → send → process → live → hub publish (the live stream before the
// commit: ADR 0017), store commit, sinks, each from the
// replica that did it, with the messaging and database attributes; and
// the client's samples message carries the hub publish span's
// traceparent.
func TestTraceMQTTKafkaPostgres(t *testing.T) {
	dbURL := pgDatabase(t)
	prefix := redisPrefix(t)
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50") // ms: export at once
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "twinline.telemetry"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close) // after the servers stopped
	brokers := cluster.ListenAddrs()[0]
	shared := []string{"--kafka-brokers", brokers, "--store", "postgres", "--postgres-url", dbURL,
		"--redis-url", "redis://" + redisAddr + "/0", "--redis-prefix", prefix, "--trace-sample", "0"}
	mqttAddr := freeAddr(t)
	gw := start(t, "", "--role", "gateway", "--kafka-brokers", brokers, "--mqtt-listen", mqttAddr, "--store", "postgres", "--postgres-url", dbURL,
		"--otlp-endpoint", "http://"+rcv.GRPCAddr, "--otlp-protocol", "grpc", "--trace-sample", "0")
	proc := start(t, "", append([]string{"--role", "processor", "--kafka-instance-id", "proc-1", "--otlp-endpoint", rcv.HTTPURL}, shared...)...)
	apiSrv := start(t, "", append([]string{"--role", "api", "--otlp-endpoint", rcv.HTTPURL}, shared...)...)

	c := ctx(t, 60*time.Second)
	for _, s := range []*server{gw, proc, apiSrv} {
		awaitReady(t, c, s)
	}
	stream := subscribe(t, c, apiSrv, "machine=tr-press", false)
	if m := nextData(t, c, stream, "hello"); m.Type != "hello" {
		t.Fatal(m)
	}

	const traceID, deviceSpan = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	conn, err := net.Dial("tcp", mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	device := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "tr-press"})
	if ca, err := device.Connect(c, &paho.Connect{ClientID: "tr-press", KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer device.Disconnect(&paho.Disconnect{})
	pr, err := device.Publish(c, &paho.Publish{Topic: "twinline/lyon/line-a/tr-press/telemetry", QoS: 1,
		Payload:    []byte(`{"temp":70.5}`),
		Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "traceparent", Value: "00-" + traceID + "-" + deviceSpan + "-01"}}}})
	if err != nil || pr.ReasonCode != 0 {
		t.Fatalf("publish: %v %+v", err, pr)
	}

	m := nextData(t, c, stream, "samples")
	if m.Machine != "tr-press" || len(m.Samples) != 1 || m.Samples[0].Value != 70.5 {
		t.Errorf("samples message %+v", m)
	}

	names := []string{"mqtt receive", "send", "process", "live", "hub publish", "store commit", "sinks"}
	spans := otlptest.Trace(rcv.Wait(t, 30*time.Second, func(s []otlptest.Span) bool {
		return len(otlptest.Trace(s, traceID)) >= len(names)
	}), traceID)
	byName := map[string]otlptest.Span{}
	for _, s := range spans {
		if _, dup := byName[s.Name]; dup {
			t.Errorf("two %q spans in the trace", s.Name)
		}
		byName[s.Name] = s
	}
	type want struct {
		parent, role string
		attrs        map[string]string
	}
	wants := map[string]want{
		"mqtt receive": {"", "gateway", map[string]string{"messaging.system": "mqtt", "messaging.destination.name": "twinline/lyon/line-a/tr-press/telemetry", "twinline.events": "1"}},
		"send":         {"mqtt receive", "gateway", map[string]string{"messaging.system": "kafka", "messaging.destination.name": "twinline.telemetry", "messaging.operation.type": "send"}},
		"process": {"send", "processor", map[string]string{"messaging.system": "kafka", "messaging.destination.name": "twinline.telemetry",
			"messaging.operation.type": "process", "messaging.consumer.group.name": "twinline-processor", "twinline.samples": "1"}},
		"store commit": {"process", "processor", map[string]string{"db.system.name": "postgresql", "db.operation.batch.size": "1"}},
		"sinks":        {"process", "processor", nil},
		"live":         {"process", "processor", nil},
		"hub publish":  {"live", "processor", map[string]string{"twinline.samples": "1"}},
	}
	for _, name := range names {
		s, ok := byName[name]
		if !ok {
			t.Errorf("no %q span in the trace; got %v", name, spans)
			continue
		}
		w := wants[name]
		parent := deviceSpan
		if w.parent != "" {
			parent = byName[w.parent].SpanID()
		}
		if s.ParentID() != parent {
			t.Errorf("%s under %s, want under %s (%s)", name, s.ParentID(), parent, w.parent)
		}
		if s.Resource["twinline.role"] != w.role || s.Resource["service.name"] != "twinline" {
			t.Errorf("%s from role %q (service %q), want %s", name, s.Resource["twinline.role"], s.Resource["service.name"], w.role)
		}
		for k, v := range w.attrs {
			if got := s.Attr(k); got != v {
				t.Errorf("%s %s = %q, want %q", name, k, got, v)
			}
		}
	}
	if want := "00-" + traceID + "-" + byName["hub publish"].SpanID() + "-01"; m.Traceparent != want {
		t.Errorf("the client's samples message carries traceparent %q, want %q", m.Traceparent, want)
	}
}
