package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestNewSession(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	store := &fakeStore{}
	a := newTestAuthenticator(t, store, c)
	now := c.Now()
	forever := mustCreate(t, a, "operator", ScopeRead|ScopeOperate, []string{"plant-1"}, time.Time{})
	soon := mustCreate(t, a, "soon", ScopeRead, nil, now.Add(time.Hour))
	revoked := mustCreate(t, a, "gone", ScopeRead, nil, time.Time{})
	revokedID := mustVerify(t, a, revoked)
	if err := a.Revoke(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	session, _, _, err := a.NewSession(ctx, mustVerify(t, a, forever), time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		from    Identity
		ttl     time.Duration
		want    Token // without ID, Name, Hash
		wantID  Identity
		wantErr error
	}{
		{
			name: "token, scopes and sites of the parent",
			from: Identity{Name: "forged", Kind: KindToken, Scopes: AllScopes, TokenID: TokenID(forever)},
			ttl:  12 * time.Hour,
			want: Token{Scopes: ScopeRead | ScopeOperate, Sites: []string{"plant-1"}, Created: now, Expires: now.Add(12 * time.Hour),
				Parent: TokenID(forever), CreatedBy: "operator", Kind: KindSession, Owner: "operator"},
			wantID: Identity{Name: "operator", Kind: KindSession, Scopes: ScopeRead | ScopeOperate, Sites: []string{"plant-1"}},
		},
		{
			name: "never outlives the parent",
			from: mustVerify(t, a, soon),
			ttl:  12 * time.Hour,
			want: Token{Scopes: ScopeRead, Created: now, Expires: now.Add(time.Hour),
				Parent: TokenID(soon), CreatedBy: "soon", Kind: KindSession, Owner: "soon"},
			wantID: Identity{Name: "soon", Kind: KindSession, Scopes: ScopeRead},
		},
		{
			name: "proxy user",
			from: Identity{Name: "alice@example.com", Kind: KindProxy, Scopes: ScopeRead, Sites: []string{"b", "a"}},
			ttl:  time.Hour,
			want: Token{Scopes: ScopeRead, Sites: []string{"a", "b"}, Created: now, Expires: now.Add(time.Hour),
				CreatedBy: "alice@example.com", Kind: KindSession, Owner: "alice@example.com"},
			wantID: Identity{Name: "alice@example.com", Kind: KindSession, Scopes: ScopeRead, Sites: []string{"a", "b"}},
		},
		{name: "revoked parent", from: revokedID, ttl: time.Hour, wantErr: ErrRevoked},
		{name: "unknown token", from: Identity{Name: "x", Kind: KindToken, TokenID: "0123456789abcdef"}, ttl: time.Hour, wantErr: ErrInvalidToken},
		{name: "session of a session", from: mustVerify(t, a, session), ttl: time.Hour, wantErr: ErrInvalidArgument},
		{name: "session by id of a session", from: Identity{Kind: KindToken, TokenID: TokenID(session)}, ttl: time.Hour, wantErr: ErrInvalidToken},
		{name: "anonymous", from: Anonymous, ttl: time.Hour, wantErr: ErrInvalidArgument},
		{name: "proxy without name", from: Identity{Kind: KindProxy, Scopes: ScopeRead}, ttl: time.Hour, wantErr: ErrInvalidArgument},
		{name: "proxy without scopes", from: Identity{Name: "bob", Kind: KindProxy}, ttl: time.Hour, wantErr: ErrInvalidArgument},
		{name: "zero ttl", from: mustVerify(t, a, forever), wantErr: ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			secret, csrf, tok, err := a.NewSession(ctx, tt.from, tt.ttl)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("NewSession() error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if !strings.HasPrefix(secret, SecretPrefix) || csrf != CSRFToken(secret) {
				t.Errorf("NewSession() = secret %q, csrf %q", secret, csrf)
			}
			tt.want.ID = TokenID(secret)
			tt.want.Name = SessionPrefix + TokenID(secret)
			if diff := cmp.Diff(tok, tt.want); diff != "" {
				t.Errorf("NewSession() token (-got +want):\n%s", diff)
			}
			tt.wantID.TokenID = TokenID(secret)
			if diff := cmp.Diff(mustVerify(t, a, secret), tt.wantID, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Verify(session) (-got +want):\n%s", diff)
			}
		})
	}

	// Sessions are not listed as tokens.
	for _, tok := range a.List() {
		if tok.Session() {
			t.Errorf("List() holds session %q", tok.Name)
		}
	}
}

func TestEndSession(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	a := newTestAuthenticator(t, &fakeStore{}, c)
	api := mustCreate(t, a, "api", ScopeRead, nil, time.Time{})
	session, _, _, err := a.NewSession(ctx, mustVerify(t, a, api), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.EndSession(ctx, api); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("EndSession(api token) error = %v, want ErrInvalidToken", err)
	}
	if err := a.EndSession(ctx, "tl_nothing"); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("EndSession(unknown) error = %v, want ErrInvalidToken", err)
	}
	for range 2 { // ending twice is fine
		if err := a.EndSession(ctx, session); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Verify(session); !errors.Is(err, ErrRevoked) {
		t.Errorf("Verify(ended session) error = %v, want ErrRevoked", err)
	}
	mustVerify(t, a, api)
}

func TestCSRF(t *testing.T) {
	const secret = "tl_session"
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("csrf"))
	want := hex.EncodeToString(m.Sum(nil))[:32]
	if got := CSRFToken(secret); got != want {
		t.Errorf("CSRFToken() = %q, want %q", got, want)
	}
	tests := []struct {
		name           string
		secret, header string
		want           bool
	}{
		{"match", secret, want, true},
		{"other session", "tl_other", want, false},
		{"empty header", secret, "", false},
		{"prefix", secret, want[:31], false},
		{"longer", secret, want + "0", false},
		{"upper case", secret, strings.ToUpper(want), want == strings.ToUpper(want)},
		{"no session", "", CSRFToken(""), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CheckCSRF(tt.secret, tt.header); got != tt.want {
				t.Errorf("CheckCSRF(%q, %q) = %v, want %v", tt.secret, tt.header, got, tt.want)
			}
		})
	}
}
