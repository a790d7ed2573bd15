// Package web embeds the dashboard served at /.
//
// The React dashboard (source in web/ at the repository root) is built by
// `make web` into dist/app/index.html: one self-contained page (one gzipped
// response is the fastest first load). That directory is not in git, so a checkout
// where npm has not run still builds; it then serves the committed fallback
// page dist/index.html, a plain live table that says how to build the
// dashboard.
//
// Beside the page, the build may write chunks that the dashboard imports
// only when it needs them (the OpenTelemetry SDK, loaded when tracing is
// on): dist/app/assets/NAME-HASH.js, served at /assets/ — allowed by the
// page's script-src 'self' — and cached for good, their names changing
// with their content.
//
// The API reference viewer at /docs (Swagger UI) is in docs.go: its page is
// committed in docs/, Swagger UI's files come with the dashboard build in
// dist/app/docs.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/problem"
)

//go:embed dist
var dist embed.FS

// Paths of the built dashboard and of the fallback page inside dist.
const (
	appPage      = "dist/app/index.html"
	fallbackPage = "dist/index.html"
	assetsDir    = "dist/app/assets"
)

// AssetsPath is the URL path prefix of the dashboard's lazily loaded chunks.
const AssetsPath = "/assets/"

// page is one prepared response body in two encodings.
type page struct {
	plain, gzipped      []byte
	etagPlain, etagGzip string
	built               bool
	// csp allows the page's own inline scripts by their hashes.
	csp string
	// assets are the chunks under AssetsPath, by file name.
	assets map[string]*asset
}

// asset is one lazily loaded chunk, in two encodings.
type asset struct {
	plain, gzipped      []byte
	etagPlain, etagGzip string
}

// Handler serves the dashboard, or the fallback page when the dashboard was
// not built into this binary.
func Handler() http.Handler {
	p, err := load(dist)
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return p
}

// Built reports whether this binary carries the React dashboard.
func Built() bool {
	_, err := fs.Stat(dist, appPage)
	return err == nil
}

func load(fsys fs.FS) (*page, error) {
	name, built := appPage, true
	body, err := fs.ReadFile(fsys, appPage)
	if err != nil {
		name, built = fallbackPage, false
		body, err = fs.ReadFile(fsys, fallbackPage)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
	}
	a, err := prepare(name, body)
	if err != nil {
		return nil, err
	}
	p := &page{
		plain:     a.plain,
		gzipped:   a.gzipped,
		etagPlain: a.etagPlain,
		etagGzip:  a.etagGzip,
		built:     built,
		csp:       dashboardCSP(body),
		assets:    map[string]*asset{},
	}
	if !built {
		return p, nil
	}
	files, err := fs.ReadDir(fsys, assetsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("listing %s: %w", assetsDir, err)
	}
	for _, f := range files {
		if f.IsDir() || path.Ext(f.Name()) != ".js" {
			continue
		}
		name := path.Join(assetsDir, f.Name())
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		if p.assets[f.Name()], err = prepare(name, body); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// prepare compresses body once and tags both encodings.
func prepare(name string, body []byte) (*asset, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, fmt.Errorf("compressing %s: %w", name, err)
	}
	if _, err := zw.Write(body); err != nil {
		return nil, fmt.Errorf("compressing %s: %w", name, err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compressing %s: %w", name, err)
	}
	sum := sha256.Sum256(body)
	tag := hex.EncodeToString(sum[:8])
	return &asset{plain: body, gzipped: buf.Bytes(), etagPlain: `"` + tag + `"`, etagGzip: `"` + tag + `-gz"`}, nil
}

// ServeHTTP implements http.Handler: the page, or a chunk under
// AssetsPath.
func (p *page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if name, ok := strings.CutPrefix(r.URL.Path, AssetsPath); ok {
		p.serveAsset(w, r, name)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Vary", "Accept-Encoding")
	h.Set("Content-Security-Policy", p.csp)
	h.Set("Referrer-Policy", "same-origin")
	body, etag := p.plain, p.etagPlain
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		body, etag = p.gzipped, p.etagGzip
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("ETag", etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip (a
// q=0 entry refuses it).
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		params = strings.ReplaceAll(strings.TrimSpace(params), " ", "")
		return params != "q=0" && params != "q=0.0" && params != "q=0.00" && params != "q=0.000"
	}
	return false
}

// serveAsset serves the chunk name: JavaScript, cached for good (its name
// has its content's hash).
func (p *page) serveAsset(w http.ResponseWriter, r *http.Request, name string) {
	a, ok := p.assets[name]
	if !ok {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound,
			Detail: "no dashboard asset " + name + " in this build"})
		return
	}
	serveEncoded(w, r, a, "text/javascript; charset=utf-8", "public, max-age=31536000, immutable")
}
