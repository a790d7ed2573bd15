package web

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/problem"
)

// The API reference viewer served at /docs (docs/decisions/0029): Swagger
// UI over /api/openapi.json. Its page, script and style (docs/ in this
// package) are committed; Swagger UI's own files come from the npm package
// swagger-ui-dist, copied by the dashboard build (web/docs-viewer.mjs)
// into dist/app/docs. A binary built without npm has no viewer: the API
// serves its plain reference page instead (Docs.Built).

//go:embed docs
var docsFS embed.FS

const (
	docsDir   = "docs"
	viewerDir = "dist/app/docs"
	// viewerBundle is the file whose presence says the viewer was built.
	viewerBundle = "swagger-ui-bundle.js"
)

// DocsPath is the URL path prefix of the viewer's files.
const DocsPath = "/docs/"

// DocsCSP is the Content-Security-Policy of the viewer page: everything
// from this origin only, no inline script or style, no eval; images also
// as data: URLs (Swagger UI's icons are SVG data URLs in its stylesheet).
// Swagger UI's own style changes go through the DOM (element.style), which
// a policy without 'unsafe-inline' allows.
const DocsCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'" +
	"; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Docs serves the API reference viewer: its page and its files.
type Docs struct {
	page  *asset
	files map[string]*docFile
	built bool
}

// docFile is one file of the viewer, compressed on its first request:
// compressing Swagger UI's 1.7 MB bundle takes most of a second, which no
// server start should wait for (BenchmarkNewDocs).
type docFile struct {
	name, contentType string
	body              []byte
	once              sync.Once
	prepared          *asset
	err               error
}

func (f *docFile) asset() (*asset, error) {
	f.once.Do(func() { f.prepared, f.err = prepare(f.name, f.body) })
	return f.prepared, f.err
}

// NewDocs returns the viewer embedded in this binary.
func NewDocs() *Docs {
	d, err := loadDocs(docsFS, dist)
	if err != nil {
		panic(err) // the embedded trees are fixed at build time
	}
	return d
}

// loadDocs reads twinline's page from own (under docs/) and Swagger UI's
// files from built (under dist/app/docs/, absent without the dashboard
// build).
func loadDocs(own, built fs.FS) (*Docs, error) {
	d := &Docs{files: map[string]*docFile{}}
	if err := d.add(own, docsDir); err != nil {
		return nil, err
	}
	idx, ok := d.files["index.html"]
	if !ok {
		return nil, fmt.Errorf("the viewer page %s/index.html is missing", docsDir)
	}
	page, err := idx.asset()
	if err != nil {
		return nil, err
	}
	d.page = page
	delete(d.files, "index.html")
	if err := d.add(built, viewerDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	_, d.built = d.files[viewerBundle]
	return d, nil
}

// add prepares the files of dir whose types the viewer serves.
func (d *Docs) add(fsys fs.FS, dir string) error {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return fmt.Errorf("listing %s: %w", dir, err)
	}
	for _, e := range entries {
		ct := docsContentType(e.Name())
		if e.IsDir() || ct == "" {
			continue
		}
		name := path.Join(dir, e.Name())
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		d.files[e.Name()] = &docFile{name: name, contentType: ct, body: body}
	}
	return nil
}

// docsContentType is the Content-Type of a viewer file by its extension,
// "" for files not served.
func docsContentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".txt":
		return "text/plain; charset=utf-8"
	}
	return ""
}

// Built reports whether this binary carries Swagger UI (the dashboard
// build ran).
func (d *Docs) Built() bool { return d.built }

// ServePage serves the viewer page with DocsCSP.
func (d *Docs) ServePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Security-Policy", DocsCSP)
	w.Header().Set("Referrer-Policy", "same-origin")
	serveEncoded(w, r, d.page, "text/html; charset=utf-8", "no-cache")
}

// ServeFile serves the viewer's file name (swagger-ui-bundle.js, docs.js,
// …). The names do not change with the content: browsers revalidate them
// (ETag), which costs a 304 per file and load.
func (d *Docs) ServeFile(w http.ResponseWriter, r *http.Request, name string) {
	f, ok := d.files[name]
	if !ok {
		detail := "no API docs file " + name + " in this build"
		if !d.built {
			detail += " (the viewer comes with the dashboard build: make web)"
		}
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: detail})
		return
	}
	a, err := f.asset()
	if err != nil {
		// gzip into memory does not fail; should it, say so
		problem.Write(w, &problem.Problem{Type: "about:blank", Status: http.StatusInternalServerError,
			Detail: "preparing " + name + ": " + err.Error()})
		return
	}
	serveEncoded(w, r, a, f.contentType, "no-cache")
}

// serveEncoded serves a, gzipped when the client accepts it, with its
// ETag and the given Cache-Control.
func serveEncoded(w http.ResponseWriter, r *http.Request, a *asset, contentType, cacheControl string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", cacheControl)
	h.Set("Vary", "Accept-Encoding")
	body, etag := a.plain, a.etagPlain
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		body, etag = a.gzipped, a.etagGzip
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("ETag", etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}
