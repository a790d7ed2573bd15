// Package tracing is twinline's OpenTelemetry tracing: Setup builds the
// tracer provider from config.Tracing and the standard OTEL_* variables
// (the flags win), exporting over OTLP/HTTP or OTLP/gRPC through a batch
// span processor; Tracer starts the spans of one package; LogHandler adds
// the trace and span ids to log lines written inside a traced operation.
//
// Tracing is off unless an OTLP endpoint is configured, and free when off:
// a nil *Tracer starts nothing, extracts nothing and allocates nothing. On,
// a span that could not be sampled (its parent is not sampled and the
// sampler takes no new trace, e.g. --trace-sample 0) is not started either,
// so sampler 0 costs what off costs for requests without a sampled
// traceparent. What crosses a hop is the W3C trace context (traceparent,
// tracestate): HTTP headers, MQTT 5 user properties, Kafka record headers,
// and the traceparent member of the live stream's samples messages.
package tracing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// ErrOff reports an upload while tracing is off (no OTLP endpoint).
var ErrOff = errors.New("tracing is off: no OTLP endpoint configured")

// RoleKey is the resource attribute naming the replica's role
// (all, gateway, processor, api).
const RoleKey = attribute.Key("twinline.role")

// Config is config.Tracing as far as Setup needs it (internal/app hands
// it over): this package depends on no configuration package, so that the
// logs and sources it traces stay below the engine (internal/pipeline's
// TestLayers).
type Config struct {
	// Endpoint is the OTLP collector's base URL ("": the OTEL_* variables).
	Endpoint string
	// Protocol is grpc, http/protobuf or http/json ("": the OTEL_*
	// variables, else http/protobuf).
	Protocol string
	// Sample is the fraction of new traces sampled, parent-based;
	// negative: OTEL_TRACES_SAMPLER decides.
	Sample float64
}

// Identity is what the resource says of this process, besides its
// service name (OTEL_SERVICE_NAME, default "twinline").
type Identity struct {
	// Version is service.version.
	Version string
	// Role is twinline.role.
	Role string
	// Replica is service.instance.id: the host name, or
	// --kafka-instance-id.
	Replica string
}

// Tracing is the process's tracer provider, off or exporting. Its methods
// are safe for concurrent use.
type Tracing struct {
	provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider // nil when off
	client   otlptrace.Client         // nil when off
	prop     propagation.TextMapPropagator
	// roots says the sampler may sample a trace that starts here (one
	// without a sampled parent).
	roots    bool
	endpoint string
	protocol string
}

// Setup builds the tracer provider of cfg, whose empty fields the OTEL_*
// variables fill (OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _PROTOCOL,
// _HEADERS, OTEL_TRACES_SAMPLER(_ARG), OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*). Without an endpoint tracing is
// off: the result's Tracer returns nil, and Shutdown does nothing. Call
// Shutdown once the last span ended, to flush.
func Setup(ctx context.Context, cfg Config, id Identity) (*Tracing, error) {
	t := &Tracing{provider: noop.NewTracerProvider(), prop: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = cmp.Or(os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"))
	}
	if endpoint == "" {
		return t, nil
	}
	sampler, roots, err := newSampler(cfg.Sample, os.Getenv)
	if err != nil {
		return nil, err
	}
	protocol := cmp.Or(cfg.Protocol, os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf")
	client, err := newClient(cfg.Endpoint, protocol)
	if err != nil {
		return nil, err
	}
	res, err := newResource(ctx, id)
	if err != nil {
		return nil, err
	}
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("starting the OTLP exporter: %w", err)
	}
	t.sdk = sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp), // OTEL_BSP_* tune it
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
	)
	t.provider, t.client, t.roots = t.sdk, client, roots
	t.endpoint, t.protocol = endpoint, protocol
	return t, nil
}

// newClient returns the OTLP client of protocol. endpoint is the flag's
// base URL (the HTTP client posts to its path + /v1/traces, as it does for
// OTEL_EXPORTER_OTLP_ENDPOINT); "" leaves the endpoint, headers and TLS
// settings to the OTEL_EXPORTER_OTLP_* variables, which the clients read.
func newClient(endpoint, protocol string) (otlptrace.Client, error) {
	var u *url.URL
	if endpoint != "" {
		var err error
		u, err = url.Parse(endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--otlp-endpoint %q: want an http:// or https:// URL", endpoint)
		}
	}
	switch protocol {
	case "grpc":
		var opts []otlptracegrpc.Option
		if u != nil {
			opts = append(opts, otlptracegrpc.WithEndpoint(u.Host))
			if u.Scheme == "http" {
				opts = append(opts, otlptracegrpc.WithInsecure())
			}
		}
		return otlptracegrpc.NewClient(opts...), nil
	case "http/protobuf", "http/json":
		var opts []otlptracehttp.Option
		if protocol == "http/json" {
			opts = append(opts, otlptracehttp.WithEncoding(otlptracehttp.EncodingJSON))
		} else {
			opts = append(opts, otlptracehttp.WithEncoding(otlptracehttp.EncodingProtobuf))
		}
		if u != nil {
			opts = append(opts, otlptracehttp.WithEndpoint(u.Host), otlptracehttp.WithURLPath(path.Join("/", u.Path, "v1/traces")))
			if u.Scheme == "http" {
				opts = append(opts, otlptracehttp.WithInsecure())
			}
		}
		return otlptracehttp.NewClient(opts...), nil
	default:
		return nil, fmt.Errorf("OTLP protocol %q: want grpc, http/protobuf or http/json", protocol)
	}
}

