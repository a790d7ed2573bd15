// Package authtest is the conformance suite of the stores behind the auth
// package: the API tokens (auth.TokenStore) and the audit log
// (auth.AuditStore). The file stores of package auth and the PostgreSQL
// stores of internal/store/postgres both run it.
//
// A backend's test calls, for example,
//
//	authtest.RunTokenStore(t, func(t *testing.T) func() auth.TokenStore {
//		path := filepath.Join(t.TempDir(), "tokens.json")
//		return func() auth.TokenStore { return auth.NewTokenFile(path) }
//	})
//
// The function passed creates new, empty storage of its own for t (a file,
// a schema) and returns an opener: each call opens a new handle on that same
// storage, as a restarted server, or another process (the CLI), would. The
// suite closes the handles it opens. Times are whole milliseconds in UTC:
// the stores may keep no more than microseconds.
//
// What the suite holds every store to, beyond the interfaces' comments:
//
//   - A token's name and id stay taken while the token is kept, revoked or
//     not: Create of either is ErrExists until Delete removed the token.
//   - Revoking a revoked token succeeds and keeps the first revocation
//     time; revoking a token revokes the sessions made from it (Parent).
//   - Touch ignores unknown ids and never moves a last-used time back.
//   - Delete(before) removes the tokens revoked, or expired, strictly
//     before before, and nothing else.
//   - An audit filter's From is inclusive, its To exclusive; Query orders
//     by time, newest first, then by id, highest first.
//   - EraseActor replaces the actor's name as Actor, and as the string
//     value of the top-level Detail keys "author" and "by"; it counts the
//     entries it changed.
package authtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/auth"
)

// base is the time the suite works around.
var base = time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return base.Add(time.Duration(sec) * time.Second) }

// emptyIsNil treats nil and empty maps and slices alike.
var emptyIsNil = cmpopts.EquateEmpty()

// RunTokenStore runs the token store conformance tests.
func RunTokenStore(t *testing.T, newStorage func(t *testing.T) func() auth.TokenStore) {
	open := func(t *testing.T) func() auth.TokenStore {
		opener := newStorage(t)
		return func() auth.TokenStore {
			s := opener()
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			return s
		}
	}
	t.Run("Empty", func(t *testing.T) { testTokensEmpty(t, open(t)) })
	t.Run("CreateLoad", func(t *testing.T) { testTokensCreateLoad(t, open(t)) })
	t.Run("Duplicates", func(t *testing.T) { testTokensDuplicates(t, open(t)) })
	t.Run("Revoke", func(t *testing.T) { testTokensRevoke(t, open(t)) })
	t.Run("Touch", func(t *testing.T) { testTokensTouch(t, open(t)) })
	t.Run("Delete", func(t *testing.T) { testTokensDelete(t, open(t)) })
	t.Run("TwoHandles", func(t *testing.T) { testTokensTwoHandles(t, open(t)) })
}

// token returns a token named name, created at sec, with an id and hash
// derived from the name.
func token(name string, sec int) auth.Token {
	h := make([]byte, 32)
	copy(h, name)
	return auth.Token{
		ID: "id-" + name, Name: name, Scopes: auth.ScopeRead | auth.ScopeIngest,
		Hash: h, Created: at(sec), CreatedBy: "admin",
	}
}

func loadTokens(t *testing.T, s auth.TokenStore) []auth.Token {
	t.Helper()
	got, err := s.Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return got
}

func create(t *testing.T, s auth.TokenStore, toks ...auth.Token) {
	t.Helper()
	for _, tok := range toks {
		if err := s.Create(context.Background(), tok); err != nil {
			t.Fatalf("Create %q: %v", tok.Name, err)
		}
	}
}

