package web

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
)

func TestHandlerServesAPage(t *testing.T) {
	h := Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if got, want := rec.Code, http.StatusOK; got != want {
		t.Fatalf("status: got %d, want %d", got, want)
	}
	body := rec.Body.String()
	if Built() {
		if !strings.Contains(body, `<div id="root">`) {
			t.Errorf("built dashboard page lacks the React root")
		}
		return
	}
	if !strings.Contains(body, "make web") {
		t.Errorf("fallback page does not say how to build the dashboard")
	}
}

func TestLoadPrefersTheBuiltDashboard(t *testing.T) {
	tests := []struct {
		name      string
		fsys      fstest.MapFS
		wantBody  string
		wantBuilt bool
	}{
		{"fallback only", fstest.MapFS{fallbackPage: {Data: []byte("fallback")}}, "fallback", false},
		{"built", fstest.MapFS{fallbackPage: {Data: []byte("fallback")}, appPage: {Data: []byte("app")}}, "app", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := load(tt.fsys)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(p.plain); got != tt.wantBody {
				t.Errorf("body: got %q, want %q", got, tt.wantBody)
			}
			if got := p.built; got != tt.wantBuilt {
				t.Errorf("built: got %v, want %v", got, tt.wantBuilt)
			}
		})
	}
}

func TestLoadWithoutAnyPage(t *testing.T) {
	if _, err := load(fstest.MapFS{}); err == nil {
		t.Fatal("got no error for an empty tree")
	}
}

func TestServeEncodingsAndRevalidation(t *testing.T) {
	p, err := load(fstest.MapFS{fallbackPage: {Data: []byte(strings.Repeat("<p>twinline</p>", 100))}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(h http.Header) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		for k, v := range h {
			req.Header[k] = v
		}
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, req)
		return rec
	}

	plain := get(nil)
	if got, want := plain.Body.String(), string(p.plain); got != want {
		t.Errorf("identity body differs")
	}
	if got := plain.Header().Get("Content-Encoding"); got != "" {
		t.Errorf("identity Content-Encoding: got %q, want none", got)
	}

	gz := get(http.Header{"Accept-Encoding": {"br, gzip;q=0.8"}})
	if got, want := gz.Header().Get("Content-Encoding"), "gzip"; got != want {
		t.Fatalf("Content-Encoding: got %q, want %q", got, want)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz.Body.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	unzipped, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(unzipped), string(p.plain)); diff != "" {
		t.Errorf("gunzipped body (-got +want):\n%s", diff)
	}
	if got, want := gz.Header().Get("Vary"), "Accept-Encoding"; got != want {
		t.Errorf("Vary: got %q, want %q", got, want)
	}
	if gz.Header().Get("Content-Security-Policy") == "" {
		t.Errorf("no Content-Security-Policy")
	}

	again := get(http.Header{"Accept-Encoding": {"gzip"}, "If-None-Match": {gz.Header().Get("ETag")}})
	if got, want := again.Code, http.StatusNotModified; got != want {
		t.Errorf("revalidation: got %d, want %d", got, want)
	}
	if plain.Header().Get("ETag") == gz.Header().Get("ETag") {
		t.Errorf("identity and gzip share an ETag")
	}
}

func TestAcceptsGzip(t *testing.T) {
	tests := []struct {
		header string
		want   bool
	}{
		{"", false},
		{"gzip", true},
		{"deflate, gzip", true},
		{"GZIP;q=0.5", true},
		{"gzip;q=0", false},
		{"gzip; q=0.000", false},
		{"br", false},
		{"gzipped", false},
	}
	for _, tt := range tests {
		t.Run(tt.header, func(t *testing.T) {
			if got := acceptsGzip(tt.header); got != tt.want {
				t.Errorf("acceptsGzip(%q): got %v, want %v", tt.header, got, tt.want)
			}
		})
	}
}
