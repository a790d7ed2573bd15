package postgres

import (
	"context"
	"fmt"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Cache is a bounded LRU cache with single-flight loading: concurrent Gets
// of a missing key make one call of the load function and share its result.
// Invalidate drops a key, and a load that was running when the key was
// invalidated does not put its (possibly stale) value in the cache. Errors
// are not cached. It is safe for concurrent use.
//
// It serves the machine registry on the ingest hot path: the registry
// writer calls Invalidate after each write.
type Cache[K comparable, V any] struct {
	load func(context.Context, K) (V, error)

	mu    sync.Mutex
	lru   *lru.Cache[K, V]
	calls map[K]*call[V] // running loads
}

type call[V any] struct {
	done chan struct{}
	v    V
	err  error
}

// NewCache returns a cache of at most size entries filled by load.
func NewCache[K comparable, V any](size int, load func(context.Context, K) (V, error)) (*Cache[K, V], error) {
	if load == nil {
		return nil, fmt.Errorf("creating cache: nil load function")
	}
	l, err := lru.New[K, V](size)
	if err != nil {
		return nil, fmt.Errorf("creating cache of %d entries: %w", size, err)
	}
	return &Cache[K, V]{load: load, lru: l, calls: map[K]*call[V]{}}, nil
}

// Get returns the value of key, loading it on a miss. Concurrent misses of
// one key wait for the first one's load, or until their ctx ends.
func (c *Cache[K, V]) Get(ctx context.Context, key K) (V, error) {
	c.mu.Lock()
	if v, ok := c.lru.Get(key); ok {
		c.mu.Unlock()
		return v, nil
	}
	if cl, ok := c.calls[key]; ok {
		c.mu.Unlock()
		select {
		case <-cl.done:
			return cl.v, cl.err
		case <-ctx.Done():
			var zero V
			return zero, fmt.Errorf("loading cache entry: %w", ctx.Err())
		}
	}
	cl := &call[V]{done: make(chan struct{})}
	c.calls[key] = cl
	c.mu.Unlock()

	cl.v, cl.err = c.load(ctx, key)

	c.mu.Lock()
	if c.calls[key] == cl { // not invalidated meanwhile
		delete(c.calls, key)
		if cl.err == nil {
			c.lru.Add(key, cl.v)
		}
	}
	c.mu.Unlock()
	close(cl.done)
	return cl.v, cl.err
}

// Invalidate drops key; the next Get loads it again.
func (c *Cache[K, V]) Invalidate(key K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(key)
	delete(c.calls, key) // a running load's result is not cached
}

// Purge drops every entry.
func (c *Cache[K, V]) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
	clear(c.calls)
}

// Len returns the number of cached entries.
func (c *Cache[K, V]) Len() int { return c.lru.Len() }
