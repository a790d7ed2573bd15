package alerting

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkFileOutboxChange is the outbox's cost of one alarm change:
// enqueued (one fsync), claimed, settled delivered (one fsync).
func BenchmarkFileOutboxChange(b *testing.B) {
	ob, err := OpenFileOutbox(filepath.Join(b.TempDir(), "outbox.jsonl"))
	if err != nil {
		b.Fatal(err)
	}
	defer ob.Close()
	ctx := context.Background()
	now := time.Now()
	body := `{"id":"alarm-1-raised","type":"alarm.raised","alarm":{"id":"1","machine":"press-7","metric":"temp","kind":"high","limit":90,"value":95,"state":"active"}}`
	i := 0
	for b.Loop() {
		i++
		id := strconv.Itoa(i)
		if err := ob.Enqueue(ctx, []Message{{ID: "alarm-" + id + "-raised", Alarm: id, Body: body, Created: now, NextAt: now}}); err != nil {
			b.Fatal(err)
		}
		ms, err := ob.Claim(ctx, now, time.Minute, 1)
		if err != nil || len(ms) != 1 {
			b.Fatal(ms, err)
		}
		if err := ob.Settle(ctx, ms[0], Outcome{State: StateDelivered, At: now}); err != nil {
			b.Fatal(err)
		}
	}
}
