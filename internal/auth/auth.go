// Package auth is twinline's identity model: API tokens with scopes and
// sites, the identities every protocol (HTTP, line protocol, MQTT, the live
// stream) derives from them, single-use stream tickets, dashboard sessions
// and the audit log of what identities did.
//
// A token is a random 256-bit secret shown once at creation and stored only
// as its SHA-256 hash; checking one is a map lookup by its public id plus a
// constant-time comparison of hashes, cached in memory so that it costs
// microseconds on the ingest hot path. Tokens and the audit log live where
// the machine registry lives: files in the data directory, or PostgreSQL
// (internal/store/postgres), shared by every replica.
package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Scope is one permission a token grants.
type Scope uint8

// The scopes, from least to most powerful. They do not imply each other:
// an admin token that should also read has both.
const (
	// ScopeIngest writes events: HTTP JSON, line protocol, MQTT publish.
	ScopeIngest Scope = 1 << iota
	// ScopeRead reads: queries, the fleet, alarms, notes, the live stream.
	ScopeRead
	// ScopeOperate acts on machines: acknowledges alarms, writes notes,
	// sends commands.
	ScopeOperate
	// ScopeAdmin manages: registry writes and deletes, tokens, the audit
	// log.
	ScopeAdmin
)

// AllScopes is every scope.
const AllScopes = ScopeIngest | ScopeRead | ScopeOperate | ScopeAdmin

var scopeNames = []struct {
	s    Scope
	name string
}{{ScopeIngest, "ingest"}, {ScopeRead, "read"}, {ScopeOperate, "operate"}, {ScopeAdmin, "admin"}}

// ParseScopes parses a comma-separated list of scope names ("ingest,read").
func ParseScopes(s string) (Scope, error) {
	var out Scope
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		found := false
		for _, sn := range scopeNames {
			if sn.name == part {
				out |= sn.s
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown scope %q: want ingest, read, operate or admin", part)
		}
	}
	if out == 0 {
		return 0, errors.New("no scope given: want one or more of ingest, read, operate, admin")
	}
	return out, nil
}

// Names returns the scope names of s, in the order ingest, read, operate,
// admin.
func (s Scope) Names() []string {
	names := []string{}
	for _, sn := range scopeNames {
		if s&sn.s != 0 {
			names = append(names, sn.name)
		}
	}
	return names
}

// String returns the comma-separated names of s.
func (s Scope) String() string { return strings.Join(s.Names(), ",") }

// Has reports whether s grants every scope of want.
func (s Scope) Has(want Scope) bool { return s&want == want }

