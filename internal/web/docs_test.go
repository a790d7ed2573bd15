package web

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"

	"golang.org/x/net/html"
)

// directives splits a Content-Security-Policy into its directives' sources.
func directives(csp string) map[string][]string {
	out := map[string][]string{}
	for _, d := range strings.Split(csp, ";") {
		f := strings.Fields(d)
		if len(f) > 0 {
			out[f[0]] = f[1:]
		}
	}
	return out
}

func TestDocsCSPIsTight(t *testing.T) {
	d := directives(DocsCSP)
	for name, sources := range d {
		for _, s := range sources {
			switch {
			case s == "'self'" || s == "'none'":
			case s == "data:" && name == "img-src":
			default:
				t.Errorf("%s allows %s: only this origin (and data: images) may be", name, s)
			}
		}
	}
	for _, name := range []string{"default-src", "script-src", "style-src", "connect-src", "frame-ancestors", "base-uri"} {
		if _, ok := d[name]; !ok {
			t.Errorf("CSP %q lacks %s", DocsCSP, name)
		}
	}
	if got := d["default-src"]; len(got) != 1 || got[0] != "'none'" {
		t.Errorf("default-src %v, want 'none'", got)
	}
}

// swaggerUIFiles returns Swagger UI's files as the dashboard build lays
// them out: from this binary when it carries them, else from the npm
// package in web/node_modules (after npm ci). Without either the test is
// skipped, and fails under CI=true, where npm ci has run.
func swaggerUIFiles(t *testing.T) fstest.MapFS {
	t.Helper()
	fsys := fstest.MapFS{}
	if NewDocs().Built() {
		for _, name := range []string{"swagger-ui-bundle.js", "swagger-ui.css"} {
			body, err := dist.ReadFile(viewerDir + "/" + name)
			if err != nil {
				t.Fatal(err)
			}
			fsys[viewerDir+"/"+name] = &fstest.MapFile{Data: body}
		}
		return fsys
	}
	pkg := filepath.Join("..", "..", "web", "node_modules", "swagger-ui-dist")
	for _, name := range []string{"swagger-ui-bundle.js", "swagger-ui.css"} {
		body, err := os.ReadFile(filepath.Join(pkg, name))
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("Swagger UI's files: %v (npm ci in web/ installs them)", err)
			}
			t.Skipf("Swagger UI's files: %v; run npm ci in web/ (CI=true fails instead)", err)
		}
		fsys[viewerDir+"/"+name] = &fstest.MapFile{Data: body}
	}
	return fsys
}

func get(t *testing.T, serve func(http.ResponseWriter, *http.Request), target string, gz bool) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	if gz {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	rec := httptest.NewRecorder()
	serve(rec, req)
	return rec
}

func TestDocsServesThePageAndItsFiles(t *testing.T) {
	d, err := loadDocs(docsFS, swaggerUIFiles(t))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Built() {
		t.Fatal("Built() is false with Swagger UI's bundle present")
	}
	rec := get(t, d.ServePage, "/docs", false)
	if got, want := rec.Header().Get("Content-Type"), "text/html; charset=utf-8"; got != want {
		t.Errorf("page Content-Type %q, want %q", got, want)
	}
	if got := rec.Header().Get("Content-Security-Policy"); got != DocsCSP {
		t.Errorf("page CSP %q, want DocsCSP", got)
	}
	// Every script and stylesheet of the page is a file of the viewer,
	// served with its type; none is inline or from elsewhere.
	refs := pageRefs(t, rec.Body.Bytes())
	if len(refs) < 4 {
		t.Fatalf("page references %v: want Swagger UI's and twinline's script and style", refs)
	}
	for _, ref := range refs {
		name, ok := strings.CutPrefix(ref.url, DocsPath)
		if !ok || strings.Contains(name, "/") {
			t.Errorf("the page loads %q, not a file under %s", ref.url, DocsPath)
			continue
		}
		for _, gz := range []bool{false, true} {
			rec := get(t, func(w http.ResponseWriter, r *http.Request) { d.ServeFile(w, r, name) }, ref.url, gz)
			if rec.Code != http.StatusOK {
				t.Errorf("GET %s (gzip %v): %d %s", ref.url, gz, rec.Code, rec.Body)
				continue
			}
			if got := rec.Header().Get("Content-Type"); got != ref.contentType {
				t.Errorf("GET %s: Content-Type %q, want %q", ref.url, got, ref.contentType)
			}
			if gz && rec.Header().Get("Content-Encoding") != "gzip" {
				t.Errorf("GET %s with gzip accepted: Content-Encoding %q", ref.url, rec.Header().Get("Content-Encoding"))
			}
			if rec.Header().Get("ETag") == "" {
				t.Errorf("GET %s: no ETag", ref.url)
			}
		}
	}
	rec = get(t, func(w http.ResponseWriter, r *http.Request) { d.ServeFile(w, r, "swagger-ui.js.map") }, "/docs/swagger-ui.js.map", false)
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "swagger-ui.js.map") {
		t.Errorf("GET of a file not in the build: %d %s, want a 404 naming it", rec.Code, rec.Body)
	}
}

