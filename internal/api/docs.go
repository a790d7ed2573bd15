package api

import (
	_ "embed"
	"net/http"
	"strings"

	"github.com/twinline/twinline/internal/web"
)

//go:embed openapi.json
var openapiDoc []byte

// asyncapiDoc describes the channels beside the HTTP API: the live
// stream's messages (their Go types are in internal/hub), the MQTT and
// Kafka telemetry topics.
//
//go:embed asyncapi.json
var asyncapiDoc []byte

//go:embed docs.html
var docsPage []byte

func (a *API) handleOpenAPI(w http.ResponseWriter, _ *http.Request) {
	writeDoc(w, openapiDoc)
}

func (a *API) handleAsyncAPI(w http.ResponseWriter, _ *http.Request) {
	writeDoc(w, asyncapiDoc)
}

// writeDoc writes one of the API documents.
func writeDoc(w http.ResponseWriter, doc []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(doc)
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

// handleIndex serves the dashboard: the page at /, and the chunks it
// loads lazily at /assets/ (internal/web).
func (a *API) handleIndex(w http.ResponseWriter, r *http.Request) { a.ui.ServeHTTP(w, r) }
