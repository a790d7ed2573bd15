package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// tryLock takes name on s in mode as holder, failing the test on an error
// other than ErrLockHeld.
func tryLock(t *testing.T, s *Store, mode LockMode, holder string) (*Lock, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := s.TryLock(ctx, "processing", mode, holder)
	if err != nil && !errors.Is(err, ErrLockHeld) {
		t.Fatalf("TryLock(%s, %s): %v", mode, holder, err)
	}
	return l, err
}

// TestLockModes: an exclusive lock excludes every other holder, shared
// locks admit each other, a refusal names the holders, and a lock is
// scoped to its schema and released by Release or the store's Close.
func TestLockModes(t *testing.T) {
	schema := newSchema(t)
	a := openTest(t, "", Options{Schema: schema})
	b := openTest(t, "", Options{Schema: schema})
	c := openTest(t, "", Options{Schema: schema})

	la, err := tryLock(t, a, LockExclusive, "replica-a")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []LockMode{LockExclusive, LockShared} {
		_, err := tryLock(t, b, mode, "replica-b")
		if !errors.Is(err, ErrLockHeld) || !strings.Contains(err.Error(), `"replica-a"`) {
			t.Errorf("%s lock while A holds it exclusively: %v, want ErrLockHeld naming replica-a", mode, err)
		}
	}
	// Another schema is another store: its lock of the same name is free.
	other := openTest(t, "", Options{})
	if _, err := tryLock(t, other, LockExclusive, "elsewhere"); err != nil {
		t.Errorf("the same lock on another schema: %v", err)
	}

	if err := la.Release(); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if _, err := tryLock(t, b, LockShared, "replica-b"); err != nil {
		t.Fatalf("shared lock once released: %v", err)
	}
	if _, err := tryLock(t, c, LockShared, "replica-c"); err != nil {
		t.Fatalf("a second shared lock: %v", err)
	}
	_, err = tryLock(t, a, LockExclusive, "replica-a")
	if !errors.Is(err, ErrLockHeld) || !strings.Contains(err.Error(), `"replica-b"`) || !strings.Contains(err.Error(), `"replica-c"`) {
		t.Errorf("exclusive lock while B and C share it: %v, want ErrLockHeld naming both", err)
	}

	// Closing the stores releases their locks.
	b.Close()
	c.Close()
	if _, err := tryLock(t, a, LockExclusive, "replica-a"); err != nil {
		t.Errorf("exclusive lock once the holders closed: %v", err)
	}
}

// TestLockRun: a lock whose connection is lost is taken again by Run when
// PostgreSQL is back; when another process took it meanwhile, Run returns
// ErrLockHeld, so the holder stops.
func TestLockRun(t *testing.T) {
	schema := newSchema(t)
	p := newProxy(t, targetAddr(t))
	a := openTest(t, proxyURL(p), Options{Schema: schema})
	b := openTest(t, "", Options{Schema: schema})
	admin := adminConn(t)

	la, err := tryLock(t, a, LockExclusive, "replica-a")
	if err != nil {
		t.Fatal(err)
	}
	la.ping, la.retry = 20*time.Millisecond, 20*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- la.Run(ctx) }()

	// held reports who PostgreSQL shows holding the lock.
	held := func() string {
		u := uint64(la.key)
		var name string
		err := admin.QueryRow(context.Background(), `SELECT coalesce(string_agg(a.application_name, ','), '') FROM pg_locks l
			JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted
			AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1`, int64(u>>32), int64(u&0xffffffff)).Scan(&name)
		if err != nil {
			t.Fatal(err)
		}
		return name
	}
	await := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 20s", what)
			}
			time.Sleep(20 * time.Millisecond) // polling PostgreSQL, an external system
		}
	}

	// Lost with its connection, and taken again once PostgreSQL is back.
	p.Cut()
	await("the lock released with its connection", func() bool { return held() == "" })
	p.Restore()
	await("the lock taken again", func() bool { return held() == "replica-a" })

	// Lost, and taken by B meanwhile: Run reports it.
	p.Cut()
	await("B takes the lock", func() bool {
		_, err := tryLock(t, b, LockExclusive, "replica-b")
		return err == nil
	})
	p.Restore()
	select {
	case err := <-done:
		if !errors.Is(err, ErrLockHeld) || !strings.Contains(err.Error(), `"replica-b"`) {
			t.Errorf("Run after B took the lock: %v, want ErrLockHeld naming replica-b", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after another process took the lock")
	}
}
