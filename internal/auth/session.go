package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"slices"
	"time"
)

// SessionPrefix starts the store name of every session: "session:" and
// the session's id. Token names cannot contain a colon.
const SessionPrefix = "session:"

// NewSession signs in from, an API token's identity (KindToken) or a user
// named by the trusted proxy (KindProxy), for ttl: it stores a session
// token and returns its secret (for the session cookie), its CSRF token
// (for the X-CSRF-Token header) and the token without its hash.
//
// A session of a token has the parent's scopes and sites, ends when the
// parent is revoked or expires, and never outlives it; its identity has
// the parent's name. A session of a proxy user has the identity's own
// scopes and sites and no parent. Sessions cannot start sessions.
func (a *Authenticator) NewSession(ctx context.Context, from Identity, ttl time.Duration) (secret, csrf string, tok Token, err error) {
	if ttl <= 0 {
		return "", "", Token{}, fmt.Errorf("starting a session: lifetime %s: want a positive one: %w", ttl, ErrInvalidArgument)
	}
	now := a.now()
	expires := now.Add(ttl)
	var (
		scopes Scope
		sites  []string
		parent string
	)
	switch from.Kind {
	case KindToken:
		s := a.snap.Load()
		p := s.byID[from.TokenID]
		if p == nil || p.tok.Session() {
			return "", "", Token{}, fmt.Errorf("starting a session of token id %q: %w", from.TokenID, ErrInvalidToken)
		}
		if err := tokenState(p.tok, now); err != nil {
			return "", "", Token{}, fmt.Errorf("starting a session of token %q: %w", p.tok.Name, err)
		}
		scopes, sites, parent = p.tok.Scopes, p.tok.Sites, p.tok.ID
		if !p.tok.Expires.IsZero() && p.tok.Expires.Before(expires) {
			expires = p.tok.Expires
		}
		from.Name = p.tok.Name
	case KindProxy:
		if from.Name == "" {
			return "", "", Token{}, fmt.Errorf("starting a session of a proxy user without a name: %w", ErrInvalidArgument)
		}
		scopes, sites = from.Scopes, from.Sites
	default:
		return "", "", Token{}, fmt.Errorf("starting a session of a %s identity: want a token or a proxy user: %w", from.Kind, ErrInvalidArgument)
	}
	tok, secret, err = newToken(scopes, slices.Clone(sites), expires, now)
	if err != nil {
		return "", "", Token{}, fmt.Errorf("starting a session of %q: %w", from.Name, err)
	}
	tok.Name = SessionPrefix + tok.ID
	tok.Kind = KindSession
	tok.Parent = parent
	tok.Owner = from.Name
	tok.CreatedBy = from.Name
	if err := a.create(ctx, tok); err != nil {
		return "", "", Token{}, fmt.Errorf("starting a session: %w", err)
	}
	tok.Hash = nil
	return secret, CSRFToken(secret), tok, nil
}

// EndSession revokes the session whose secret is secret (signing out);
// ErrInvalidToken if there is no such session.
func (a *Authenticator) EndSession(ctx context.Context, secret string) error {
	e := a.snap.Load().lookup(secret)
	if e == nil || !e.tok.Session() {
		return fmt.Errorf("ending a session: %w", ErrInvalidToken)
	}
	if !e.tok.Revoked.IsZero() {
		return nil
	}
	if err := a.store.Revoke(ctx, e.tok.Name, a.now()); err != nil {
		return fmt.Errorf("ending session %s: %w", e.tok.ID, err)
	}
	return a.Reload(ctx)
}

// csrfLen is the length of a CSRF token in hex digits.
const csrfLen = 32

// CSRFToken returns the CSRF token of a session: the first 32 hex digits
// of HMAC-SHA256 keyed by the session's secret over "csrf". The dashboard
// reads it once at sign-in and sends it in a header with every unsafe
// request; a cross-site page can neither read the cookie nor compute it.
func CSRFToken(sessionSecret string) string {
	var b [csrfLen]byte
	hex.Encode(b[:], csrfMAC(sessionSecret)[:csrfLen/2])
	return string(b[:])
}

func csrfMAC(sessionSecret string) []byte {
	m := hmac.New(sha256.New, []byte(sessionSecret))
	m.Write([]byte("csrf"))
	return m.Sum(nil)
}

// CheckCSRF reports, in constant time, whether header is the CSRF token
// of the session whose secret is sessionSecret.
func CheckCSRF(sessionSecret, header string) bool {
	if sessionSecret == "" || len(header) != csrfLen {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(CSRFToken(sessionSecret)), []byte(header)) == 1
}
