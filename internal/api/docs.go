package api

import (
	_ "embed"
	"net/http"
	"strings"

	"github.com/twinline/twinline/internal/problem"
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

// handleDocs is GET /docs: the API reference where every call can be tried
// (Swagger UI, internal/web), all from this binary (no CDN: it works on an
// air-gapped plant network). A binary built without the dashboard (no
// npm) serves the plain reference page docs.html instead.
func (a *API) handleDocs(w http.ResponseWriter, r *http.Request) {
	if a.docs != nil && a.docs.Built() {
		a.docs.ServePage(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", docsCSP)
	_, _ = w.Write(docsPage)
}

// handleDocsFile is GET /docs/{file}: the viewer's scripts, styles and
// licence files.
func (a *API) handleDocsFile(w http.ResponseWriter, r *http.Request) {
	if a.docs == nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound,
			Detail: "the API docs viewer is not served here"})
		return
	}
	a.docs.ServeFile(w, r, r.PathValue("file"))
}

// docsCSP allows the plain page's own inline script and style by their
// hashes, same-origin fetches of the OpenAPI document, and no framing.
var docsCSP = "default-src 'self'" +
	"; script-src " + strings.Join(append([]string{"'self'"}, web.InlineHashes(docsPage, "script")...), " ") +
	"; style-src " + strings.Join(append([]string{"'self'"}, web.InlineHashes(docsPage, "style")...), " ") +
	"; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"

// handleIndex serves the dashboard: the page at /, and the chunks it
// loads lazily at /assets/ (internal/web).
func (a *API) handleIndex(w http.ResponseWriter, r *http.Request) { a.ui.ServeHTTP(w, r) }