// wantTokens checks the tokens s loads, and those a new handle loads.
func wantTokens(t *testing.T, s auth.TokenStore, open func() auth.TokenStore, want ...auth.Token) {
	t.Helper()
	if diff := cmp.Diff(loadTokens(t, s), want, emptyIsNil); diff != "" {
		t.Errorf("Load (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(loadTokens(t, open()), want, emptyIsNil); diff != "" {
		t.Errorf("Load of a new handle (-got +want):\n%s", diff)
	}
}

func testTokensEmpty(t *testing.T, open func() auth.TokenStore) {
	if got := loadTokens(t, open()); len(got) != 0 {
		t.Errorf("Load of no tokens = %v, want none", got)
	}
}

func testTokensCreateLoad(t *testing.T, open func() auth.TokenStore) {
	full := auth.Token{
		ID: "tl_0123456789abcdef", Name: "Ana's ingest token — ünïcode", Scopes: auth.AllScopes,
		Sites: []string{"lyon", "östersund"}, Hash: []byte{0, 1, 2, 0xfe, 0xff},
		Created: at(1), Expires: at(86400), LastUsed: at(5), Revoked: at(6),
		Parent: "tl_parent", CreatedBy: "root", Kind: auth.KindSession, Owner: "ana",
	}
	bare := auth.Token{ID: "b", Name: "b", Scopes: auth.ScopeIngest, Hash: []byte{1}, Created: at(2)}
	s := open()
	// Load orders by name (bytewise), whatever the order of creation.
	create(t, s, token("zeta", 3), full, bare, token("Alpha", 4))
	wantTokens(t, s, open, token("Alpha", 4), full, bare, token("zeta", 3))
}

func testTokensDuplicates(t *testing.T, open func() auth.TokenStore) {
	ctx := context.Background()
	s := open()
	create(t, s, token("a", 1), token("b", 2))
	if err := s.Revoke(ctx, "b", at(3)); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	sameID := token("c", 4)
	sameID.ID = "id-a"
	for _, tt := range []struct {
		name string
		tok  auth.Token
	}{
		{"name taken", func() auth.Token { x := token("a", 4); x.ID = "other"; return x }()},
		{"id taken", sameID},
		{"name of a revoked token", func() auth.Token { x := token("b", 4); x.ID = "other"; return x }()},
		{"id of a revoked token", func() auth.Token { x := token("d", 4); x.ID = "id-b"; return x }()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Create(ctx, tt.tok); !errors.Is(err, auth.ErrExists) {
				t.Errorf("Create = %v, want ErrExists", err)
			}
			if err := open().Create(ctx, tt.tok); !errors.Is(err, auth.ErrExists) {
				t.Errorf("Create through a new handle = %v, want ErrExists", err)
			}
		})
	}
	b := token("b", 2)
	b.Revoked = at(3)
	wantTokens(t, s, open, token("a", 1), b)
	// Once deleted, the name and id are free again.
	if err := s.Delete(ctx, at(4)); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	create(t, s, token("b", 5))
	wantTokens(t, s, open, token("a", 1), token("b", 5))
}

func testTokensRevoke(t *testing.T, open func() auth.TokenStore) {
	ctx := context.Background()
	s := open()
	parent, other := token("parent", 1), token("other", 1)
	session := token("session-1", 2)
	session.Parent = parent.ID
	gone := token("session-2", 2)
	gone.Parent, gone.Revoked = parent.ID, at(3)
	create(t, s, parent, other, session, gone)
	if err := s.Revoke(ctx, "nobody", at(4)); !errors.Is(err, auth.ErrNotFound) {
		t.Errorf("Revoke of an unknown token = %v, want ErrNotFound", err)
	}
	if err := s.Revoke(ctx, "parent", at(5)); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	// Again, later: the first time stays.
	if err := open().Revoke(ctx, "parent", at(6)); err != nil {
		t.Fatalf("Revoke again: %v", err)
	}
	parent.Revoked, session.Revoked = at(5), at(5)
	wantTokens(t, s, open, other, parent, session, gone)
}

func testTokensTouch(t *testing.T, open func() auth.TokenStore) {
	ctx := context.Background()
	s := open()
	a, b, c := token("a", 1), token("b", 1), token("c", 1)
	c.LastUsed = at(50)
	create(t, s, a, b, c)
	if err := s.Touch(ctx, map[string]time.Time{a.ID: at(10), c.ID: at(20), "unknown": at(30)}); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	a.LastUsed = at(10)
	wantTokens(t, s, open, a, b, c)
	if err := open().Touch(ctx, map[string]time.Time{a.ID: at(11), b.ID: at(12)}); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	if err := s.Touch(ctx, nil); err != nil {
		t.Fatalf("Touch of nothing: %v", err)
	}
	a.LastUsed, b.LastUsed = at(11), at(12)
	wantTokens(t, s, open, a, b, c)
}

