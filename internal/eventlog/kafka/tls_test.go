package kafka

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tlsconf"
	"github.com/twinline/twinline/internal/tlsconf/tlstest"
)

func TestTLS(t *testing.T) {
	t.Parallel()
	ca := tlstest.NewCA(t)
	c, topic := newCluster(t, 2, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{ca.ServerCert(t)}}))
	brokers := c.ListenAddrs()
	cfg, err := tlsconf.ClientConfig(ca.WriteCAFile(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}

	prod := newProducer(t, brokers, topic, WithTLS(cfg))
	evs := events(3, 5, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Protocol: "json", Received: base}); err != nil {
		t.Fatalf("Append over TLS: %v", err)
	}
	st := offsettest.NewMemory()
	startConsumer(t, brokers, topic, "g", st, nil, WithTLS(cfg))
	want := len(samplesOf(evs))
	waitFor(t, 20*time.Second, "all samples stored over TLS", func() bool { return st.Len() == want })

	// Without WithTLS, or trusting other roots, nothing gets through.
	for name, opts := range map[string][]Option{
		"plaintext":   nil,
		"another CA":  {WithTLS(tlstest.NewCA(t).ClientConfig())},
		"system root": {WithTLS(&tls.Config{MinVersion: tls.VersionTLS12})},
	} {
		t.Run(name, func(t *testing.T) {
			p := newProducer(t, brokers, topic, append(opts, WithReadyPeriod(500*time.Millisecond))...)
			if err := p.Ready(); err == nil {
				t.Error("Ready() = nil, want an error")
			} else {
				t.Logf("Ready() = %v", err)
			}
		})
	}
}
