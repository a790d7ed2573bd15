package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		rest, ok := strings.CutPrefix(s, SecretPrefix)
		if !ok {
			t.Fatalf("NewSecret() = %q, want prefix %q", s, SecretPrefix)
		}
		b, err := base64.RawURLEncoding.DecodeString(rest)
		if err != nil || len(b) != 32 {
			t.Fatalf("NewSecret() = %q: %d bytes, %v; want 32 bytes of base64url", s, len(b), err)
		}
		if !validSecretChars(s) {
			t.Errorf("NewSecret() = %q, not valid in a header", s)
		}
		if seen[s] {
			t.Fatalf("NewSecret() repeated %q", s)
		}
		seen[s] = true
	}
}

func TestHashAndID(t *testing.T) {
	for _, secret := range []string{"", "tl_abc", "a bootstrap secret from a file, hand-written"} {
		sum := sha256.Sum256([]byte(secret))
		if got, want := HashSecret(secret), sum[:]; !cmp.Equal(got, want) {
			t.Errorf("HashSecret(%q) = %x, want %x", secret, got, want)
		}
		if got, want := TokenID(secret), hex.EncodeToString(sum[:])[:16]; got != want {
			t.Errorf("TokenID(%q) = %q, want %q", secret, got, want)
		}
		if got, want := idOfHash(HashSecret(secret)), TokenID(secret); got != want {
			t.Errorf("idOfHash(HashSecret(%q)) = %q, want %q", secret, got, want)
		}
	}
}

func TestNewToken(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		tokName string
		scopes  Scope
		sites   []string
		expires time.Time
		ok      bool
		want    []string // sites of the token
	}{
		{name: "plain", tokName: "line-7_ingest.v2", scopes: ScopeIngest, ok: true},
		{name: "sites sorted and deduplicated", tokName: "a", scopes: ScopeRead, sites: []string{"Köln", "berlin", "Köln"}, ok: true, want: []string{"Köln", "berlin"}},
		{name: "expires later", tokName: "a", scopes: ScopeRead, expires: now.Add(time.Hour), ok: true},
		{name: "64 chars", tokName: strings.Repeat("x", 64), scopes: AllScopes, ok: true},
		{name: "empty name", tokName: "", scopes: ScopeRead},
		{name: "65 chars", tokName: strings.Repeat("x", 65), scopes: ScopeRead},
		{name: "colon", tokName: "session:x", scopes: ScopeRead},
		{name: "space", tokName: "a b", scopes: ScopeRead},
		{name: "unicode name", tokName: "köln", scopes: ScopeRead},
		{name: "no scope", tokName: "a"},
		{name: "unknown scope", tokName: "a", scopes: 1 << 6},
		{name: "empty site", tokName: "a", scopes: ScopeRead, sites: []string{""}},
		{name: "long site", tokName: "a", scopes: ScopeRead, sites: []string{strings.Repeat("ö", 65)}},
		{name: "64 rune site", tokName: "a", scopes: ScopeRead, sites: []string{strings.Repeat("ö", 64)}, ok: true, want: []string{strings.Repeat("ö", 64)}},
		{name: "control in site", tokName: "a", scopes: ScopeRead, sites: []string{"a\nb"}},
		{name: "format char in site", tokName: "a", scopes: ScopeRead, sites: []string{"a\u202eb"}},
		{name: "bad utf-8 site", tokName: "a", scopes: ScopeRead, sites: []string{"a\xffb"}},
		{name: "expires now", tokName: "a", scopes: ScopeRead, expires: now},
		{name: "expired", tokName: "a", scopes: ScopeRead, expires: now.Add(-time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, secret, err := NewToken(tt.tokName, tt.scopes, tt.sites, tt.expires, now)
			if !tt.ok {
				if !errors.Is(err, ErrInvalidArgument) {
					t.Fatalf("NewToken() error = %v, want ErrInvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewToken() error = %v", err)
			}
			want := Token{
				ID: TokenID(secret), Name: tt.tokName, Scopes: tt.scopes, Sites: tt.want,
				Hash: HashSecret(secret), Created: now, Expires: tt.expires,
			}
			if diff := cmp.Diff(tok, want); diff != "" {
				t.Errorf("NewToken() (-got +want):\n%s", diff)
			}
		})
	}
}

func TestTokenIdentity(t *testing.T) {
	tests := []struct {
		name string
		tok  Token
		want Identity
	}{
		{"api token", Token{ID: "i", Name: "n", Scopes: ScopeRead, Sites: []string{"s"}},
			Identity{Name: "n", Kind: KindToken, Scopes: ScopeRead, Sites: []string{"s"}, TokenID: "i"}},
		{"session of a token", Token{ID: "i", Name: "session:i", Owner: "n", Parent: "p", Kind: KindSession, Scopes: ScopeRead},
			Identity{Name: "n", Kind: KindSession, Scopes: ScopeRead, TokenID: "i"}},
		{"old session without kind", Token{ID: "i", Name: "n", Parent: "p", Scopes: ScopeRead},
			Identity{Name: "n", Kind: KindSession, Scopes: ScopeRead, TokenID: "i"}},
		{"session of a proxy user", Token{ID: "i", Name: "session:i", Owner: "alice", Kind: KindSession, Scopes: ScopeOperate},
			Identity{Name: "alice", Kind: KindSession, Scopes: ScopeOperate, TokenID: "i"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.tok.Identity(), tt.want); diff != "" {
				t.Errorf("Identity() (-got +want):\n%s", diff)
			}
		})
	}
}
