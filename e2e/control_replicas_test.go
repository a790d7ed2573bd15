package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// mosquitto is the shared MQTT broker of the development and CI machines.
const mosquitto = "127.0.0.1:1883"

// needMosquitto fails the test under CI=true and skips it elsewhere when
// Mosquitto does not answer.
func needMosquitto(t *testing.T) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", mosquitto, 5*time.Second)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Mosquitto is required on %s under CI: %v", mosquitto, err)
		}
		t.Skipf("Mosquitto not reachable on %s: %v", mosquitto, err)
	}
	conn.Close()
}

// kafkaCluster starts a kfake cluster (the real Kafka protocol, in this
// test process, as TestKafkaExactlyOnce) with the telemetry topic and
// topics, closed after the servers started later stopped.
func kafkaCluster(t *testing.T, topics ...string) string {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, append([]string{"twinline.telemetry"}, topics...)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return cluster.ListenAddrs()[0]
}

// createCompacted creates topic as a compacted topic. kfake compacts on
// its log cleaner's backoff (log.cleaner.backoff.ms, one hour by default),
// so within a test every record written stays readable.
func createCompacted(t *testing.T, c context.Context, brokers, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	compact := "compact"
	resp, err := kadm.NewClient(cl).CreateTopic(c, 1, 1, map[string]*string{"cleanup.policy": &compact}, topic)
	if err != nil || resp.Err != nil {
		t.Fatalf("creating topic %s: %v %v", topic, err, resp.Err)
	}
}

