package auth

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// maxAuthorizationLen bounds the Authorization header Credentials reads.
const maxAuthorizationLen = 4 << 10

// Credentials returns the token secret r carries, looked for in this
// order and nowhere else (never the session cookie, which is checked on
// its own):
//
//   - Authorization: Bearer <secret>
//   - Authorization: Token <secret> (InfluxDB 2)
//   - Authorization: Basic base64(<any user>:<secret>)
//   - the query parameter p=<secret> (InfluxDB 1; u is ignored)
//
// Scheme names are case-insensitive (RFC 7235). It returns ErrNoCredentials
// when r carries none, and ErrInvalidToken when what it carries is
// malformed: more than one Authorization header or p parameter, an
// unknown scheme, an empty secret, bad base64, a header longer than 4 KiB,
// a secret longer than MaxSecretLen or with other than visible ASCII.
func Credentials(r *http.Request) (secret string, err error) {
	if hs := r.Header.Values("Authorization"); len(hs) > 0 {
		if len(hs) > 1 {
			return "", fmt.Errorf("reading Authorization: more than one header: %w", ErrInvalidToken)
		}
		return parseAuthorization(hs[0])
	}
	if r.URL == nil || !strings.Contains(r.URL.RawQuery, "p=") {
		return "", ErrNoCredentials
	}
	// A malformed pair elsewhere in the query does not hide p.
	q, _ := url.ParseQuery(r.URL.RawQuery)
	ps, ok := q["p"]
	switch {
	case !ok:
		return "", ErrNoCredentials
	case len(ps) > 1:
		return "", fmt.Errorf("reading query parameter p: given more than once: %w", ErrInvalidToken)
	case !validSecretChars(ps[0]):
		return "", fmt.Errorf("reading query parameter p: empty, too long or not visible ASCII: %w", ErrInvalidToken)
	}
	return ps[0], nil
}

// parseAuthorization returns the secret of an Authorization header value.
func parseAuthorization(h string) (string, error) {
	if len(h) > maxAuthorizationLen {
		return "", fmt.Errorf("reading Authorization: longer than %d bytes: %w", maxAuthorizationLen, ErrInvalidToken)
	}
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	rest = strings.TrimLeft(rest, " ")
	var secret string
	switch {
	case strings.EqualFold(scheme, "Bearer"), strings.EqualFold(scheme, "Token"):
		secret = rest
	case strings.EqualFold(scheme, "Basic"):
		b, err := decodeBasic(rest)
		if err != nil {
			return "", fmt.Errorf("reading Authorization: Basic: %w", ErrInvalidToken)
		}
		_, pass, ok := strings.Cut(string(b), ":")
		if !ok {
			return "", fmt.Errorf("reading Authorization: Basic without a colon: %w", ErrInvalidToken)
		}
		secret = pass
	default:
		return "", fmt.Errorf("reading Authorization: scheme %q: want Bearer, Token or Basic: %w", truncate(scheme, 20), ErrInvalidToken)
	}
	if !validSecretChars(secret) {
		return "", fmt.Errorf("reading Authorization: %s secret empty, too long or not visible ASCII: %w", strings.ToLower(scheme), ErrInvalidToken)
	}
	return secret, nil
}

// decodeBasic decodes the base64 of basic auth, padded or not.
func decodeBasic(s string) ([]byte, error) {
	if s == "" {
		return nil, ErrInvalidToken
	}
	if strings.HasSuffix(s, "=") {
		return base64.StdEncoding.Strict().DecodeString(s)
	}
	return base64.RawStdEncoding.Strict().DecodeString(s)
}

// truncate returns at most n bytes of s, for error messages.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// StreamTicket returns the ?ticket= of r, "" when there is none: a browser
// opening the live stream (WebSocket, SSE) cannot set headers and sends a
// single-use ticket instead (Tickets).
func StreamTicket(r *http.Request) string {
	if r.URL == nil {
		return ""
	}
	return r.URL.Query().Get("ticket")
}
