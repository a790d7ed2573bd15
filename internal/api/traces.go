package api

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/twinline/twinline/internal/problem"
)

// The relay's limits when TracingOptions leaves them zero. A dashboard
// exports at most 64 spans a request (web/src/lib/otel.ts), about 40 KiB of
// OTLP/JSON.
const (
	DefaultTraceBodyBytes = 64 << 10
	DefaultTraceSpans     = 256
)

// DashboardService is the service.name of every span the relay forwards:
// whatever a browser claims, its spans never pass for the server's.
const DashboardService = "twinline-dashboard"

// TracingOptions are the browser-span relay's limits and what the
// dashboard is told about tracing.
type TracingOptions struct {
	// MaxBodyBytes bounds a request to POST /api/v1/traces (0:
	// DefaultTraceBodyBytes); MaxSpans the spans in it (0:
	// DefaultTraceSpans).
	MaxBodyBytes int64
	MaxSpans     int
	// UIURL is the trace viewer's URL with {traceId} in it, for the
	// dashboard's links ("": none).
	UIURL string
}

// UploadTracesFunc forwards spans to the collector: an OTLP exporter
// client's UploadTraces.
type UploadTracesFunc func(ctx context.Context, spans []*tracepb.ResourceSpans) error

// tracingView is what GET /api/v1/session tells the dashboard about
// tracing: whether to trace its renders (and post them to
// /api/v1/traces), and where to link a trace id.
type tracingView struct {
	Enabled bool   `json:"enabled"`
	UIURL   string `json:"uiUrl,omitempty"`
}

func (a *API) tracingView() *tracingView {
	return &tracingView{Enabled: a.uploadTraces != nil, UIURL: a.opts.Tracing.UIURL}
}

// handleTraces is POST /api/v1/traces: the dashboard's spans, as OTLP/HTTP
// JSON, forwarded to the collector the server exports to — so the browser
// needs neither the collector's address nor CORS to reach it, and sends
// with its own sign-in. The body and the span count are bounded, the
// resource's service.name is set to DashboardService, and ids must have
// their OTLP sizes.
func (a *API) handleTraces(w http.ResponseWriter, r *http.Request) {
	if a.uploadTraces == nil {
		a.relayRequests.WithLabelValues("refused").Inc()
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound,
			Detail: "tracing is off: start the server with --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) to relay spans"})
		return
	}
	refuse := func(p *problem.Problem) {
		a.relayRequests.WithLabelValues("refused").Inc()
		problem.Write(w, p)
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		refuse(&problem.Problem{Type: problem.TypeUnsupported, Status: http.StatusUnsupportedMediaType,
			Detail: fmt.Sprintf("Content-Type %q is not relayed: send OTLP/HTTP JSON as application/json", r.Header.Get("Content-Type"))})
		return
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		refuse(&problem.Problem{Type: problem.TypeUnsupported, Status: http.StatusUnsupportedMediaType,
			Detail: "Content-Encoding " + ce + " is not relayed: send the JSON uncompressed"})
		return
	}
	limit := cmp.Or(a.opts.Tracing.MaxBodyBytes, DefaultTraceBodyBytes)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			refuse(&problem.Problem{Type: problem.TypeBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
				Detail: fmt.Sprintf("body exceeds %d bytes: export fewer spans a request", limit)})
			return
		}
		refuse(&problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: "reading body: " + err.Error()})
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	// Unknown fields are skipped, as OTLP asks of receivers: a newer
	// client's additions must not be refused.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &req); err != nil {
		refuse(&problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest,
			Detail: "the body is not an OTLP/JSON ExportTraceServiceRequest: " + err.Error()})
		return
	}
	n := countSpans(req.ResourceSpans)
	if maxSpans := cmp.Or(a.opts.Tracing.MaxSpans, DefaultTraceSpans); n > maxSpans {
		refuse(&problem.Problem{Type: problem.TypeBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
			Detail: fmt.Sprintf("%d spans: at most %d a request", n, maxSpans)})
		return
	}
	if err := normalizeSpans(req.ResourceSpans); err != nil {
		refuse(&problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest, Detail: err.Error()})
		return
	}
	if n > 0 {
		if err := a.uploadTraces(r.Context(), req.ResourceSpans); err != nil {
			a.relayRequests.WithLabelValues("failed").Inc()
			a.logger.Warn("relaying dashboard spans", "spans", n, "err", err)
			problem.Write(w, &problem.Problem{Type: problem.TypeUpstream, Status: http.StatusServiceUnavailable, RetryAfter: 5,
				Detail: "the trace collector did not take the spans; retry later"})
			return
		}
	}
	a.relayRequests.WithLabelValues("relayed").Inc()
	out, _ := protojson.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, bytes.NewReader(out))
}

