package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"
)

// SecretPrefix starts every secret NewSecret makes, so that a leaked one is
// recognisable (secret scanners, logs).
const SecretPrefix = "tl_"

// MaxSecretLen bounds the length of a secret anyone may present: longer
// ones are invalid without being hashed.
const MaxSecretLen = 1024

// ErrInvalidArgument is wrapped by the errors of NewToken and of the
// Authenticator methods for names, scopes, sites, expiries and lifetimes
// that are not acceptable: the caller's mistake, not the store's.
var ErrInvalidArgument = errors.New("invalid argument")

// NewSecret returns a new random token secret: "tl_" and 32 random bytes in
// unpadded base64url (46 characters in all).
func NewSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// HashSecret returns the SHA-256 of the whole secret, what a Token keeps.
func HashSecret(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// tokenIDLen is the length of a token's public id in hex digits.
const tokenIDLen = 16

// TokenID returns the public id of secret: the first 16 hex digits of its
// SHA-256. Any string has one, so a secret written by hand (a bootstrap
// file) works as well as one from NewSecret.
func TokenID(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:tokenIDLen/2])
}

// idOfHash returns the id TokenID gives for a secret of hash sum.
func idOfHash(sum []byte) string {
	if len(sum) < tokenIDLen/2 {
		return ""
	}
	return hex.EncodeToString(sum[:tokenIDLen/2])
}

// NewToken returns a new token named name and its secret, to be shown once.
// The name is 1 to 64 of A-Z a-z 0-9 . _ -; sites, if any, are non-empty,
// at most 64 characters and free of control characters; expires, if not
// zero (never), is after now. Errors wrap ErrInvalidArgument.
func NewToken(name string, scopes Scope, sites []string, expires, now time.Time) (tok Token, secret string, err error) {
	if err := ValidTokenName(name); err != nil {
		return Token{}, "", err
	}
	tok, secret, err = newToken(scopes, sites, expires, now)
	if err != nil {
		return Token{}, "", err
	}
	tok.Name = name
	return tok, secret, nil
}

// newToken is NewToken without the name, shared with sessions.
func newToken(scopes Scope, sites []string, expires, now time.Time) (Token, string, error) {
	if scopes == 0 || scopes&^AllScopes != 0 {
		return Token{}, "", fmt.Errorf("scopes %#x: want one or more of ingest, read, operate, admin: %w", uint8(scopes), ErrInvalidArgument)
	}
	sites, err := validSites(sites)
	if err != nil {
		return Token{}, "", err
	}
	if !expires.IsZero() && !expires.After(now) {
		return Token{}, "", fmt.Errorf("expiry %s is not after now (%s): %w", expires.Format(time.RFC3339), now.Format(time.RFC3339), ErrInvalidArgument)
	}
	secret, err := NewSecret()
	if err != nil {
		return Token{}, "", err
	}
	hash := HashSecret(secret)
	return Token{
		ID:      idOfHash(hash),
		Scopes:  scopes,
		Sites:   sites,
		Hash:    hash,
		Created: now,
		Expires: expires,
	}, secret, nil
}

// ValidTokenName returns an error wrapping ErrInvalidArgument unless name
// is 1 to 64 of A-Z a-z 0-9 . _ -. (Session names, "session:<id>", are not
// valid token names, so the two never collide.)
func ValidTokenName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("token name %q: want 1 to 64 characters: %w", name, ErrInvalidArgument)
	}
	for i := range len(name) {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("token name %q: want only A-Z a-z 0-9 . _ -: %w", name, ErrInvalidArgument)
		}
	}
	return nil
}

// validSites checks sites and returns them sorted, without duplicates, in
// a slice of their own (nil for none).
func validSites(sites []string) ([]string, error) {
	if len(sites) == 0 {
		return nil, nil
	}
	for _, s := range sites {
		if err := validSite(s); err != nil {
			return nil, err
		}
	}
	out := slices.Clone(sites)
	slices.Sort(out)
	return slices.Compact(out), nil
}

func validSite(s string) error {
	if s == "" || utf8.RuneCountInString(s) > 64 {
		return fmt.Errorf("site %q: want 1 to 64 characters: %w", s, ErrInvalidArgument)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("site %q: not UTF-8: %w", s, ErrInvalidArgument)
	}
	for _, r := range s {
		if unicode.In(r, unicode.Cc, unicode.Cf) {
			return fmt.Errorf("site %q: control or format character %U: %w", s, r, ErrInvalidArgument)
		}
	}
	return nil
}

// validSecretChars reports whether s could be a secret: 1 to MaxSecretLen
// visible ASCII characters (what a header, a query parameter and a file
// carry without escaping).
func validSecretChars(s string) bool {
	if s == "" || len(s) > MaxSecretLen {
		return false
	}
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
