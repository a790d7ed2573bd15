package app

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/otlptest"
)

// TestTraceRelayWiring: with --otlp-endpoint, over either protocol, or
// with OTEL_EXPORTER_OTLP_ENDPOINT, a span
// posted to /api/v1/traces reaches the collector as the dashboard's, and
// the session tells the dashboard that tracing is on and where traces are
// viewed.
func TestTraceRelayWiring(t *testing.T) {
	rcv := otlptest.Start(t)
	for _, tt := range []struct {
		name    string
		tc      config.Tracing
		env     string // OTEL_EXPORTER_OTLP_ENDPOINT
		traceID string
	}{
		{"http", config.Tracing{Endpoint: rcv.HTTPURL, Protocol: "http/protobuf", UIURL: "http://jaeger:16686/trace/{traceId}"}, "",
			"4bf92f3577b34da6a3ce929d0e0e4736"},
		{"grpc", config.Tracing{Endpoint: "http://" + rcv.GRPCAddr, Protocol: "grpc"}, "", "0af7651916cd43dd8448eb211c80319c"},
		{"env", config.Tracing{}, rcv.HTTPURL, "5b8efff798038103d269b633813fc60c"},
	} {
		tc, traceID := tt.tc, tt.traceID
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tt.env)
			cfg := config.Default()
			cfg.Listen = "127.0.0.1:0"
			cfg.DataDir = t.TempDir()
			cfg.Tracing = tc
			ctx, cancel := context.WithCancel(context.Background())
			a, err := New(ctx, cfg, slog.New(slog.DiscardHandler), "test")
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			})
			base := "http://" + a.Addr().String()

			resp, err := http.Get(base + "/api/v1/session")
			if err != nil {
				t.Fatal(err)
			}
			var sess struct {
				Tracing struct {
					Enabled bool   `json:"enabled"`
					UIURL   string `json:"uiUrl"`
				} `json:"tracing"`
			}
			err = json.NewDecoder(resp.Body).Decode(&sess)
			resp.Body.Close()
			if err != nil || !sess.Tracing.Enabled || sess.Tracing.UIURL != tc.UIURL {
				t.Errorf("session tracing %+v (%v); want enabled, uiUrl %q", sess.Tracing, err, tc.UIURL)
			}

			body := `{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"` + traceID + `","spanId":"00f067aa0ba902b7",` +
				`"name":"render","startTimeUnixNano":"1765000000000000000","endTimeUnixNano":"1765000000010000000"}]}]}]}`
			resp, err = http.Post(base+"/api/v1/traces", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("relay: %d %s", resp.StatusCode, b)
			}
			spans := rcv.Wait(t, 10*time.Second, func(s []otlptest.Span) bool { return len(otlptest.Trace(s, traceID)) > 0 })
			s := otlptest.Trace(spans, traceID)[0]
			if s.Name != "render" || s.Resource["service.name"] != "twinline-dashboard" {
				t.Errorf("received %q of %q; want render of twinline-dashboard", s.Name, s.Resource["service.name"])
			}
		})
	}
}
