package kafka

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestDesiredWriter writes documents and a tombstone to a kfake topic and
// reads them back: keyed by machine, one partition per machine, the
// tombstone a record without a value.
func TestDesiredWriter(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 4)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	w := NewDesiredWriter(cl, topic)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Write(ctx, "press-07", 1, map[string]any{"tempSetpoint": 180.0}); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := w.Write(ctx, "press-08", 3, nil); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := w.Write(ctx, "press-07", 2, map[string]any{"tempSetpoint": 185.0, "mode": "auto"}); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := w.Tombstone(ctx, "press-07"); err != nil {
		t.Fatalf("Tombstone: %v", err)
	}
	if err := w.Write(ctx, "", 1, nil); err == nil {
		t.Error("Write with an empty machine id: no error")
	}

	rd, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	type rec struct {
		Key       string
		Partition int32
		Value     map[string]any // nil: tombstone
	}
	var got []rec
	for len(got) < 4 {
		fs := rd.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %d records: %v", len(got), err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			x := rec{Key: string(r.Key), Partition: r.Partition}
			if r.Value != nil {
				if err := json.Unmarshal(r.Value, &x.Value); err != nil {
					t.Errorf("record value %s: %v", r.Value, err)
				}
			}
			got = append(got, x)
		})
	}
	// Across partitions the order is not kept: compare per machine.
	byKey := map[string][]rec{}
	for _, r := range got {
		byKey[r.Key] = append(byKey[r.Key], r)
	}
	p7 := byKey["press-07"]
	for _, r := range p7 {
		if r.Partition != p7[0].Partition {
			t.Errorf("press-07 in partitions %d and %d", p7[0].Partition, r.Partition)
		}
	}
	strip := func(rs []rec) []rec {
		out := make([]rec, len(rs))
		for i, r := range rs {
			r.Partition = 0
			out[i] = r
		}
		return out
	}
	want := map[string][]rec{
		"press-07": {
			{Key: "press-07", Value: map[string]any{"machine": "press-07", "version": 1.0, "desired": map[string]any{"tempSetpoint": 180.0}}},
			{Key: "press-07", Value: map[string]any{"machine": "press-07", "version": 2.0, "desired": map[string]any{"tempSetpoint": 185.0, "mode": "auto"}}},
			{Key: "press-07"},
		},
		"press-08": {
			{Key: "press-08", Value: map[string]any{"machine": "press-08", "version": 3.0, "desired": map[string]any{}}},
		},
	}
	for k, rs := range byKey {
		byKey[k] = strip(rs)
	}
	if diff := cmp.Diff(byKey, want); diff != "" {
		t.Errorf("records by machine (-got +want):\n%s", diff)
	}
}
