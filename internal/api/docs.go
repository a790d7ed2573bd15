package api

import (
	_ "embed"
	"net/http"
	"strings"

	"github.com/twinline/twinline/internal/web"
)

//go:embed openapi.json
var openapiDoc []byte

//go:embed docs.html
var docsPage []byte

func (a *API) handleOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(openapiDoc)
}

// handleDocs renders the OpenAPI document with a small self-contained page:
// no CDN, so it works on an air-gapped plant network.
func (a *API) handleDocs(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", docsCSP)
	_, _ = w.Write(docsPage)
}

// docsCSP allows the docs page's own inline script and style by their
// hashes, same-origin fetches of the OpenAPI document, and no framing.
var docsCSP = "default-src 'self'" +
	"; script-src " + strings.Join(append([]string{"'self'"}, web.InlineHashes(docsPage, "script")...), " ") +
	"; style-src " + strings.Join(append([]string{"'self'"}, web.InlineHashes(docsPage, "style")...), " ") +
	"; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"

func (a *API) handleIndex(w http.ResponseWriter, r *http.Request) { a.ui.ServeHTTP(w, r) }
