package ratelimit

import (
	"context"
	"strconv"
	"testing"
)

// BenchmarkAllow measures one check, in memory and in Redis (one script
// call), over 1 000 clients.
//
//	go test -run '^$' -bench Allow -benchtime 5000x ./internal/ratelimit/
func BenchmarkAllow(b *testing.B) {
	rdb, prefix := testRedis(b)
	for _, bc := range []struct {
		name string
		opts Options
	}{
		{"memory", Options{}},
		{"redis", Options{Redis: rdb, Prefix: prefix}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			opts := bc.opts
			opts.Name, opts.Limit = "ingest", Limit{Rate: 1e6, Burst: 1e6}
			l, err := New(opts)
			if err != nil {
				b.Fatal(err)
			}
			keys := make([]string, 1000)
			for i := range keys {
				keys[i] = "ip:10.0." + strconv.Itoa(i/256) + "." + strconv.Itoa(i%256)
			}
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if ok, _, err := l.Allow(ctx, keys[i%len(keys)]); !ok || err != nil {
					b.Fatalf("refused: %v", err)
				}
				i++
			}
		})
	}
}
