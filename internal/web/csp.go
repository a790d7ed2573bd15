package web

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"strings"

	"golang.org/x/net/html"
)

// InlineHashes returns the Content-Security-Policy source expressions
// ('sha256-…') that allow the inline elements of kind tag ("script" or
// "style", lower case) of the HTML page: one per element with text of its own (a
// script with a src attribute has none), in document order, without
// repeats. The text is hashed as a browser sees it, after the HTML parser
// turned CR LF into LF.
func InlineHashes(page []byte, tag string) []string {
	var out []string
	z := html.NewTokenizer(bytes.NewReader(page))
	for {
		switch z.Next() {
		case html.ErrorToken:
			return out
		case html.StartTagToken:
			name, hasAttr := z.TagName()
			if string(name) != tag || hasSrc(z, hasAttr) {
				continue
			}
			var text []byte
			if z.Next() == html.TextToken {
				text = z.Text()
			}
			sum := sha256.Sum256(text)
			src := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
			if !contains(out, src) {
				out = append(out, src)
			}
		}
	}
}

// hasSrc reads the attributes of the current start tag and reports whether
// one is src.
func hasSrc(z *html.Tokenizer, more bool) bool {
	for more {
		var key []byte
		key, _, more = z.TagAttr()
		if string(key) == "src" {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// dashboardCSP returns the Content-Security-Policy of the dashboard page:
// scripts only from the origin or by the hash of the page's inline ones
// (no 'unsafe-inline'), styles also inline (Plotly sets them on elements),
// same-origin API and stream calls, and no framing.
func dashboardCSP(page []byte) string {
	return "default-src 'self'; script-src " + strings.Join(append([]string{"'self'"}, InlineHashes(page, "script")...), " ") +
		"; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
}