func countSpans(rss []*tracepb.ResourceSpans) int {
	n := 0
	for _, rs := range rss {
		for _, ss := range rs.GetScopeSpans() {
			n += len(ss.GetSpans())
		}
	}
	return n
}

// normalizeSpans decodes the spans' hex ids (otlpID), checks their sizes,
// and sets every resource's service.name to DashboardService. Its error
// names the first bad field by its JSON path.
func normalizeSpans(rss []*tracepb.ResourceSpans) error {
	for i, rs := range rss {
		if rs == nil {
			return fmt.Errorf("resourceSpans[%d]: empty", i)
		}
		if rs.Resource == nil {
			rs.Resource = &resourcepb.Resource{}
		}
		setServiceName(rs.Resource, DashboardService)
		for j, ss := range rs.ScopeSpans {
			for k, s := range ss.GetSpans() {
				at := fmt.Sprintf("resourceSpans[%d].scopeSpans[%d].spans[%d]", i, j, k)
				var err error
				if s.TraceId, err = otlpID(s.TraceId, 16, false); err != nil {
					return fmt.Errorf("%s.traceId: %w", at, err)
				}
				if s.SpanId, err = otlpID(s.SpanId, 8, false); err != nil {
					return fmt.Errorf("%s.spanId: %w", at, err)
				}
				if s.ParentSpanId, err = otlpID(s.ParentSpanId, 8, true); err != nil {
					return fmt.Errorf("%s.parentSpanId: %w", at, err)
				}
				for l, link := range s.Links {
					if link.TraceId, err = otlpID(link.TraceId, 16, false); err != nil {
						return fmt.Errorf("%s.links[%d].traceId: %w", at, l, err)
					}
					if link.SpanId, err = otlpID(link.SpanId, 8, false); err != nil {
						return fmt.Errorf("%s.links[%d].spanId: %w", at, l, err)
					}
				}
				if s.Name == "" {
					return fmt.Errorf("%s.name: must not be empty", at)
				}
			}
		}
	}
	return nil
}

// otlpID returns an id as protojson decoded it, fixed to the bytes it
// names. OTLP/JSON writes trace and span ids in hex, and protojson reads
// every bytes field as base64: hex digits are base64 digits too, so a hex
// id of size bytes decodes to 3/4 of its 2×size digits, 1.5×size bytes,
// whose base64 is the hex again. An id of size bytes was sent in
// protojson's own base64 and stays. An all-zero id is invalid; empty is
// allowed only when optional (a root span's parent).
func otlpID(b []byte, size int, optional bool) ([]byte, error) {
	want := fmt.Sprintf("must be %d bytes: %d hex digits", size, 2*size)
	switch len(b) {
	case 0:
		if optional {
			return nil, nil
		}
		return nil, errors.New("missing: " + want)
	case size:
	case size * 3 / 2:
		id, err := hex.DecodeString(base64.StdEncoding.EncodeToString(b))
		if err != nil {
			return nil, errors.New("not hex: " + want)
		}
		b = id
	default:
		return nil, errors.New(want)
	}
	if bytes.Count(b, []byte{0}) == len(b) {
		if optional {
			return nil, nil // an all-zero parent is a root span's
		}
		return nil, errors.New("all zero: an invalid id")
	}
	return b, nil
}

// setServiceName sets res's service.name attribute to name, replacing
// every one the client sent.
func setServiceName(res *resourcepb.Resource, name string) {
	kept := res.Attributes[:0]
	for _, kv := range res.Attributes {
		if kv != nil && kv.Key != "service.name" {
			kept = append(kept, kv)
		}
	}
	res.Attributes = append(kept, &commonpb.KeyValue{Key: "service.name",
		Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: name}}})
}
