package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
)

// DesiredWriter writes each machine's desired twin document to a compacted
// Kafka topic (--kafka-desired-topic, default twinline.desired): the key
// is the machine id, the value {"machine","version","desired"}, and a
// deleted twin is a tombstone (a record with the key and no value), so
// that compaction keeps the latest document of every machine and forgets
// deleted ones. A consumer that reads the topic from the start has the
// desired state of the fleet. Records of one machine go to one partition,
// in the order they were written.
type DesiredWriter struct {
	cl    *kgo.Client
	topic string
}

// NewDesiredWriter returns a writer to topic through cl; cl is the
// caller's (closed by it).
func NewDesiredWriter(cl *kgo.Client, topic string) *DesiredWriter {
	return &DesiredWriter{cl: cl, topic: topic}
}

// desiredRecord is the value of a record of the desired topic.
type desiredRecord struct {
	Machine string         `json:"machine"`
	Version uint64         `json:"version"`
	Desired map[string]any `json:"desired"`
}

// Write writes machine's desired document at version and returns once
// the broker has it (acks as the client is configured).
func (w *DesiredWriter) Write(ctx context.Context, machine string, version uint64, desired map[string]any) error {
	if machine == "" {
		return errors.New("writing desired document: empty machine id")
	}
	if desired == nil {
		desired = map[string]any{}
	}
	v, err := json.Marshal(desiredRecord{Machine: machine, Version: version, Desired: desired})
	if err != nil {
		return fmt.Errorf("encoding desired document of %s: %w", machine, err)
	}
	return w.produce(ctx, &kgo.Record{Topic: w.topic, Key: []byte(machine), Value: v})
}

// Tombstone writes a record with machine as key and no value: compaction
// then drops the machine's documents.
func (w *DesiredWriter) Tombstone(ctx context.Context, machine string) error {
	if machine == "" {
		return errors.New("writing desired tombstone: empty machine id")
	}
	return w.produce(ctx, &kgo.Record{Topic: w.topic, Key: []byte(machine)})
}

func (w *DesiredWriter) produce(ctx context.Context, r *kgo.Record) error {
	if err := w.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return fmt.Errorf("writing desired record of %s to %s: %w", r.Key, w.topic, err)
	}
	return nil
}