func testTokensDelete(t *testing.T, open func() auth.TokenStore) {
	ctx := context.Background()
	s := open()
	keep := token("keep", 1)
	expiresLater := token("expires-later", 1)
	expiresLater.Expires = at(200)
	expiresAtCut := token("expires-at-cut", 1)
	expiresAtCut.Expires = at(100)
	expired := token("expired", 1)
	expired.Expires = at(50)
	revokedLater := token("revoked-later", 1)
	revokedEarly := token("revoked-early", 1)
	parent := token("parent", 1)
	session := token("session", 2)
	session.Parent, session.Expires = parent.ID, at(500)
	create(t, s, keep, expiresLater, expiresAtCut, expired, revokedLater, revokedEarly, parent, session)
	for name, sec := range map[string]int{"revoked-later": 150, "revoked-early": 20, "parent": 30} {
		if err := s.Revoke(ctx, name, at(sec)); err != nil {
			t.Fatalf("Revoke %s: %v", name, err)
		}
	}
	revokedLater.Revoked = at(150)
	if err := s.Delete(ctx, at(100)); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantTokens(t, s, open, expiresAtCut, expiresLater, keep, revokedLater)
	if err := open().Delete(ctx, at(1000)); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantTokens(t, s, open, keep)
}

// testTokensTwoHandles: two handles on one storage (a server and the CLI)
// writing in turn lose none of each other's writes.
func testTokensTwoHandles(t *testing.T, open func() auth.TokenStore) {
	ctx := context.Background()
	a, b := open(), open()
	var want []auth.Token
	for i := range 10 {
		s := a
		if i%2 == 1 {
			s = b
		}
		tok := token(fmt.Sprintf("t%02d", i), i)
		create(t, s, tok)
		want = append(want, tok)
	}
	if err := b.Revoke(ctx, "t00", at(100)); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	want[0].Revoked = at(100)
	if err := a.Touch(ctx, map[string]time.Time{want[1].ID: at(101)}); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	want[1].LastUsed = at(101)
	wantTokens(t, a, open, want...)
	wantTokens(t, b, open, want...)
}

// RunAuditStore runs the audit log conformance tests.
func RunAuditStore(t *testing.T, newStorage func(t *testing.T) func() auth.AuditStore) {
	open := func(t *testing.T) func() auth.AuditStore {
		opener := newStorage(t)
		return func() auth.AuditStore {
			s := opener()
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			return s
		}
	}
	t.Run("Empty", func(t *testing.T) { testAuditEmpty(t, open(t)) })
	t.Run("AppendQuery", func(t *testing.T) { testAuditAppendQuery(t, open(t)) })
	t.Run("Filters", func(t *testing.T) { testAuditFilters(t, open(t)) })
	t.Run("Reopen", func(t *testing.T) { testAuditReopen(t, open(t)) })
	t.Run("DeleteBefore", func(t *testing.T) { testAuditDeleteBefore(t, open(t)) })
	t.Run("EraseActor", func(t *testing.T) { testAuditEraseActor(t, open(t)) })
}

func appendAudit(t *testing.T, s auth.AuditStore, es ...auth.AuditEntry) []auth.AuditEntry {
	t.Helper()
	var out []auth.AuditEntry
	for _, e := range es {
		got, err := s.Append(context.Background(), e)
		if err != nil {
			t.Fatalf("Append %s: %v", e.Action, err)
		}
		if got.ID == 0 {
			t.Errorf("Append %s: id 0, want one assigned", e.Action)
		}
		if len(out) > 0 && got.ID <= out[len(out)-1].ID {
			t.Errorf("Append %s: id %d not above the previous %d", e.Action, got.ID, out[len(out)-1].ID)
		}
		e.ID = got.ID
		if diff := cmp.Diff(got, e, emptyIsNil); diff != "" {
			t.Errorf("Append returned (-got +want):\n%s", diff)
		}
		out = append(out, got)
	}
	return out
}

func query(t *testing.T, s auth.AuditStore, f auth.AuditFilter) []auth.AuditEntry {
	t.Helper()
	got, err := s.Query(context.Background(), f)
	if err != nil {
		t.Fatalf("Query(%+v): %v", f, err)
	}
	return got
}