func TestDocsWithoutTheBuild(t *testing.T) {
	d, err := loadDocs(docsFS, fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Built() {
		t.Error("Built() is true without Swagger UI's files")
	}
	rec := get(t, func(w http.ResponseWriter, r *http.Request) { d.ServeFile(w, r, "swagger-ui-bundle.js") }, "/docs/swagger-ui-bundle.js", false)
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "make web") {
		t.Errorf("GET of the bundle without the build: %d %s, want a 404 saying how to build it", rec.Code, rec.Body)
	}
}

// externalURL matches an absolute or protocol-relative URL.
var externalURL = regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)

// TestDocsPageIsSelfContained checks twinline's own files of the viewer:
// no inline script or style (the CSP would refuse them), nothing from
// another origin; and Swagger UI's stylesheet loads nothing from
// elsewhere (its images are data: URLs).
func TestDocsPageIsSelfContained(t *testing.T) {
	for _, name := range []string{"index.html", "docs.js", "docs.css"} {
		body, err := docsFS.ReadFile(docsDir + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if m := externalURL.Find(body); m != nil {
			t.Errorf("%s names another origin: %s", name, m)
		}
	}
	page, _ := docsFS.ReadFile(docsDir + "/index.html")
	if h := InlineHashes(page, "script"); len(h) > 0 {
		t.Errorf("the page has inline scripts %v", h)
	}
	if h := InlineHashes(page, "style"); len(h) > 0 {
		t.Errorf("the page has inline styles %v", h)
	}
	if bytes.Contains(page, []byte("style=")) {
		t.Error("the page has style attributes")
	}
	css := swaggerUIFiles(t)[viewerDir+"/swagger-ui.css"].Data
	for _, m := range regexp.MustCompile(`url\(\s*["']?([^"')]*)`).FindAllSubmatch(css, -1) {
		if u := string(m[1]); !strings.HasPrefix(u, "data:") {
			t.Errorf("swagger-ui.css loads %q: only data: URLs are allowed by the page's img-src", u)
		}
	}
	if bytes.Contains(css, []byte("@import")) {
		t.Error("swagger-ui.css imports another stylesheet")
	}
}

type pageRef struct{ url, contentType string }

// pageRefs returns the scripts and stylesheets a page loads.
func pageRefs(t *testing.T, page []byte) []pageRef {
	t.Helper()
	var out []pageRef
	z := html.NewTokenizer(bytes.NewReader(page))
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			if z.Err() != io.EOF {
				t.Fatal(z.Err())
			}
			return out
		}
		if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
			continue
		}
		name, more := z.TagName()
		attrs := map[string]string{}
		for more {
			var k, v []byte
			k, v, more = z.TagAttr()
			attrs[string(k)] = string(v)
		}
		switch {
		case string(name) == "script":
			out = append(out, pageRef{attrs["src"], "text/javascript; charset=utf-8"})
		case string(name) == "link" && attrs["rel"] == "stylesheet":
			out = append(out, pageRef{attrs["href"], "text/css; charset=utf-8"})
		}
	}
}

// The gzipped page is the page.
func TestDocsPageGzip(t *testing.T) {
	d := NewDocs()
	rec := get(t, d.ServePage, "/docs", true)
	zr, err := gzip.NewReader(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := docsFS.ReadFile(docsDir + "/index.html")
	if !bytes.Equal(got, want) {
		t.Error("the gzipped page differs from the page")
	}
}
