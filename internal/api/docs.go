package api

import (
	_ "embed"
	"net/http"
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
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
	_, _ = w.Write(docsPage)
}

func (a *API) handleIndex(w http.ResponseWriter, r *http.Request) { a.ui.ServeHTTP(w, r) }