// newestFirst returns es reversed.
func newestFirst(es ...auth.AuditEntry) []auth.AuditEntry {
	out := make([]auth.AuditEntry, len(es))
	for i, e := range es {
		out[len(es)-1-i] = e
	}
	return out
}

func entry(sec int, actor, action, machine string) auth.AuditEntry {
	return auth.AuditEntry{At: at(sec), Actor: actor, ActorKind: auth.KindToken, Action: action,
		Machine: machine, Remote: "192.0.2.1", Outcome: "ok"}
}

func testAuditEmpty(t *testing.T, open func() auth.AuditStore) {
	if got := query(t, open(), auth.AuditFilter{}); len(got) != 0 {
		t.Errorf("Query of an empty log = %v, want none", got)
	}
}

func testAuditAppendQuery(t *testing.T, open func() auth.AuditStore) {
	s := open()
	full := auth.AuditEntry{
		At: at(1), Actor: "Zoë", ActorKind: auth.KindProxy, Action: "machine.put", Machine: "press-07",
		Target: "registry", Remote: "[2001:db8::1]:443", Outcome: "error: boom — ünïcode",
		Detail: map[string]any{
			"before": map[string]any{"name": "Press", "site": nil}, "after": "x", "len": float64(12),
			"ok": true, "tags": []any{"a", float64(1)},
		},
	}
	bare := auth.AuditEntry{At: at(2), Action: "alarm.ack", Outcome: "denied"}
	got := appendAudit(t, s, full, bare, entry(3, "ana", "note.add", "oven-01"))
	if diff := cmp.Diff(query(t, s, auth.AuditFilter{}), newestFirst(got...), emptyIsNil); diff != "" {
		t.Errorf("Query (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(query(t, open(), auth.AuditFilter{}), newestFirst(got...), emptyIsNil); diff != "" {
		t.Errorf("Query of a new handle (-got +want):\n%s", diff)
	}
}

func testAuditFilters(t *testing.T, open func() auth.AuditStore) {
	s := open()
	es := appendAudit(t, s,
		entry(10, "ana", "machine.put", "press-07"),
		entry(20, "bo", "alarm.ack", "press-07"),
		entry(30, "ana", "alarm.ack", "oven-01"),
		entry(40, "ana", "token.create", ""),
		entry(40, "bo", "note.add", "oven-01"),       // same time: the higher id first
		entry(5, "bo", "machine.delete", "press-07"), // appended late, older
	)
	for _, tt := range []struct {
		name string
		f    auth.AuditFilter
		want []auth.AuditEntry
	}{
		{"all", auth.AuditFilter{}, []auth.AuditEntry{es[4], es[3], es[2], es[1], es[0], es[5]}},
		{"from inclusive", auth.AuditFilter{From: at(30)}, []auth.AuditEntry{es[4], es[3], es[2]}},
		{"to exclusive", auth.AuditFilter{To: at(20)}, []auth.AuditEntry{es[0], es[5]}},
		{"range", auth.AuditFilter{From: at(10), To: at(40)}, []auth.AuditEntry{es[2], es[1], es[0]}},
		{"actor", auth.AuditFilter{Actor: "bo"}, []auth.AuditEntry{es[4], es[1], es[5]}},
		{"machine", auth.AuditFilter{Machine: "oven-01"}, []auth.AuditEntry{es[4], es[2]}},
		{"action", auth.AuditFilter{Action: "alarm.ack"}, []auth.AuditEntry{es[2], es[1]}},
		{"actor and machine", auth.AuditFilter{Actor: "ana", Machine: "press-07"}, []auth.AuditEntry{es[0]}},
		{"limit", auth.AuditFilter{Limit: 2}, []auth.AuditEntry{es[4], es[3]}},
		{"limit and filter", auth.AuditFilter{Actor: "bo", Limit: 2}, []auth.AuditEntry{es[4], es[1]}},
		{"nothing", auth.AuditFilter{Actor: "nobody"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(query(t, s, tt.f), tt.want, emptyIsNil); diff != "" {
				t.Errorf("Query (-got +want):\n%s", diff)
			}
		})
	}
}

func testAuditReopen(t *testing.T, open func() auth.AuditStore) {
	s := open()
	first := appendAudit(t, s, entry(1, "ana", "a", ""), entry(2, "ana", "b", ""))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = open()
	more := appendAudit(t, s, entry(3, "bo", "c", ""))
	if more[0].ID <= first[1].ID {
		t.Errorf("id after reopen %d, want above %d", more[0].ID, first[1].ID)
	}
	// Another handle appends in between.
	other := appendAudit(t, open(), entry(4, "cy", "d", ""))
	last := appendAudit(t, s, entry(5, "bo", "e", ""))
	if other[0].ID <= more[0].ID || last[0].ID <= other[0].ID {
		t.Errorf("ids %d, %d, %d across two handles, want increasing", more[0].ID, other[0].ID, last[0].ID)
	}
	want := newestFirst(first[0], first[1], more[0], other[0], last[0])
	if diff := cmp.Diff(query(t, open(), auth.AuditFilter{}), want, emptyIsNil); diff != "" {
		t.Errorf("Query (-got +want):\n%s", diff)
	}
}

func testAuditDeleteBefore(t *testing.T, open func() auth.AuditStore) {
	ctx := context.Background()
	s := open()
	es := appendAudit(t, s, entry(10, "a", "x", ""), entry(20, "a", "x", ""), entry(30, "a", "x", ""))
	n, err := s.DeleteBefore(ctx, at(20))
	if err != nil || n != 1 {
		t.Fatalf("DeleteBefore = %d, %v; want 1 entry", n, err)
	}
	if diff := cmp.Diff(query(t, open(), auth.AuditFilter{}), newestFirst(es[1:]...), emptyIsNil); diff != "" {
		t.Errorf("Query after DeleteBefore (-got +want):\n%s", diff)
	}
	if n, err := s.DeleteBefore(ctx, at(100)); err != nil || n != 2 {
		t.Fatalf("DeleteBefore = %d, %v; want 2 entries", n, err)
	}
	// Ids never go back, even once every entry is gone.
	more := appendAudit(t, s, entry(40, "a", "x", ""))
	if more[0].ID <= es[2].ID {
		t.Errorf("id after deleting everything %d, want above %d", more[0].ID, es[2].ID)
	}
	if diff := cmp.Diff(query(t, open(), auth.AuditFilter{}), more, emptyIsNil); diff != "" {
		t.Errorf("Query (-got +want):\n%s", diff)
	}
}

func testAuditEraseActor(t *testing.T, open func() auth.AuditStore) {
	ctx := context.Background()
	s := open()
	byAna := entry(1, "ana", "note.add", "press-07")
	byAna.Detail = map[string]any{"author": "ana", "len": float64(3)}
	aboutAna := entry(2, "bo", "alarm.ack", "press-07")
	aboutAna.Detail = map[string]any{"by": "ana", "note": "ana said so"}
	otherAuthor := entry(3, "bo", "note.add", "oven-01")
	otherAuthor.Detail = map[string]any{"author": "bo", "by": float64(7)}
	plain := entry(4, "ana", "machine.put", "")
	anna := entry(5, "anna", "machine.put", "")
	es := appendAudit(t, s, byAna, aboutAna, otherAuthor, plain, anna)
	n, err := s.EraseActor(ctx, "ana", "user-1f3a")
	if err != nil || n != 3 {
		t.Fatalf("EraseActor = %d, %v; want 3 entries", n, err)
	}
	es[0].Actor, es[0].Detail["author"] = "user-1f3a", "user-1f3a"
	es[1].Detail["by"] = "user-1f3a" // the note text stays as written
	es[3].Actor = "user-1f3a"
	if diff := cmp.Diff(query(t, open(), auth.AuditFilter{}), newestFirst(es...), emptyIsNil); diff != "" {
		t.Errorf("Query after EraseActor (-got +want):\n%s", diff)
	}
	if got := query(t, s, auth.AuditFilter{Actor: "ana"}); len(got) != 0 {
		t.Errorf("Query by the erased name = %v, want none", got)
	}
	if n, err := s.EraseActor(ctx, "ana", "user-1f3a"); err != nil || n != 0 {
		t.Errorf("EraseActor again = %d, %v; want 0", n, err)
	}
}
