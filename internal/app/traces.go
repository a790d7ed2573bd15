package app

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"

	"github.com/twinline/twinline/internal/api"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/ratelimit"
)

// tracesLimit is the relay's rate per identity: a dashboard tab exports a
// batch of render spans every second at most (web/src/lib/otel.ts), and
// one identity may have a few tabs open.
var tracesLimit = ratelimit.Limit{Rate: 5, Burst: 20}

// newTraceRelayClient returns the OTLP client that POST /api/v1/traces
// forwards the dashboard's spans through, to the collector of
// --otlp-endpoint (a base URL: /v1/traces is appended for http/protobuf),
// or else of the standard OTEL_EXPORTER_OTLP_* variables, which the
// exporters read themselves; nil when tracing is off. Its Stop is the
// caller's.
func newTraceRelayClient(ctx context.Context, tc config.Tracing) (otlptrace.Client, error) {
	fromEnv := tc.Endpoint == ""
	if fromEnv && os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return nil, nil
	}
	protocol := tc.Protocol
	if protocol == "" {
		protocol = cmp.Or(os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL"))
	}
	var c otlptrace.Client
	switch {
	case fromEnv && protocol == "grpc":
		c = otlptracegrpc.NewClient()
	case fromEnv:
		c = otlptracehttp.NewClient()
	case protocol == "grpc":
		c = otlptracegrpc.NewClient(otlptracegrpc.WithEndpointURL(tc.Endpoint))
	default:
		u, err := url.Parse(tc.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("parsing --otlp-endpoint: %w", err)
		}
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
		c = otlptracehttp.NewClient(otlptracehttp.WithEndpointURL(u.String()))
	}
	if err := c.Start(ctx); err != nil {
		return nil, fmt.Errorf("starting the trace relay's exporter: %w", err)
	}
	return c, nil
}

// newTracesLimit is the relay's per-client rate limit (nil when rate
// limits are off), shared across replicas with Redis like the others.
func newTracesLimit(cfg config.Config, rdb redis.UniversalClient, logger *slog.Logger, reg prometheus.Registerer) (func(http.Handler) http.Handler, error) {
	if !rateLimited(cfg) {
		return nil, nil
	}
	l, err := ratelimit.New(ratelimit.Options{Name: "traces", Limit: tracesLimit, Redis: rdb, Prefix: cfg.RedisPrefix,
		Logger: logger, Registerer: reg, Key: api.ClientKey})
	if err != nil {
		return nil, fmt.Errorf("building the traces rate limit: %w", err)
	}
	return l.Middleware, nil
}
