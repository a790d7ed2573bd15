package api

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func gunzip(t *testing.T, b []byte) string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("reading gzip: %v", err)
	}
	return string(out)
}

// TestCompressJSON checks which answers the gzip middleware compresses,
// and that every compressed one decompresses to what the handler wrote.
func TestCompressJSON(t *testing.T) {
	big := `{"x":"` + strings.Repeat("abc", 1000) + `"}`
	small := `{"x":"short"}`
	tests := []struct {
		name     string
		method   string
		accept   string
		handler  func(w http.ResponseWriter)
		wantGzip bool
		wantVary bool
	}{
		{"large JSON", "GET", "gzip", jsonAnswer(http.StatusOK, "application/json", big), true, true},
		{"large JSON with charset, gzip among others", "GET", "br;q=1.0, gzip;q=0.5", jsonAnswer(http.StatusOK, "application/json; charset=utf-8", big), true, true},
		{"any coding", "GET", "*", jsonAnswer(http.StatusOK, "application/json", big), true, true},
		{"problem", "GET", "gzip", jsonAnswer(http.StatusBadRequest, "application/problem+json", big), true, true},
		{"CSV", "GET", "gzip", jsonAnswer(http.StatusOK, "text/csv; charset=utf-8", big), true, true},
		{"written in pieces", "GET", "gzip", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			for i := 0; i < len(big); i += 100 {
				_, _ = io.WriteString(w, big[i:min(i+100, len(big))])
			}
		}, true, true},
		{"gzip not accepted", "GET", "", jsonAnswer(http.StatusOK, "application/json", big), false, true},
		{"gzip refused", "GET", "gzip;q=0, *", jsonAnswer(http.StatusOK, "application/json", big), false, true},
		{"other coding only", "GET", "br", jsonAnswer(http.StatusOK, "application/json", big), false, true},
		{"small", "GET", "gzip", jsonAnswer(http.StatusOK, "application/json", small), false, true},
		{"HEAD", "HEAD", "gzip", jsonAnswer(http.StatusOK, "application/json", big), false, false},
		{"204", "GET", "gzip", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNoContent)
		}, false, false},
		{"304", "GET", "gzip", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotModified)
		}, false, false},
		{"already encoded", "GET", "gzip", func(w http.ResponseWriter) {
			w.Header().Set("Content-Encoding", "br")
			jsonAnswer(http.StatusOK, "application/json", big)(w)
		}, false, false},
		{"download", "GET", "gzip", func(w http.ResponseWriter) {
			w.Header().Set("Content-Disposition", `attachment; filename="fleet.csv"`)
			jsonAnswer(http.StatusOK, "text/csv", big)(w)
		}, false, false},
		{"HTML", "GET", "gzip", jsonAnswer(http.StatusOK, "text/html; charset=utf-8", big), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var wrote bytes.Buffer
			h := compressJSON(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tt.handler(teeWriter{w, &wrote})
			}))
			req := httptest.NewRequest(tt.method, "/x", nil)
			if tt.accept != "" {
				req.Header.Set("Accept-Encoding", tt.accept)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			gotGzip := rec.Header().Get("Content-Encoding") == "gzip"
			if gotGzip != tt.wantGzip {
				t.Errorf("Content-Encoding = %q, want gzip: %v", rec.Header().Get("Content-Encoding"), tt.wantGzip)
			}
			if got := rec.Header().Get("Vary") == "Accept-Encoding"; got != tt.wantVary {
				t.Errorf("Vary = %q, want Accept-Encoding: %v", rec.Header().Get("Vary"), tt.wantVary)
			}
			body := rec.Body.String()
			if gotGzip {
				body = gunzip(t, rec.Body.Bytes())
				if cl := rec.Header().Get("Content-Length"); cl != "" {
					t.Errorf("compressed answer keeps Content-Length %s", cl)
				}
			}
			if body != wrote.String() {
				t.Errorf("body differs from what the handler wrote: got %d bytes, want %d", len(body), wrote.Len())
			}
		})
	}
}

// jsonAnswer writes body with status and content type ct, and a
// Content-Length as writeFleet does.
func jsonAnswer(status int, ct, body string) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(status)
		if status != http.StatusNoContent && status != http.StatusNotModified {
			_, _ = io.WriteString(w, body)
		}
	}
}

// teeWriter records what a handler writes, keeping Flush.
type teeWriter struct {
	http.ResponseWriter
	copy *bytes.Buffer
}

func (t teeWriter) Write(p []byte) (int, error) {
	t.copy.Write(p)
	return t.ResponseWriter.Write(p)
}

// TestCompressJSONFlush checks that a compressed answer flushed by its
// handler reaches the client before the handler ends.
func TestCompressJSONFlush(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(compressJSON(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"first":true}`+"\n")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("Flush: %v", err)
		}
		<-release
		_, _ = io.WriteString(w, `{"second":true}`+"\n")
	})))
	defer srv.Close()
	defer close(release)
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Accept-Encoding", "gzip") // set by hand: the client does not decompress
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got := resp.Header.Get("Content-Encoding"); got != "gzip" {
		t.Fatalf("Content-Encoding = %q, want gzip (a flushed answer is compressed whatever its size)", got)
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(zr).ReadString('\n')
	if err != nil || line != `{"first":true}`+"\n" {
		t.Fatalf("first line before the handler ended = %q, %v", line, err)
	}
}

// TestCompressNotOnStream checks that the live stream's writer is the
// server's own (Flusher, Hijacker for WebSocket): never compressed.
func TestCompressNotOnStream(t *testing.T) {
	a := newTestAPI(t, &fakeLog{})
	var wrapped bool
	a.stream = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, wrapped = w.(*gzipResponseWriter)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"x":"`+strings.Repeat("y", 4096)+`"}`)
	})
	req := httptest.NewRequest("GET", "/api/v1/stream?all=1", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if wrapped || rec.Header().Get("Content-Encoding") != "" {
		t.Errorf("stream wrapped: %v, Content-Encoding %q", wrapped, rec.Header().Get("Content-Encoding"))
	}
}
