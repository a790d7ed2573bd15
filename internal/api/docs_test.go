package api

import (
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