// MarshalText implements encoding.TextMarshaler ("ingest,read").
func (s Scope) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Scope) UnmarshalText(b []byte) error {
	v, err := ParseScopes(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Kind says how an identity was established.
type Kind string

// The kinds of identity.
const (
	// KindAnonymous is nobody: auth is off, or the request came from an
	// open loopback listener without tokens.
	KindAnonymous Kind = "anonymous"
	// KindToken is an API token (Bearer, Influx Token, basic auth, MQTT
	// password).
	KindToken Kind = "token"
	// KindSession is a dashboard session made from a token.
	KindSession Kind = "session"
	// KindProxy is a user named by a trusted authenticating proxy
	// (--auth-header).
	KindProxy Kind = "proxy"
	// KindCertificate is a device's TLS client certificate (mTLS).
	KindCertificate Kind = "certificate"
)

// Identity is who a request, connection or message acts as, once verified.
type Identity struct {
	// Name is the token's name, the proxy user or the certificate's
	// subject: what the audit log records.
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	// Scopes are what the identity may do.
	Scopes Scope `json:"scopes"`
	// Sites, when not empty, are the only sites whose machines the
	// identity sees and touches.
	Sites []string `json:"sites,omitempty"`
	// Machine, when not empty, is the only machine the identity may write
	// for (a device certificate).
	Machine string `json:"machine,omitempty"`
	// TokenID is the public id of the token behind the identity (also of
	// a session's token), for rate limits and revocation; "" otherwise.
	TokenID string `json:"-"`
}

// Anonymous is the identity of a request when auth is off, or on an open
// loopback listener: every scope, every site.
var Anonymous = Identity{Name: "anonymous", Kind: KindAnonymous, Scopes: AllScopes}

// Can reports whether the identity has scope.
func (id Identity) Can(scope Scope) bool { return id.Scopes.Has(scope) }

// Restricted reports whether the identity is limited to some sites.
func (id Identity) Restricted() bool { return len(id.Sites) > 0 }

// SeesSite reports whether a machine of site is visible to the identity:
// always when the identity is not limited to sites; otherwise only when
// site is one of its sites (a machine without a site is visible only to
// unrestricted identities).
func (id Identity) SeesSite(site string) bool {
	return !id.Restricted() || site != "" && slices.Contains(id.Sites, site)
}

// Key returns what rate limits and quotas count the identity by.
func (id Identity) Key() string {
	switch {
	case id.TokenID != "":
		return "token:" + id.TokenID
	case id.Kind == KindAnonymous:
		return ""
	default:
		return string(id.Kind) + ":" + id.Name
	}
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity ctx carries, and whether it carries
// one.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// Errors of token checking. Every one of them is answered 401 without
// saying which: a caller cannot tell a revoked token from a made-up one.
var (
	// ErrNoCredentials: the request carries no token.
	ErrNoCredentials = errors.New("no credentials")
	// ErrInvalidToken: malformed, unknown, or the wrong secret.
	ErrInvalidToken = errors.New("invalid token")
	// ErrExpired: the token's expiry has passed.
	ErrExpired = errors.New("token expired")
	// ErrRevoked: the token was revoked.
	ErrRevoked = errors.New("token revoked")
)

// ErrNotFound is returned by stores for a token name that does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned by TokenStore.Create for a name already taken.
var ErrExists = errors.New("already exists")

// Token is a stored API token: everything but its secret, of which only the
// hash is kept.
type Token struct {
	// ID is the token's public part, unique, part of the token string.
	ID string `json:"id"`
	// Name is unique among tokens, chosen by whoever created it.
	Name   string   `json:"name"`
	Scopes Scope    `json:"scopes"`
	Sites  []string `json:"sites,omitempty"`
	// Hash is the SHA-256 of the token's secret part.
	Hash []byte `json:"hash"`
	// Created, Expires (zero: never), LastUsed (zero: never) and Revoked
	// (zero: not revoked).
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires,omitzero"`
	LastUsed time.Time `json:"lastUsed,omitzero"`
	Revoked  time.Time `json:"revoked,omitzero"`
	// Parent, for a dashboard session, is the ID of the token it was made
	// from: revoking the parent ends its sessions.
	Parent string `json:"parent,omitempty"`
	// CreatedBy names the identity that created the token.
	CreatedBy string `json:"createdBy,omitempty"`
	// Kind is "" for an API token and KindSession for a dashboard
	// session: a session made from a token also has Parent, one made for
	// a proxy user (KindProxy) has none.
	Kind Kind `json:"kind,omitempty"`
	// Owner, when not empty, is the name the token's identity acts as:
	// a session's Name is "session:<id>", unique in the store, and its
	// Owner the parent token's name or the proxy user.
	Owner string `json:"owner,omitempty"`
}

// Session reports whether t is a dashboard session: it has a Parent, or
// the kind or the name ("session:…", which no API token can have) of one.
func (t Token) Session() bool {
	return t.Parent != "" || t.Kind == KindSession || strings.HasPrefix(t.Name, "session:")
}

// Identity returns the identity a request authenticated by t acts as.
func (t Token) Identity() Identity {
	kind := KindToken
	if t.Session() {
		kind = KindSession
	}
	name := t.Name
	if t.Owner != "" {
		name = t.Owner
	}
	return Identity{Name: name, Kind: kind, Scopes: t.Scopes, Sites: t.Sites, TokenID: t.ID}
}

// TokenStore persists tokens. The file implementation is the embedded
// default; internal/store/postgres has the PostgreSQL one, shared by every
// replica. The conformance suite is internal/auth/authtest.
type TokenStore interface {
	// Create stores a new token; ErrExists if its name or id is taken by
	// a kept token, revoked or not (Delete frees them).
	Create(ctx context.Context, t Token) error
	// Load returns every token, revoked ones included, ordered by name.
	Load(ctx context.Context) ([]Token, error)
	// Revoke marks the token named name revoked at at (and so the
	// sessions made from it); ErrNotFound if there is none.
	Revoke(ctx context.Context, name string, at time.Time) error
	// Touch records last-used times, best effort (by token id).
	Touch(ctx context.Context, used map[string]time.Time) error
	// Delete removes tokens revoked or expired before before (session
	// tokens and revoked tokens are kept until then, for the audit).
	Delete(ctx context.Context, before time.Time) error
	// OnChange registers fn, called (on any goroutine) after another
	// process changed the tokens; stores that only this process writes
	// may never call it.
	OnChange(fn func())
	Close() error
}

// AuditEntry is one recorded operate or admin action.
type AuditEntry struct {
	// ID is assigned by the store, increasing.
	ID uint64    `json:"id"`
	At time.Time `json:"at"`
	// Actor is the identity's name, ActorKind its kind.
	Actor     string `json:"actor"`
	ActorKind Kind   `json:"actorKind"`
	// Action names what was done: "machine.put", "machine.delete",
	// "alarm.ack", "note.add", "token.create", "token.revoke",
	// "privacy.erase", …
	Action string `json:"action"`
	// Machine is the machine acted on, if any; Target any other object
	// (an alarm id, a token name).
	Machine string `json:"machine,omitempty"`
	Target  string `json:"target,omitempty"`
	// Remote is the client address (after --trusted-proxies).
	Remote string `json:"remote,omitempty"`
	// Outcome is "ok", or "denied", or "error: …".
	Outcome string `json:"outcome"`
	// Detail holds what changed (before/after, the note text's length…),
	// never a secret.
	Detail map[string]any `json:"detail,omitempty"`
}

// AuditFilter selects audit entries; zero fields select all.
type AuditFilter struct {
	From, To time.Time
	Actor    string
	Machine  string
	Action   string
	// Limit bounds the answer (newest first); 0 means the store's default.
	Limit int
}

// AuditStore persists the audit log. The file implementation is the
// embedded default; internal/store/postgres has the PostgreSQL one.
type AuditStore interface {
	// Append stores e durably, assigning its ID.
	Append(ctx context.Context, e AuditEntry) (AuditEntry, error)
	// Query returns the entries f selects, newest first.
	Query(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
	// DeleteBefore removes entries older than t (retention).
	DeleteBefore(ctx context.Context, t time.Time) (int, error)
	// EraseActor replaces actor's name with a pseudonym in every entry
	// (GDPR erasure), returning how many changed.
	EraseActor(ctx context.Context, actor, pseudonym string) (int, error)
	Close() error
}