// TestTwinTwoReplicas: two twinline processes on one PostgreSQL store,
// both subscribed to the shared Mosquitto (one shared-subscription group)
// and both serving the API. A desired document written on A reaches a
// device (paho) on Mosquitto, B's stream and B's GET; a command created on
// A reaches the device, its answer travels back through Mosquitto, and B
// shows it succeeded. Two replicas without Kafka may not both process the
// events of one PostgreSQL store (the processing lock), so both run with
// --kafka-brokers (kfake) and share the partitions.
func TestTwinTwoReplicas(t *testing.T) {
	needMosquitto(t)
	db := pgDatabase(t)
	brokers := kafkaCluster(t, "twinline.desired") // the desired topic the replicas write
	id := fmt.Sprintf("e2e-rep-%d", time.Now().UnixNano())
	replica := func(name string) *server {
		return start(t, "", "--store", "postgres", "--postgres-url", db,
			"--kafka-brokers", brokers, "--kafka-session-timeout", "6s", "--kafka-instance-id", id+"-"+name,
			"--mqtt-broker", "mqtt://"+mosquitto+"?client_id="+id+"-"+name+"&group="+id+"&session_expiry=1s")
	}
	a, b := replica("a"), replica("b")
	c := ctx(t, 60*time.Second)
	// Ready: among others, each replica's twin follower LISTENs, so that
	// it hears the other's changes.
	awaitReady(t, c, a)
	awaitReady(t, c, b)
	// The processors' group settled (each owns partitions): a replica
	// stopped while its consumer rejoins the group waits for the join
	// (kgo's Close) beyond the stop's deadline.
	for _, s := range []*server{a, b} {
		for !strings.Contains(s.logs.String(), `"msg":"partitions assigned","component":"kafka_consumer","topic":"twinline.telemetry","group":"twinline-processor","partitions":[`) {
			select {
			case <-c.Done():
				t.Fatalf("a replica never got partitions of the telemetry topic:\n%s", s.logs.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}

	machine := id + "-m"
	putMachine(t, a, machine, controlEntry)
	for b.get("/api/v1/machines/"+machine).status != 200 {
		select {
		case <-c.Done():
			t.Fatalf("B never saw machine %s registered on A", machine)
		case <-time.After(20 * time.Millisecond):
		}
	}
	base := "twinline/plant/l1/" + machine
	dev := connectDevice(t, c, mosquitto, machine, base+"/desired", base+"/commands/+")
	onB := subscribe(t, c, b, "machine="+machine, false)
	nextData(t, c, onB, "hello")

	// Desired on A → B's GET, B's stream, the device.
	r := a.do("PATCH", "/api/v1/machines/"+machine+"/twin/desired", "application/merge-patch+json", []byte(`{"tempSetpoint":180,"mode":"auto"}`))
	answered := time.Now()
	if r.status != 200 {
		t.Fatalf("PATCH desired on A: %d %s", r.status, r.body)
	}
	want := map[string]any{"tempSetpoint": 180.0, "mode": "auto"}
	for {
		var tw twinDoc
		if r := b.get("/api/v1/machines/" + machine + "/twin"); r.status == 200 {
			r.json(t, &tw)
		}
		if tw.Version == 1 {
			took := time.Since(answered)
			t.Logf("A's PATCH answered → B's GET shows version 1: %s", took)
			if took > time.Second {
				t.Errorf("B showed A's desired version after %s, want within 1 s", took)
			}
			if diff := cmp.Diff(tw.Desired, want); diff != "" {
				t.Errorf("B's desired (-got +want):\n%s", diff)
			}
			break
		}
		select {
		case <-c.Done():
			t.Fatalf("B's twin never reached version 1: %+v", tw)
		case <-time.After(10 * time.Millisecond):
		}
	}
	for {
		m := nextData(t, c, onB, "twin")
		var tw twinDoc
		if err := json.Unmarshal(m.Data, &tw); err != nil {
			t.Fatal(err)
		}
		if tw.Version == 1 {
			t.Logf("A's PATCH answered → B's stream: %s", time.Since(answered))
			if diff := cmp.Diff(tw.Desired, want); diff != "" {
				t.Errorf("twin on B's stream (-got +want):\n%s", diff)
			}
			break
		}
	}
	// With two replicas publishing, the device may get the document more
	// than once: at least once, with the content.
	var doc struct {
		Machine string         `json:"machine"`
		Version uint64         `json:"version"`
		Desired map[string]any `json:"desired"`
	}
	p := dev.next(t, c, base+"/desired")
	if err := json.Unmarshal(p.Payload, &doc); err != nil {
		t.Fatalf("desired on Mosquitto: %s: %v", p.Payload, err)
	}
	if doc.Machine != machine || doc.Version != 1 {
		t.Errorf("desired on Mosquitto: %s, want machine %s version 1", p.Payload, machine)
	}
	if diff := cmp.Diff(doc.Desired, want); diff != "" {
		t.Errorf("desired on Mosquitto (-got +want):\n%s", diff)
	}

	// A command created on A → the device → its answer → B.
	r = a.do("POST", "/api/v1/machines/"+machine+"/commands", "application/json", []byte(`{"name":"stop","timeout":"30s"}`))
	if r.status != 202 {
		t.Fatalf("create on A: %d %s", r.status, r.body)
	}
	var created command
	r.json(t, &created)
	p = dev.next(t, c, base+"/commands/"+created.ID)
	var got struct{ ID, Name string }
	if err := json.Unmarshal(p.Payload, &got); err != nil || got.ID != created.ID || got.Name != "stop" {
		t.Fatalf("command on Mosquitto: %s", p.Payload)
	}
	dev.publish(t, c, base+"/commands/"+created.ID+"/response", `{"state":"succeeded","result":{"stoppedAt":3}}`)
	var cmd command
	for cmd.State != "succeeded" {
		select {
		case <-c.Done():
			t.Fatalf("B never showed command %s succeeded: %+v", created.ID, cmd)
		case <-time.After(20 * time.Millisecond):
		}
		cmd = command{}
		b.get("/api/v1/machines/"+machine+"/commands/"+created.ID).json(t, &cmd)
	}
	if cmd.Result == nil {
		t.Errorf("B's command has no result: %+v", cmd)
	}
	// The command went out once: only A, which created it, publishes it
	// on the shared broker.
	for {
		select {
		case p := <-dev.msgs:
			if p.Topic == base+"/commands/"+created.ID {
				t.Fatalf("the command reached the device twice")
			}
			continue
		case <-time.After(500 * time.Millisecond):
		}
		break
	}
}

// TestDesiredKafkaTopic: the desired topic has, keyed by machine id, every
// desired version in order ({"machine","version","desired"}) and a
// tombstone once the machine is deleted from the registry.
func TestDesiredKafkaTopic(t *testing.T) {
	db := pgDatabase(t)
	brokers := kafkaCluster(t)
	c := ctx(t, 60*time.Second)
	id := fmt.Sprintf("e2e-desired-%d", time.Now().UnixNano())
	topic := id + ".desired"
	createCompacted(t, c, brokers, topic)
	s := start(t, "", "--store", "postgres", "--postgres-url", db,
		"--kafka-brokers", brokers, "--kafka-session-timeout", "6s", "--kafka-instance-id", id,
		"--kafka-desired-topic", topic)
	machine := id + "-m"
	putMachine(t, s, machine, controlEntry)
	for _, patch := range []string{`{"tempSetpoint":120,"mode":"manual"}`, `{"tempSetpoint":150,"mode":null}`} {
		if r := s.do("PATCH", "/api/v1/machines/"+machine+"/twin/desired", "application/merge-patch+json", []byte(patch)); r.status != 200 {
			t.Fatalf("PATCH %s: %d %s", patch, r.status, r.body)
		}
	}
	if r := s.do("DELETE", "/api/v1/machines/"+machine, "", nil); r.status/100 != 2 {
		t.Fatalf("DELETE machine: %d %s", r.status, r.body)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	type record struct {
		Key   string
		Value *string // nil: a tombstone
	}
	var records []record
	for len(records) < 3 {
		fs := cl.PollFetches(c)
		if c.Err() != nil {
			t.Fatalf("the desired topic has %d records, want 3: %+v", len(records), records)
		}
		if err := fs.Err(); err != nil {
			t.Fatalf("reading %s: %v", topic, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			rec := record{Key: string(r.Key)}
			if r.Value != nil {
				v := string(r.Value)
				rec.Value = &v
			}
			records = append(records, rec)
		})
	}
	if len(records) != 3 {
		t.Fatalf("the desired topic has %d records, want 3: %+v", len(records), records)
	}
	type value struct {
		Machine string         `json:"machine"`
		Version uint64         `json:"version"`
		Desired map[string]any `json:"desired"`
	}
	wants := []value{
		{machine, 1, map[string]any{"tempSetpoint": 120.0, "mode": "manual"}},
		{machine, 2, map[string]any{"tempSetpoint": 150.0}},
	}
	for i, want := range wants {
		r := records[i]
		if r.Key != machine || r.Value == nil {
			t.Fatalf("record %d: key %q value %v, want key %s and a document", i, r.Key, r.Value, machine)
		}
		var got value
		if err := json.Unmarshal([]byte(*r.Value), &got); err != nil {
			t.Fatalf("record %d: %s: %v", i, *r.Value, err)
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("record %d (-got +want):\n%s", i, diff)
		}
	}
	if last := records[2]; last.Key != machine || last.Value != nil {
		t.Errorf("last record: key %q value %v, want a tombstone of %s", last.Key, last.Value, machine)
	}
}
