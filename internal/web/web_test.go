package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
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

// scriptSrc returns the sources of the script-src directive of a CSP.
func scriptSrc(t *testing.T, csp string) []string {
	t.Helper()
	for _, d := range strings.Split(csp, ";") {
		f := strings.Fields(d)
		if len(f) > 0 && f[0] == "script-src" {
			return f[1:]
		}
	}
	t.Fatalf("CSP %q has no script-src", csp)
	return nil
}

// inlineScriptHashes hashes the inline scripts of page the simple way, to
// check InlineHashes against.
func inlineScriptHashes(page string) []string {
	var out []string
	re := regexp.MustCompile(`(?is)<script\b([^>]*)>(.*?)</script`)
	for _, m := range re.FindAllStringSubmatch(page, -1) {
		if strings.Contains(m[1], "src=") {
			continue
		}
		sum := sha256.Sum256([]byte(strings.ReplaceAll(m[2], "\r\n", "\n")))
		out = append(out, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	return out
}

func TestCSPAllowsOnlyTheServedInlineScripts(t *testing.T) {
	h := Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	csp := rec.Header().Get("Content-Security-Policy")
	got := scriptSrc(t, csp)
	want := append([]string{"'self'"}, inlineScriptHashes(rec.Body.String())...)
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("script-src (-got +want):\n%s", diff)
	}
	if len(want) < 2 {
		t.Errorf("served page has no inline script; the test checks nothing")
	}
	for _, directive := range []string{"frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, directive) {
			t.Errorf("CSP %q lacks %s", csp, directive)
		}
	}
}

func TestInlineHashes(t *testing.T) {
	page := "<!doctype html><head><script>\r\n  let a = '<b>';\r\n</script>\n" +
		`<script type="module" src="/x.js"></script><SCRIPT type="module">f("</scr" + "ipt>")</SCRIPT>` +
		"<script></script><script>\n  let a = '<b>';\n</script><style>p{}</style></head>"
	want := inlineScriptHashes(`<script>
  let a = '<b>';
</script><script>f("</scr" + "ipt>")</script><script></script>`)
	if diff := cmp.Diff(InlineHashes([]byte(page), "script"), want); diff != "" {
		t.Errorf("script hashes (-got +want):\n%s", diff)
	}
	sum := sha256.Sum256([]byte("p{}"))
	if diff := cmp.Diff(InlineHashes([]byte(page), "style"), []string{"'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"}); diff != "" {
		t.Errorf("style hashes (-got +want):\n%s", diff)
	}
}

// TestAssets: a built dashboard's lazily loaded chunks are served under
// /assets/ as JavaScript, gzipped on request and cached for good; an
// unknown name, or any name in a fallback build, is a 404 problem.
func TestAssets(t *testing.T) {
	chunk := strings.Repeat("export const x = 1;\n", 50)
	built, err := load(fstest.MapFS{fallbackPage: {Data: []byte("fallback")}, appPage: {Data: []byte("app")},
		assetsDir + "/otel-Ab12.js": {Data: []byte(chunk)}, assetsDir + "/notes.txt": {Data: []byte("no")}})
	if err != nil {
		t.Fatal(err)
	}
	fallback, err := load(fstest.MapFS{fallbackPage: {Data: []byte("fallback")}, assetsDir + "/otel-Ab12.js": {Data: []byte(chunk)}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(p *page, path string, gz bool) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, req)
		return rec
	}
	w := get(built, "/assets/otel-Ab12.js", false)
	if w.Code != http.StatusOK || w.Body.String() != chunk || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/javascript") ||
		!strings.Contains(w.Header().Get("Cache-Control"), "immutable") {
		t.Errorf("chunk: %d %v", w.Code, w.Header())
	}
	w = get(built, "/assets/otel-Ab12.js", true)
	zr, err := gzip.NewReader(w.Body)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(zr); string(b) != chunk || w.Header().Get("Content-Encoding") != "gzip" {
		t.Errorf("gzipped chunk differs (%v)", w.Header())
	}
	for _, tt := range []struct {
		name string
		p    *page
		path string
	}{
		{"unknown", built, "/assets/other.js"},
		{"not a script", built, "/assets/notes.txt"},
		{"fallback build", fallback, "/assets/otel-Ab12.js"},
	} {
		if w := get(tt.p, tt.path, false); w.Code != http.StatusNotFound || !strings.Contains(w.Header().Get("Content-Type"), "problem+json") {
			t.Errorf("%s: %d %s; want a 404 problem", tt.name, w.Code, w.Header().Get("Content-Type"))
		}
	}
}
