package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestProducerCarriesVerifiedIdentity: each record names the identity the
// gateway verified (from the submit context), and none when the request
// was anonymous.
func TestProducerCarriesVerifiedIdentity(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	p := newProducer(t, c.ListenAddrs(), topic)
	batch := func(machine string) *telemetry.Batch {
		return &telemetry.Batch{Events: []telemetry.Event{{Machine: machine, Time: base, Metrics: []telemetry.Metric{{Name: "temp", Value: 1}}}}}
	}
	id := auth.Identity{Name: "press-9", Kind: auth.KindToken, Scopes: auth.ScopeIngest}
	if err := p.Append(auth.NewContext(context.Background(), id), batch("m1")); err != nil {
		t.Fatal(err)
	}
	if err := p.Append(auth.NewContext(context.Background(), auth.Anonymous), batch("m2")); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for len(got) < 2 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("records consumed: %v", got)
		}
		fs.EachRecord(func(r *kgo.Record) {
			got[string(r.Key)] = ""
			for _, h := range r.Headers {
				if h.Key == IdentityHeader {
					got[string(r.Key)] = string(h.Value)
				}
			}
		})
	}
	if got["m1"] != "token:press-9" || got["m2"] != "" {
		t.Errorf("identity headers %v: want m1 token:press-9, m2 none", got)
	}
}
