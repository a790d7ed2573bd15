package auth_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/auth/authtest"
)

func TestTokenFileConformance(t *testing.T) {
	t.Parallel()
	authtest.RunTokenStore(t, func(t *testing.T) func() auth.TokenStore {
		path := filepath.Join(t.TempDir(), "data", "tokens.json")
		return func() auth.TokenStore { return auth.NewTokenFile(path) }
	})
}

func TestAuditFileConformance(t *testing.T) {
	t.Parallel()
	authtest.RunAuditStore(t, func(t *testing.T) func() auth.AuditStore {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		return func() auth.AuditStore { return auth.NewAuditFile(path) }
	})
}

func tok(name string) auth.Token {
	return auth.Token{ID: "id-" + name, Name: name, Scopes: auth.ScopeRead, Hash: []byte(name),
		Created: time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)}
}

// TestTokenFileModes: the token file and its directory are private.
func TestTokenFileModes(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "tokens.json")
	if err := auth.NewTokenFile(path).Create(context.Background(), tok("a")); err != nil {
		t.Fatalf("Create: %v", err)
	}
	for _, tt := range []struct {
		path string
		want os.FileMode
	}{
		{dir, 0o700 | os.ModeDir},
		{path, 0o600},
		{path + ".lock", 0o600},
	} {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode() &^ 0o7000; got != tt.want {
			t.Errorf("mode of %s = %v, want %v", tt.path, fi.Mode(), tt.want)
		}
	}
}

// TestTokenFileConcurrentHandles: handles of their own (processes, as far
// as the flock goes) creating tokens at once lose none.
func TestTokenFileConcurrentHandles(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			s := auth.NewTokenFile(path)
			for i := range 10 {
				if err := s.Create(context.Background(), tok(fmt.Sprintf("w%d-%02d", w, i))); err != nil {
					t.Errorf("Create: %v", err)
				}
			}
		})
	}
	wg.Wait()
	got, err := auth.NewTokenFile(path).Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(got) != 40 {
		t.Errorf("Load = %d tokens, want 40", len(got))
	}
}

// TestTokenFileOnChange: Run hears the changes of another process within
// one poll interval, and not its own.
func TestTokenFileOnChange(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		path := filepath.Join(t.TempDir(), "tokens.json")
		server, cli := auth.NewTokenFile(path), auth.NewTokenFile(path)
		server.PollInterval = 2 * time.Second
		changed := make(chan time.Time, 10)
		server.OnChange(func() { changed <- time.Now() })
		if _, err := server.Load(ctx); err != nil {
			t.Fatalf("Load: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- server.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()

		// Its own writes are not a change.
		if err := server.Create(ctx, tok("own")); err != nil {
			t.Fatalf("Create: %v", err)
		}
		select {
		case at := <-changed:
			t.Fatalf("OnChange called at %v after the server's own write", at)
		case <-time.After(10 * time.Second):
		}

		for _, tt := range []struct {
			name   string
			change func() error
		}{
			{"create", func() error { return cli.Create(ctx, tok("cli")) }},
			{"revoke", func() error { return cli.Revoke(ctx, "own", time.Now()) }},
			{"touch", func() error { return cli.Touch(ctx, map[string]time.Time{"id-cli": time.Now()}) }},
			{"delete", func() error { return cli.Delete(ctx, time.Now().Add(time.Hour)) }},
		} {
			start := time.Now()
			if err := tt.change(); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			at := <-changed
			if d := at.Sub(start); d > server.PollInterval {
				t.Errorf("%s heard after %v, want within the poll interval %v", tt.name, d, server.PollInterval)
			}
		}
		synctest.Wait()
		if n := len(changed); n != 0 {
			t.Errorf("%d more OnChange calls, want none", n)
		}
		got, err := server.Load(ctx)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if len(got) != 1 || got[0].Name != "cli" || got[0].LastUsed.IsZero() {
			t.Errorf("Load = %+v, want only the token cli, used", got)
		}
	})
}

// TestAuditFileTornLine: a torn last line is skipped, then cut off by the
// next Append.
func TestAuditFileTornLine(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a := auth.NewAuditFile(path)
	e := auth.AuditEntry{At: time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC), Actor: "ana", Action: "x", Outcome: "ok"}
	first, err := a.Append(ctx, e)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"id":2,"at":"2025-06-01T00:00:01Z","act`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := auth.NewAuditFile(path).Query(ctx, auth.AuditFilter{})
	if err != nil {
		t.Fatalf("Query with a torn last line: %v", err)
	}
	if diff := cmp.Diff(got, []auth.AuditEntry{first}); diff != "" {
		t.Errorf("Query (-got +want):\n%s", diff)
	}
	second, err := auth.NewAuditFile(path).Append(ctx, e)
	if err != nil {
		t.Fatalf("Append after a torn line: %v", err)
	}
	got, err = a.Query(ctx, auth.AuditFilter{})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if diff := cmp.Diff(got, []auth.AuditEntry{second, first}); diff != "" {
		t.Errorf("Query after Append (-got +want):\n%s", diff)
	}
	if second.ID != 2 {
		t.Errorf("id after the torn line = %d, want 2", second.ID)
	}
}
