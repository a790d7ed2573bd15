package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/auth/authtest"
)

func TestTokenStoreConformance(t *testing.T) {
	t.Parallel()
	authtest.RunTokenStore(t, func(t *testing.T) func() auth.TokenStore {
		s := openTest(t, "", Options{})
		return func() auth.TokenStore { return NewTokenStore(s, TokenStoreOptions{}) }
	})
}

func TestAuditStoreConformance(t *testing.T) {
	t.Parallel()
	authtest.RunAuditStore(t, func(t *testing.T) func() auth.AuditStore {
		s := openTest(t, "", Options{})
		return func() auth.AuditStore { return NewAuditStore(s) }
	})
}

// runTokens runs s.Run until the end of t, and returns once it listens.
func runTokens(t *testing.T, s *TokenStore) {
	t.Helper()
	listening := make(chan struct{}, 16)
	s.testHookListening = func() { listening <- struct{}{} }
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-listening
}

// TestTokenStoreRevokeAcrossReplicas: a revocation through one TokenStore
// reaches the OnChange functions of another on the schema within 2 s, and
// a TokenStore does not hear its own changes.
func TestTokenStoreRevokeAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := newSchema(t)
	a := NewTokenStore(openTest(t, "", Options{Schema: schema}), TokenStoreOptions{})
	b := NewTokenStore(openTest(t, "", Options{Schema: schema}), TokenStoreOptions{PingInterval: time.Millisecond})
	heardA, heardB := make(chan struct{}, 16), make(chan struct{}, 16)
	a.OnChange(func() { heardA <- struct{}{} })
	b.OnChange(func() { heardB <- struct{}{} })
	runTokens(t, a)
	runTokens(t, b)
	<-heardA // LISTEN took effect
	<-heardB

	wait := func(t *testing.T, ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s not heard within 2 s", what)
		}
	}
	tok := auth.Token{ID: "id-1", Name: "ana", Scopes: auth.ScopeRead, Hash: []byte{1}, Created: testNow}
	if err := a.Create(ctx, tok); err != nil {
		t.Fatalf("Create: %v", err)
	}
	wait(t, heardB, "A's Create by B")
	if err := a.Revoke(ctx, "ana", testNow); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	wait(t, heardB, "A's Revoke by B")
	got, err := b.Load(ctx)
	if err != nil || len(got) != 1 || !got[0].Revoked.Equal(testNow) {
		t.Errorf("B.Load after A's Revoke = %+v, %v; want ana revoked", got, err)
	}
	if err := b.Delete(ctx, testNow.Add(time.Hour)); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wait(t, heardA, "B's Delete by A")
	if n := len(heardA); n != 0 {
		t.Errorf("A heard %d more changes (its own?), want none", n)
	}
}
