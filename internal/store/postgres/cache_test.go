package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
)

func TestCacheSingleFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var loads atomic.Int32
		release := make(chan struct{})
		c, err := NewCache(16, func(_ context.Context, k string) (string, error) {
			loads.Add(1)
			<-release
			return "v-" + k, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		const n = 50
		got := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				v, err := c.Get(context.Background(), "m1")
				if err != nil {
					t.Errorf("Get: %v", err)
				}
				got[i] = v
			})
		}
		synctest.Wait() // every goroutine is blocked: one in load, the others waiting
		close(release)
		wg.Wait()
		if got, want := loads.Load(), int32(1); got != want {
			t.Errorf("loads = %d, want %d", got, want)
		}
		for i, v := range got {
			if v != "v-m1" {
				t.Errorf("Get #%d = %q, want %q", i, v, "v-m1")
			}
		}
		if _, err := c.Get(context.Background(), "m1"); err != nil || loads.Load() != 1 {
			t.Errorf("a hit loaded again: loads = %d, err = %v", loads.Load(), err)
		}
	})
}

func TestCacheInvalidate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var version atomic.Int32
		var loads atomic.Int32
		gate := make(chan struct{}, 1)
		gate <- struct{}{}
		c, err := NewCache(16, func(_ context.Context, k string) (string, error) {
			loads.Add(1)
			v := version.Load() // read before blocking: a stale read
			<-gate
			return fmt.Sprintf("%s@%d", k, v), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if v, _ := c.Get(ctx, "m"); v != "m@0" {
			t.Fatalf("Get = %q, want m@0", v)
		}
		version.Store(1)
		if v, _ := c.Get(ctx, "m"); v != "m@0" {
			t.Fatalf("Get before Invalidate = %q, want the cached m@0", v)
		}
		c.Invalidate("m")
		gate <- struct{}{}
		if v, _ := c.Get(ctx, "m"); v != "m@1" {
			t.Fatalf("Get after Invalidate = %q, want m@1", v)
		}

		// An invalidation during a load: the load's stale value is returned
		// to its caller but not cached.
		c.Invalidate("m")
		done := make(chan string)
		go func() {
			v, _ := c.Get(ctx, "m")
			done <- v
		}()
		synctest.Wait() // the load read version 1 and waits on gate
		version.Store(2)
		c.Invalidate("m")
		gate <- struct{}{}
		if v := <-done; v != "m@1" {
			t.Fatalf("Get racing Invalidate = %q, want m@1", v)
		}
		gate <- struct{}{}
		if v, _ := c.Get(ctx, "m"); v != "m@2" {
			t.Errorf("Get after racing Invalidate = %q, want m@2 (the stale value was cached)", v)
		}
		if got, want := loads.Load(), int32(4); got != want {
			t.Errorf("loads = %d, want %d", got, want)
		}
	})
}

func TestCacheErrorsNotCached(t *testing.T) {
	fail := errors.New("db down")
	var calls int
	c, err := NewCache(2, func(_ context.Context, k int) (int, error) {
		calls++
		if calls == 1 {
			return 0, fail
		}
		return k * 10, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(context.Background(), 1); !errors.Is(err, fail) {
		t.Fatalf("Get = %v, want %v", err, fail)
	}
	if v, err := c.Get(context.Background(), 1); err != nil || v != 10 {
		t.Fatalf("Get after error = %d, %v; want 10", v, err)
	}
	// Bounded: a third key evicts the least recently used.
	for _, k := range []int{2, 3} {
		if _, err := c.Get(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.Len(); got != 2 {
		t.Errorf("Len = %d, want 2", got)
	}
}

func TestCacheWaiterContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		c, _ := NewCache(4, func(_ context.Context, k string) (string, error) {
			<-release
			return k, nil
		})
		go c.Get(context.Background(), "k")
		synctest.Wait()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
			t.Errorf("waiting Get with canceled ctx = %v, want context.Canceled", err)
		}
		close(release)
	})
}
