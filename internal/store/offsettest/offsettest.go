// Package offsettest is the conformance suite of the stores that keep a
// log consumer's offsets next to its samples (store/postgres, and Memory,
// the in-memory one tests and measurements use): Run checks the fence, the
// first commit, concurrent commits, reading the offsets, and that samples
// and offset commit together or not at all. Only tests import it.
package offsettest

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// Store is what the suite checks: the methods an offset-keeping log
// consumer (eventlog/kafka's) uses.
type Store interface {
	// AppendWithOffsets stores samples and moves the stored offset of c
	// from c.Expected to c.Next in one transaction, or stores nothing and
	// returns an error wrapping store.ErrFenced. fresh (nil, or as long as
	// samples) reports which samples it stored (see store.FreshAppender).
	AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, fresh []bool, c store.OffsetCommit) error
	// Offsets returns the stored offsets of a group's partitions of topic.
	Offsets(ctx context.Context, group, topic string) (map[int32]int64, error)
}

// Base is the time of the suite's samples: 2025-11-30T06:00:00Z.
const Base = int64(1764482400000)

// Run runs the suite; newStore returns an empty store, released at the end
// of its t.
func Run(t *testing.T, newStore func(t *testing.T) Store) {
	t.Run("FirstCommit", func(t *testing.T) { t.Parallel(); testFirstCommit(t, newStore(t)) })
	t.Run("Fence", func(t *testing.T) { t.Parallel(); testFence(t, newStore(t)) })
	t.Run("FencedStoresNothing", func(t *testing.T) { t.Parallel(); testFencedStoresNothing(t, newStore(t)) })
	t.Run("Fresh", func(t *testing.T) { t.Parallel(); testFresh(t, newStore(t)) })
	t.Run("Concurrent", func(t *testing.T) { t.Parallel(); testConcurrent(t, newStore(t)) })
	t.Run("Offsets", func(t *testing.T) { t.Parallel(); testOffsets(t, newStore(t)) })
}

func commit(group, topic string, partition int32, next, expected int64) store.OffsetCommit {
	return store.OffsetCommit{Group: group, Topic: topic, Partition: partition, Next: next, Expected: expected}
}

// samples returns n samples of machine m, one per second from Base+from.
func samples(m string, from int64, n int) []telemetry.Sample {
	out := make([]telemetry.Sample, n)
	for i := range out {
		out[i] = telemetry.Sample{Machine: m, Metric: "v", Time: Base + (from+int64(i))*1000, Value: float64(i)}
	}
	return out
}

func offsets(t *testing.T, s Store, group, topic string) map[int32]int64 {
	t.Helper()
	offs, err := s.Offsets(context.Background(), group, topic)
	if err != nil {
		t.Fatalf("Offsets: %v", err)
	}
	return offs
}

func allFresh(fresh []bool) bool {
	for _, f := range fresh {
		if !f {
			return false
		}
	}
	return true
}

// testFirstCommit: with no stored offset a commit must expect -1; the
// first one stores it, a second "first" commit is fenced.
func testFirstCommit(t *testing.T, s Store) {
	ctx := context.Background()
	if got := offsets(t, s, "g", "t"); len(got) != 0 {
		t.Fatalf("offsets of an empty store = %v, want none", got)
	}
	if err := s.AppendWithOffsets(ctx, samples("m", 0, 2), nil, commit("g", "t", 0, 5, 3)); !errors.Is(err, store.ErrFenced) {
		t.Errorf("first commit expecting 3 = %v, want ErrFenced", err)
	}
	if err := s.AppendWithOffsets(ctx, samples("m", 0, 2), nil, commit("g", "t", 0, 5, -1)); err != nil {
		t.Fatalf("first commit expecting -1: %v", err)
	}
	if err := s.AppendWithOffsets(ctx, samples("m", 2, 2), nil, commit("g", "t", 0, 7, -1)); !errors.Is(err, store.ErrFenced) {
		t.Errorf("second first commit = %v, want ErrFenced", err)
	}
	if diff := cmp.Diff(offsets(t, s, "g", "t"), map[int32]int64{0: 5}); diff != "" {
		t.Errorf("offsets (-got +want):\n%s", diff)
	}
}

// testFence walks a partition through commits that expect the stored
// offset, and commits that expect a stale one.
func testFence(t *testing.T, s Store) {
	ctx := context.Background()
	steps := []struct {
		name     string
		next     int64
		expected int64
		fenced   bool
	}{
		{"first commit", 5, -1, false},
		{"stale expected", 7, 3, true},
		{"expected", 9, 5, false},
		{"replayed range", 9, 5, true},
		{"no records (offset only)", 9, 9, false},
		{"next", 12, 9, false},
	}
	for i, step := range steps {
		err := s.AppendWithOffsets(ctx, samples("m", int64(i), 1), nil, commit("g", "t", 0, step.next, step.expected))
		if got := errors.Is(err, store.ErrFenced); got != step.fenced || (!step.fenced && err != nil) {
			t.Fatalf("%s: AppendWithOffsets error = %v, want fenced %v", step.name, err, step.fenced)
		}
	}
	if diff := cmp.Diff(offsets(t, s, "g", "t"), map[int32]int64{0: 12}); diff != "" {
		t.Errorf("offsets (-got +want):\n%s", diff)
	}
	if err := s.AppendWithOffsets(ctx, nil, nil, commit("g", "t", 0, 13, 12)); err != nil {
		t.Errorf("commit without samples: %v", err)
	}
}

