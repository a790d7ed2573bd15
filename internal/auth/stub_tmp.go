package auth

import (
	"net/http"
	"strings"
)

// Credentials is a stand-in until the real parser lands (TEMPORARY).
func Credentials(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:]), nil
	}
	return "", ErrNoCredentials
}
