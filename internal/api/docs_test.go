package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/web"
)

func TestDocsCSP(t *testing.T) {
	a := &API{}
	rec := httptest.NewRecorder()
	a.handleDocs(rec, httptest.NewRequest(http.MethodGet, "/docs", nil))
	csp := rec.Header().Get("Content-Security-Policy")
	if strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q allows inline code", csp)
	}
	if !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP %q allows framing", csp)
	}
	for _, tag := range []string{"script", "style"} {
		hashes := web.InlineHashes(rec.Body.Bytes(), tag)
		if len(hashes) == 0 {
			t.Fatalf("docs page has no inline %s; the test checks nothing", tag)
		}
		want := tag + "-src " + strings.Join(append([]string{"'self'"}, hashes...), " ")
		var got string
		for _, d := range strings.Split(csp, ";") {
			if d = strings.TrimSpace(d); strings.HasPrefix(d, tag+"-src ") {
				got = d
			}
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("%s-src (-got +want):\n%s", tag, diff)
		}
	}
}

// TestDocsRoutes goes through the route table: /docs answers the viewer
// (or, in a binary built without the dashboard, the plain page) under a
// policy that allows no eval nor inline code, and /docs/{file} serves the
// viewer's files with their types.
func TestDocsRoutes(t *testing.T) {
	a := newTestAPI(t, &fakeLog{})
	a.docs = web.NewDocs()
	do := func(target string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
		return rec
	}
	rec := do("/docs")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /docs: %d %s", rec.Code, rec.Body)
	}
	csp := rec.Header().Get("Content-Security-Policy")
	for _, bad := range []string{"unsafe-eval", "unsafe-inline", "http:", "https:", "*"} {
		if strings.Contains(csp, bad) {
			t.Errorf("/docs CSP %q allows %s", csp, bad)
		}
	}
	if !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("/docs CSP %q allows framing", csp)
	}
	if a.docs.Built() != strings.Contains(rec.Body.String(), `src="/docs/swagger-ui-bundle.js"`) {
		t.Errorf("Built() %v, but the page is %q…", a.docs.Built(), rec.Body.String()[:200])
	}
	if !strings.Contains(rec.Body.String(), `href="/api/asyncapi.json"`) {
		t.Error("/docs does not link the AsyncAPI document")
	}

	files := []struct {
		name, contentType string
		needsBuild        bool
	}{
		{"docs.js", "text/javascript; charset=utf-8", false},
		{"docs.css", "text/css; charset=utf-8", false},
		{"swagger-ui-bundle.js", "text/javascript; charset=utf-8", true},
		{"swagger-ui.css", "text/css; charset=utf-8", true},
		{"swagger-ui-LICENSE.txt", "text/plain; charset=utf-8", true},
	}
	for _, f := range files {
		rec := do("/docs/" + f.name)
		if f.needsBuild && !a.docs.Built() {
			if rec.Code != http.StatusNotFound {
				t.Errorf("GET /docs/%s without the build: %d, want 404", f.name, rec.Code)
			}
			continue
		}
		if rec.Code != http.StatusOK {
			t.Errorf("GET /docs/%s: %d %s", f.name, rec.Code, rec.Body)
			continue
		}
		if got := rec.Header().Get("Content-Type"); got != f.contentType {
			t.Errorf("GET /docs/%s: Content-Type %q, want %q", f.name, got, f.contentType)
		}
		if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET /docs/%s: X-Content-Type-Options %q", f.name, got)
		}
	}
	if rec := do("/docs/..%2Fopenapi.json"); rec.Code != http.StatusNotFound {
		t.Errorf("GET /docs/..%%2Fopenapi.json: %d, want 404", rec.Code)
	}
}

// The OpenAPI document offers the schemes Swagger UI's "Authorize" sets:
// a bearer token, and the dashboard's session cookie.
func TestOpenAPISecuritySchemes(t *testing.T) {
	var doc struct {
		Components struct {
			SecuritySchemes map[string]struct {
				Type, Scheme, In, Name string
			} `json:"securitySchemes"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openapiDoc, &doc); err != nil {
		t.Fatal(err)
	}
	s := doc.Components.SecuritySchemes
	if b := s["bearer"]; b.Type != "http" || b.Scheme != "bearer" {
		t.Errorf("bearer scheme %+v, want type http, scheme bearer", b)
	}
	if c := s["session"]; c.Type != "apiKey" || c.In != "cookie" || c.Name != SessionCookie {
		t.Errorf("session scheme %+v, want the %s cookie", c, SessionCookie)
	}
}
