package api

import (
	"github.com/klauspost/compress/gzip"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// gzipMinSize is the smallest answer worth compressing: below it the
// gzip header and the CPU cost more than the bytes saved.
const gzipMinSize = 1024

// gzipWriters recycles gzip writers (each holds about 1 MB of tables).
var gzipWriters = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
	return zw
}}

// compressible reports whether answers of content type ct are compressed:
// JSON (application/json, application/problem+json, the Prometheus API's)
// and CSV (text/csv: tables compress well, and clients that ask for gzip
// decompress it transparently; a CSV download with Content-Disposition is
// left alone).
func compressible(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || mt == "application/problem+json" || mt == "text/csv"
}

// acceptsGzip reports whether the request's Accept-Encoding takes gzip:
// gzip (or x-gzip) with a q above 0, or else * with a q above 0.
func acceptsGzip(r *http.Request) bool {
	gzipQ, starQ := -1.0, -1.0
	for _, h := range r.Header.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(h, ",") {
			coding, params, _ := strings.Cut(part, ";")
			q := 1.0
			if v, ok := strings.CutPrefix(strings.ReplaceAll(strings.TrimSpace(params), " ", ""), "q="); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					continue
				}
				q = f
			}
			switch strings.ToLower(strings.TrimSpace(coding)) {
			case "gzip", "x-gzip":
				gzipQ = max(gzipQ, q)
			case "*":
				starQ = max(starQ, q)
			}
		}
	}
	return gzipQ > 0 || gzipQ < 0 && starQ > 0
}

// compressJSON compresses the JSON (and CSV) answers of next when the
// client accepts gzip and the answer is at least gzipMinSize bytes. It
// leaves alone: HEAD requests, answers without a body (204, 304, 1xx),
// answers already Content-Encoded, downloads (Content-Disposition), and
// other content types. Every answer it could compress says Vary:
// Accept-Encoding. Flush works as on the plain writer (the compressed
// bytes so far are sent). The live stream is never wrapped (New).
func compressJSON(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		gw := &gzipResponseWriter{ResponseWriter: w, accepts: acceptsGzip(r)}
		defer gw.close()
		next.ServeHTTP(gw, r)
	})
}

// gzipResponseWriter buffers the start of an answer until it knows whether
// to compress it: at gzipMinSize bytes, a Flush, or the handler's end.
type gzipResponseWriter struct {
	http.ResponseWriter
	accepts bool

	code    int  // the status the handler wrote; 0: none yet
	decided bool // headers sent, plain or compressed
	zw      *gzip.Writer
	buf     []byte // the body before the decision
}

func (g *gzipResponseWriter) WriteHeader(code int) {
	if g.decided || g.code != 0 {
		return
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		g.ResponseWriter.WriteHeader(code) // 103 Early Hints and the like
		return
	}
	g.code = code
	if !g.eligible() {
		g.decide(false)
	}
}

// eligible reports whether the answer may be compressed, judged on the
// status and headers.
func (g *gzipResponseWriter) eligible() bool {
	h := g.Header()
	switch {
	case g.code == http.StatusNoContent || g.code == http.StatusNotModified || g.code < 200,
		h.Get("Content-Encoding") != "",
		h.Get("Content-Disposition") != "",
		!compressible(h.Get("Content-Type")):
		return false
	}
	h.Add("Vary", "Accept-Encoding")
	return g.accepts
}

func (g *gzipResponseWriter) Write(p []byte) (int, error) {
	if g.code == 0 {
		if _, set := g.Header()["Content-Type"]; !set {
			// What net/http would sniff, needed here to decide.
			g.Header().Set("Content-Type", http.DetectContentType(p))
		}
		g.WriteHeader(http.StatusOK)
	}
	switch {
	case g.zw != nil:
		return g.zw.Write(p)
	case g.decided:
		return g.ResponseWriter.Write(p)
	}
	if len(g.buf)+len(p) < gzipMinSize {
		g.buf = append(g.buf, p...)
		return len(p), nil
	}
	if err := g.decide(true); err != nil {
		return 0, err
	}
	return g.Write(p)
}

// decide sends the headers and the buffered body, compressed when
// compress is true (the answer is then known to be eligible).
func (g *gzipResponseWriter) decide(compress bool) error {
	g.decided = true
	h := g.Header()
	if compress {
		h.Set("Content-Encoding", "gzip")
		h.Del("Content-Length")
		h.Del("Accept-Ranges")
		g.zw = gzipWriters.Get().(*gzip.Writer)
		g.zw.Reset(g.ResponseWriter)
	}
	g.ResponseWriter.WriteHeader(g.code)
	buf := g.buf
	g.buf = nil
	if len(buf) == 0 {
		return nil
	}
	if g.zw != nil {
		_, err := g.zw.Write(buf)
		return err
	}
	_, err := g.ResponseWriter.Write(buf)
	return err
}

// Flush sends what the handler wrote so far: compressed when the answer
// is (whatever its size then), and flushes the connection.
func (g *gzipResponseWriter) Flush() {
	if !g.decided {
		if g.code == 0 {
			g.WriteHeader(http.StatusOK)
		}
		if !g.decided {
			_ = g.decide(g.accepts && len(g.buf) > 0)
		}
	}
	if g.zw != nil {
		_ = g.zw.Flush()
	}
	_ = http.NewResponseController(g.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection's writer (for
// deadlines; its Flush finds this writer's Flush first).
func (g *gzipResponseWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }

// close ends the answer: a short one goes out plain, a compressed one gets
// its gzip trailer.
func (g *gzipResponseWriter) close() {
	if !g.decided {
		if g.code == 0 {
			return // nothing written: net/http answers 200 with no body
		}
		_ = g.decide(false)
	}
	if g.zw != nil {
		_ = g.zw.Close()
		g.zw.Reset(io.Discard)
		gzipWriters.Put(g.zw)
		g.zw = nil
	}
}