// testFencedStoresNothing: a fenced commit stores none of its samples (a
// later commit of the same samples finds each of them new), and a commit
// stores all of its samples (a later one finds none new).
func testFencedStoresNothing(t *testing.T, s Store) {
	ctx := context.Background()
	if err := s.AppendWithOffsets(ctx, nil, nil, commit("g", "t", 0, 10, -1)); err != nil {
		t.Fatal(err)
	}
	batch := samples("m", 0, 50)
	fresh := make([]bool, len(batch))
	if err := s.AppendWithOffsets(ctx, batch, fresh, commit("g", "t", 0, 20, 4)); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("stale commit = %v, want ErrFenced", err)
	}
	if err := s.AppendWithOffsets(ctx, batch, fresh, commit("g", "t", 0, 20, 10)); err != nil {
		t.Fatal(err)
	}
	if !allFresh(fresh) {
		t.Errorf("after a fenced commit, the same samples were not all new: fresh %v (the fenced commit stored some)", fresh)
	}
	if err := s.AppendWithOffsets(ctx, batch, fresh, commit("g", "t", 0, 30, 20)); err != nil {
		t.Fatal(err)
	}
	for i, f := range fresh {
		if f {
			t.Fatalf("sample %d of a committed batch stored again", i)
		}
	}
}

// testFresh: the fresh flags report exactly the samples a commit stored:
// not those stored before, nor a repeat within the batch.
func testFresh(t *testing.T, s Store) {
	ctx := context.Background()
	first := samples("m", 0, 3)
	if err := s.AppendWithOffsets(ctx, first, make([]bool, 3), commit("g", "t", 0, 1, -1)); err != nil {
		t.Fatal(err)
	}
	batch := []telemetry.Sample{first[1], samples("m", 10, 1)[0], samples("m", 10, 1)[0], samples("n", 0, 1)[0]}
	fresh := make([]bool, len(batch))
	if err := s.AppendWithOffsets(ctx, batch, fresh, commit("g", "t", 0, 2, 1)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fresh, []bool{false, true, false, true}); diff != "" {
		t.Errorf("fresh (-got +want):\n%s", diff)
	}
}

// testConcurrent commits from several consumers that all read the same
// offset: exactly one wins, the others are fenced, and the winner's
// samples are stored once.
func testConcurrent(t *testing.T, s Store) {
	ctx := context.Background()
	if err := s.AppendWithOffsets(ctx, nil, nil, commit("g", "t", 3, 10, -1)); err != nil {
		t.Fatal(err)
	}
	batch := samples("m", 0, 200)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = s.AppendWithOffsets(ctx, batch, nil, commit("g", "t", 3, int64(20+i), 10)) })
	}
	wg.Wait()
	won := -1
	for i, err := range errs {
		switch {
		case err == nil && won >= 0:
			t.Errorf("commits %d and %d both won", won, i)
		case err == nil:
			won = i
		case !errors.Is(err, store.ErrFenced):
			t.Errorf("commit %d: %v, want nil or ErrFenced", i, err)
		}
	}
	if won < 0 {
		t.Fatalf("no commit won: %v", errs)
	}
	if diff := cmp.Diff(offsets(t, s, "g", "t"), map[int32]int64{3: int64(20 + won)}); diff != "" {
		t.Errorf("offsets (-got +want):\n%s", diff)
	}
	fresh := make([]bool, len(batch))
	if err := s.AppendWithOffsets(ctx, batch, fresh, commit("g", "t", 3, 40, int64(20+won))); err != nil {
		t.Fatal(err)
	}
	for i, f := range fresh {
		if f {
			t.Fatalf("sample %d of the winning commit was not stored", i)
		}
	}
}

// testOffsets: offsets are kept per group, topic and partition.
func testOffsets(t *testing.T, s Store) {
	ctx := context.Background()
	for _, c := range []store.OffsetCommit{
		commit("g", "t", 0, 4, -1),
		commit("g", "t", 1, 7, -1),
		commit("g", "t", 0, 9, 4),
		commit("g", "other", 0, 100, -1),
		commit("other", "t", 2, 200, -1),
	} {
		if err := s.AppendWithOffsets(ctx, nil, nil, c); err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
	}
	if diff := cmp.Diff(offsets(t, s, "g", "t"), map[int32]int64{0: 9, 1: 7}); diff != "" {
		t.Errorf("offsets of g/t (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(offsets(t, s, "other", "t"), map[int32]int64{2: 200}); diff != "" {
		t.Errorf("offsets of other/t (-got +want):\n%s", diff)
	}
	if got := offsets(t, s, "g", "none"); len(got) != 0 {
		t.Errorf("offsets of a topic never committed = %v, want none", got)
	}
}
