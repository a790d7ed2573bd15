// Command otlpsink is an OpenTelemetry collector for the dashboard's
// browser tests (web/e2e/tracing.test.mjs): it takes OTLP/HTTP protobuf
// exports at /v1/traces — what twinline's exporter sends — decodes the
// real OTLP messages, and prints each span as one JSON line on stdout:
//
//	{"traceId":"…","spanId":"…","parentSpanId":"…","name":"render","kind":5,"service":"twinline-dashboard","attributes":{"twinline.machine":"press-01"}}
//
// The first line says where it listens: {"listen":"http://127.0.0.1:PORT"}.
// It stops on SIGINT or SIGTERM, or when its standard input closes (its
// parent went away).
//
//	go run ./tools/otlpsink [-listen 127.0.0.1:0]
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"

	"github.com/twinline/twinline/internal/otlptest"
)

// span is one printed line.
type span struct {
	TraceID    string            `json:"traceId"`
	SpanID     string            `json:"spanId"`
	ParentID   string            `json:"parentSpanId"`
	Name       string            `json:"name"`
	Kind       int32             `json:"kind"`
	Service    string            `json:"service"`
	Attributes map[string]string `json:"attributes"`
	// StartMs and EndMs are the span's times in Unix milliseconds (a
	// fraction keeps the microseconds; nanoseconds would not fit a
	// JavaScript number).
	StartMs float64 `json:"startMs"`
	EndMs   float64 `json:"endMs"`
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "the `address` to listen on")
	flag.Parse()
	if err := run(*listen, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "otlpsink:", err)
		os.Exit(1)
	}
}

func run(listen string, stdin io.Reader, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	out := &printer{enc: json.NewEncoder(stdout)}
	if err := out.print(map[string]string{"listen": "http://" + ln.Addr().String()}); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, r *http.Request) {
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-protobuf" {
			http.Error(w, "otlpsink takes OTLP/HTTP protobuf only", http.StatusUnsupportedMediaType)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 16<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, "decoding OTLP: "+err.Error(), http.StatusBadRequest)
			return
		}
		for _, rs := range req.ResourceSpans {
			service := otlptest.Attr(rs.GetResource().GetAttributes(), "service.name")
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					attrs := map[string]string{}
					for _, kv := range s.GetAttributes() {
						attrs[kv.GetKey()] = otlptest.Value(kv.GetValue())
					}
					if err := out.print(span{TraceID: hex.EncodeToString(s.TraceId), SpanID: hex.EncodeToString(s.SpanId),
						ParentID: hex.EncodeToString(s.ParentSpanId), Name: s.Name, Kind: int32(s.Kind), Service: service,
						Attributes: attrs, StartMs: float64(s.StartTimeUnixNano) / 1e6, EndMs: float64(s.EndTimeUnixNano) / 1e6}); err != nil {
						http.Error(w, err.Error(), http.StatusInternalServerError)
						return
					}
				}
			}
		}
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutting down: %w", err)
	}
	return nil
}

// printer writes one JSON line at a time (requests arrive concurrently).
type printer struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (p *printer) print(v any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.enc.Encode(v); err != nil {
		return fmt.Errorf("printing: %w", err)
	}
	return nil
}
