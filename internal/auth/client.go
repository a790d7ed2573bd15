package auth

import "net/http"

// BearerTransport returns a RoundTripper that sends token as
// "Authorization: Bearer" on every request through base
// (http.DefaultTransport when nil), for twinline's own clients (simulate,
// bench); an empty token sends none.
func BearerTransport(token string, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	if token == "" {
		return base
	}
	return bearer{token: "Bearer " + token, base: base}
}

type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", b.token)
	return b.base.RoundTrip(r)
}