// newResource describes the process: service.name "twinline" unless
// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise, then the
// version, replica and role, which the flags decide.
func newResource(ctx context.Context, id Identity) (*resource.Resource, error) {
	own := []attribute.KeyValue{semconv.ServiceVersion(cmp.Or(id.Version, "unknown"))}
	if id.Replica != "" {
		own = append(own, semconv.ServiceInstanceID(id.Replica))
	}
	if id.Role != "" {
		own = append(own, RoleKey.String(id.Role))
	}
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(semconv.ServiceName("twinline")),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
		resource.WithAttributes(own...),
	)
	if err != nil {
		return nil, fmt.Errorf("describing the trace resource: %w", err)
	}
	return res, nil
}

// newSampler returns the sampler: with sample >= 0, parent-based with that
// ratio of new traces; otherwise the one OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG name (default parentbased_always_on, as the
// specification says). roots reports whether it may sample a trace that
// starts here.
func newSampler(sample float64, getenv func(string) string) (s sdktrace.Sampler, roots bool, err error) {
	if sample >= 0 {
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(sample)), sample > 0, nil
	}
	name, arg := getenv("OTEL_TRACES_SAMPLER"), getenv("OTEL_TRACES_SAMPLER_ARG")
	ratio := 1.0
	if arg != "" && strings.HasSuffix(name, "traceidratio") {
		ratio, err = strconv.ParseFloat(arg, 64)
		if err != nil || ratio < 0 || ratio > 1 {
			return nil, false, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a fraction from 0 to 1", arg)
		}
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), true, nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), false, nil
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio)), ratio > 0, nil
	case "always_on":
		return sdktrace.AlwaysSample(), true, nil
	case "always_off":
		return sdktrace.NeverSample(), false, nil
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(ratio), ratio > 0, nil
	default:
		return nil, false, fmt.Errorf("OTEL_TRACES_SAMPLER=%q: want always_on, always_off, traceidratio or their parentbased_ forms", name)
	}
}

// Enabled reports whether traces are exported.
func (t *Tracing) Enabled() bool { return t.sdk != nil }

// Endpoint and Protocol say where traces go ("" when off), for the
// startup log line.
func (t *Tracing) Endpoint() string { return t.endpoint }

// Protocol is the OTLP protocol in use ("" when off).
func (t *Tracing) Protocol() string { return t.protocol }

// TracerProvider returns the provider: the SDK's, or a no-op one when off.
func (t *Tracing) TracerProvider() trace.TracerProvider { return t.provider }

// Propagator returns the W3C trace context and baggage propagator.
func (t *Tracing) Propagator() propagation.TextMapPropagator { return t.prop }

// Tracer returns the tracer of the package named scope (its import path),
// or nil when tracing is off: a nil *Tracer is valid and does nothing.
func (t *Tracing) Tracer(scope string) *Tracer {
	if t == nil || t.sdk == nil {
		return nil
	}
	return &Tracer{tracer: t.sdk.Tracer(scope), prop: t.prop, roots: t.roots}
}

// Upload sends spans made elsewhere (the dashboard's, relayed by the
// server) to the same collector, over the same endpoint, protocol and
// headers as the process's own spans. It returns ErrOff when tracing is
// off, and the collector's error otherwise.
func (t *Tracing) Upload(ctx context.Context, spans []*tracepb.ResourceSpans) error {
	if t == nil || t.client == nil {
		return ErrOff
	}
	if err := t.client.UploadTraces(ctx, spans); err != nil {
		return fmt.Errorf("uploading spans: %w", err)
	}
	return nil
}

// ForceFlush exports the spans ended so far, within ctx, and keeps the
// exporter running.
func (t *Tracing) ForceFlush(ctx context.Context) error {
	if t == nil || t.sdk == nil {
		return nil
	}
	if err := t.sdk.ForceFlush(ctx); err != nil {
		return fmt.Errorf("flushing traces: %w", err)
	}
	return nil
}

// Shutdown exports the spans still buffered, within ctx, and stops the
// exporter. Spans ended afterwards are dropped.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.sdk == nil {
		return nil
	}
	if err := t.sdk.Shutdown(ctx); err != nil {
		return fmt.Errorf("flushing traces: %w", err)
	}
	return nil
}
