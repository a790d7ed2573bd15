package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/twin"
	"github.com/twinline/twinline/internal/twin/twintest"
)

func TestRegistryConformance(t *testing.T) {
	t.Parallel()
	twintest.RunRegistry(t, func(t *testing.T) func() twin.RegistryStore {
		s := openTest(t, "", Options{})
		return func() twin.RegistryStore { return newRegistry(t, s, RegistryOptions{}) }
	})
}

func TestAlarmLogConformance(t *testing.T) {
	t.Parallel()
	twintest.RunAlarmStore(t, func(t *testing.T) func() twin.AlarmStore {
		s := openTest(t, "", Options{})
		return func() twin.AlarmStore { return NewAlarmLog(s) }
	})
}

func TestNoteStoreConformance(t *testing.T) {
	t.Parallel()
	twintest.RunNoteStore(t, func(t *testing.T) func() twin.NoteStore {
		s := openTest(t, "", Options{})
		return func() twin.NoteStore { return NewNoteStore(s) }
	})
}

func newRegistry(t testing.TB, s *Store, opts RegistryOptions) *Registry {
	t.Helper()
	r, err := NewRegistry(s, opts)
	if err != nil {
		t.Fatalf("NewRegistry: %v", err)
	}
	return r
}

var regBase = time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)

func entry(id, name string, sec int) twin.Info {
	at := regBase.Add(time.Duration(sec) * time.Second)
	return twin.Info{ID: id, Name: name, CreatedAt: regBase, UpdatedAt: at}
}

func TestRegistryGetSingleFlightAndNegativeCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, "", Options{})
	r := newRegistry(t, s, RegistryOptions{CacheSize: 16})
	if err := r.Save(ctx, []twin.Info{entry("m1", "one", 1)}); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	r.testHookLookup = func() { <-gate }
	const n = 20
	var (
		wg      sync.WaitGroup
		started sync.WaitGroup
		got     = make([]twin.Info, n)
		errs    = make([]error, n)
	)
	started.Add(n)
	for i := range n {
		wg.Go(func() {
			started.Done()
			got[i], errs[i] = r.Get(ctx, "m1")
		})
	}
	started.Wait()
	close(gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || got[i].Name != "one" {
			t.Errorf("Get #%d = %+v, %v; want m1 named one", i, got[i], errs[i])
		}
	}
	if loads := r.loads.Load(); loads != 1 {
		t.Errorf("%d concurrent Gets made %d queries, want 1", n, loads)
	}
	r.testHookLookup = nil
	for range 2 {
		if _, err := r.Get(ctx, "nope"); !errors.Is(err, twin.ErrNotFound) {
			t.Errorf("Get of an unknown machine = %v, want ErrNotFound", err)
		}
	}
	if loads := r.loads.Load(); loads != 2 {
		t.Errorf("two Gets of an unknown machine made %d queries in all, want 1 more (a cached miss)", loads-1)
	}
	// A Save through this Registry invalidates what it changed, including
	// a cached miss.
	if err := r.Save(ctx, []twin.Info{entry("m1", "uno", 2), entry("nope", "now here", 2)}); err != nil {
		t.Fatal(err)
	}
	if in, err := r.Get(ctx, "m1"); err != nil || in.Name != "uno" {
		t.Errorf("Get after Save = %+v, %v; want the new name", in, err)
	}
	if in, err := r.Get(ctx, "nope"); err != nil || in.Name != "now here" {
		t.Errorf("Get of a machine registered by Save = %+v, %v", in, err)
	}
	if err := r.Save(ctx, []twin.Info{entry("nope", "now here", 2)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, "m1"); !errors.Is(err, twin.ErrNotFound) {
		t.Errorf("Get of a removed machine = %v, want ErrNotFound", err)
	}
}

// TestRegistryInvalidationAcrossReplicas: a Save through one Registry
// invalidates the cache of another on the same database, through NOTIFY.
func TestRegistryInvalidationAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := newSchema(t)
	a := newRegistry(t, openTest(t, "", Options{Schema: schema}), RegistryOptions{})
	// A tiny PingInterval: the LISTEN connection is checked between
	// notifications all along, and must survive it.
	b := newRegistry(t, openTest(t, "", Options{Schema: schema}), RegistryOptions{PingInterval: time.Millisecond})
	listening := make(chan struct{}, 16)
	notified := make(chan string, 16)
	b.testHookListening = func() { listening <- struct{}{} }
	b.testHookInvalidated = func(payload string) { notified <- payload }
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-listening

	if err := a.Save(ctx, []twin.Info{entry("m1", "one", 1), entry("m2", "two", 1)}); err != nil {
		t.Fatal(err)
	}
	<-notified
	for range 2 {
		if in, err := b.Get(ctx, "m1"); err != nil || in.Name != "one" {
			t.Fatalf("B.Get = %+v, %v", in, err)
		}
	}
	if loads := b.loads.Load(); loads != 1 {
		t.Fatalf("B made %d queries for two Gets, want 1", loads)
	}
	if err := a.Save(ctx, []twin.Info{entry("m1", "uno", 2), entry("m2", "two", 1)}); err != nil {
		t.Fatal(err)
	}
	if got := <-notified; got != `["m1"]` {
		t.Errorf("notification payload = %s, want only the changed id", got)
	}
	if in, err := b.Get(ctx, "m1"); err != nil || in.Name != "uno" {
		t.Errorf("B.Get after A's Save = %+v, %v; want the new name", in, err)
	}
	if loads := b.loads.Load(); loads != 2 {
		t.Errorf("B made %d queries, want 2", loads)
	}
	if err := a.Save(ctx, []twin.Info{entry("m2", "two", 1)}); err != nil {
		t.Fatal(err)
	}
	<-notified
	if _, err := b.Get(ctx, "m1"); !errors.Is(err, twin.ErrNotFound) {
		t.Errorf("B.Get after A removed the machine = %v, want ErrNotFound", err)
	}
	if n := len(listening); n != 0 {
		t.Errorf("Run reconnected %d times, want 0", n)
	}
}

// TestRegistryRunReconnects: after losing its LISTEN connection, Run
// reconnects, and a change made meanwhile is not served stale.
func TestRegistryRunReconnects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := newSchema(t)
	p := newProxy(t, targetAddr(t))
	a := newRegistry(t, openTest(t, "", Options{Schema: schema}), RegistryOptions{})
	b := newRegistry(t, openTest(t, proxyURL(p), Options{Schema: schema, WriteTimeout: 2 * time.Second}), RegistryOptions{RetryInterval: time.Millisecond})
	listening := make(chan struct{}, 16)
	b.testHookListening = func() { listening <- struct{}{} }
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-listening
	if err := a.Save(ctx, []twin.Info{entry("m1", "one", 1)}); err != nil {
		t.Fatal(err)
	}
	if in, err := b.Get(ctx, "m1"); err != nil || in.Name != "one" {
		t.Fatalf("B.Get = %+v, %v", in, err)
	}
	p.Cut()
	if err := a.Save(ctx, []twin.Info{entry("m1", "uno", 2)}); err != nil {
		t.Fatal(err)
	}
	p.Restore()
	<-listening // reconnected, the cache emptied
	// The pool's connections were cut too: each failed Get drops one.
	in, err := b.Get(ctx, "m1")
	for i := 0; err != nil && i < 10; i++ {
		in, err = b.Get(ctx, "m1")
	}
	if err != nil || in.Name != "uno" {
		t.Errorf("B.Get after reconnecting = %+v, %v; want the change made while cut off", in, err)
	}
}

// TestRegistryOlderEntryDoesNotOverwrite: a replica saving its older copy
// of an entry does not undo another replica's newer write of it.
func TestRegistryOlderEntryDoesNotOverwrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, "", Options{})
	a, b := newRegistry(t, s, RegistryOptions{}), newRegistry(t, s, RegistryOptions{})
	if err := a.Save(ctx, []twin.Info{entry("m1", "one", 1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, []twin.Info{entry("m1", "newest", 10)}); err != nil {
		t.Fatal(err)
	}
	// B changed its older copy (say, filled in the site) and saves it,
	// with a machine of its own.
	old := entry("m1", "one", 1)
	old.Site = "lyon"
	if err := b.Save(ctx, []twin.Info{old, entry("m2", "two", 5)}); err != nil {
		t.Fatal(err)
	}
	got, err := newRegistry(t, s, RegistryOptions{}).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []twin.Info{entry("m1", "newest", 10), entry("m2", "two", 5)}
	if diff := cmp.Diff(got, want, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("registry (-got +want):\n%s", diff)
	}
}

func TestRegistryWithAttributesAndInvalidText(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRegistry(t, openTest(t, "", Options{}), RegistryOptions{})
	acme := func(id string) twin.Info {
		in := entry(id, id, 1)
		in.Attributes = map[string]any{"vendor": "acme", "bay": float64(3)}
		return in
	}
	if err := r.Save(ctx, []twin.Info{acme("a"), entry("b", "b", 1), acme("c")}); err != nil {
		t.Fatal(err)
	}
	if err := r.Save(ctx, []twin.Info{acme("a"), entry("b", "b", 1)}); err != nil { // c retired
		t.Fatal(err)
	}
	got, err := r.WithAttributes(ctx, map[string]any{"vendor": "acme"})
	if err != nil || !cmp.Equal(got, []string{"a"}) {
		t.Errorf("WithAttributes = %v, %v; want [a]", got, err)
	}
	bad := entry("x", "nul\x00name", 1)
	if err := r.Save(ctx, []twin.Info{acme("a"), entry("b", "b", 1), bad}); !errors.Is(err, twin.ErrInvalid) {
		t.Errorf("Save of a name with NUL = %v, want ErrInvalid", err)
	}
}

// TestAlarmLogOutage: while PostgreSQL is unreachable Sync fails and the
// entries stay pending; once it is back they are stored exactly once, in
// order.
func TestAlarmLogOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newProxy(t, targetAddr(t))
	s := openTest(t, proxyURL(p), Options{WriteTimeout: 2 * time.Second})
	l := NewAlarmLog(s)
	if err := l.Replay(ctx, func(twin.AlarmEntry) error { return nil }); err != nil {
		t.Fatal(err)
	}
	raise := func(id string) twin.AlarmEntry {
		return twin.AlarmEntry{Op: twin.OpRaise, At: regBase, Alarm: twin.Alarm{ID: id, Machine: "m", Kind: twin.AlarmOffline, State: twin.AlarmActive, RaisedAt: regBase}}
	}
	var want []twin.AlarmEntry
	for _, id := range []string{"1", "2"} {
		want = append(want, raise(id))
		if err := l.Append(ctx, raise(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	for _, id := range []string{"3", "4"} {
		want = append(want, raise(id))
		if err := l.Append(ctx, raise(id)); err != nil {
			t.Fatalf("Append while cut off: %v", err)
		}
	}
	if err := l.Sync(ctx); err == nil {
		t.Fatal("Sync while cut off: no error")
	}
	p.Restore()
	if err := l.Sync(ctx); err != nil {
		t.Fatalf("Sync after the outage: %v", err)
	}
	var got []twin.AlarmEntry
	if err := NewAlarmLog(s).Replay(ctx, func(e twin.AlarmEntry) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("journal after the outage (-got +want):\n%s", diff)
	}
	var active int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM alarms WHERE state = 'active'`).Scan(&active); err != nil || active != 4 {
		t.Errorf("active alarms in the table = %d, %v; want 4", active, err)
	}
}

func TestAlarmLogRefusesWhatTheTablesCannotHold(t *testing.T) {
	t.Parallel()
	l := NewAlarmLog(openTest(t, "", Options{}))
	ok := twin.Alarm{ID: "1", Machine: "m", Kind: twin.AlarmHigh, State: twin.AlarmActive}
	for _, tt := range []struct {
		name string
		e    twin.AlarmEntry
	}{
		{"op", twin.AlarmEntry{Op: "explode", Alarm: ok}},
		{"kind", twin.AlarmEntry{Op: twin.OpRaise, Alarm: func() twin.Alarm { a := ok; a.Kind = "weird"; return a }()}},
		{"state", twin.AlarmEntry{Op: twin.OpRaise, Alarm: func() twin.Alarm { a := ok; a.State = "maybe"; return a }()}},
		{"nul", twin.AlarmEntry{Op: twin.OpAck, By: "a\x00b", Alarm: ok}},
		{"no id", twin.AlarmEntry{Op: twin.OpRaise, Alarm: func() twin.Alarm { a := ok; a.ID = ""; return a }()}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := l.Append(context.Background(), tt.e); !errors.Is(err, twin.ErrInvalid) {
				t.Errorf("Append = %v, want ErrInvalid", err)
			}
		})
	}
	if err := l.Sync(context.Background()); err != nil {
		t.Errorf("Sync after refused entries: %v", err)
	}
}

func TestNoteStoreRefusesNUL(t *testing.T) {
	t.Parallel()
	n := twin.NewNotes(NewNoteStore(openTest(t, "", Options{})), time.Now)
	if _, err := n.Add("m", "a\x00b", ""); !errors.Is(err, twin.ErrInvalid) || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("Add of a text with NUL = %v, want ErrInvalid", err)
	}
}

// BenchmarkRegistryGet measures a cache hit of Registry.Get, the ingest hot
// path's lookup.
func BenchmarkRegistryGet(b *testing.B) {
	ctx := context.Background()
	r := newRegistry(b, openTest(b, "", Options{}), RegistryOptions{})
	var all []twin.Info
	for i := range 1000 {
		all = append(all, entry(fmt.Sprintf("m-%04d", i), "x", 1))
	}
	if err := r.Save(ctx, all); err != nil {
		b.Fatal(err)
	}
	for _, in := range all {
		if _, err := r.Get(ctx, in.ID); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, err := r.Get(ctx, all[i%len(all)].ID); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkRegistrySave measures a Save of a 10 000-machine registry in
// which one entry changed (the twin registry hands Save the whole snapshot every time).
func BenchmarkRegistrySave(b *testing.B) {
	ctx := context.Background()
	r := newRegistry(b, openTest(b, "", Options{}), RegistryOptions{})
	var all []twin.Info
	for i := range 10_000 {
		in := entry(fmt.Sprintf("m-%05d", i), "x", 1)
		in.Attributes = map[string]any{"vendor": "acme", "bay": float64(i % 10)}
		all = append(all, in)
	}
	if err := r.Save(ctx, all); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		i++
		all[i%len(all)].UpdatedAt = regBase.Add(time.Duration(i) * time.Second)
		if err := r.Save(ctx, all); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAlarmLogIDsAcrossReplicas: two AlarmLogs on one schema never hand
// out one id twice, and each hands out increasing ids.
func TestAlarmLogIDsAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := newSchema(t)
	a := NewAlarmLog(openTest(t, "", Options{Schema: schema}))
	b := NewAlarmLog(openTest(t, "", Options{Schema: schema}))
	seen := map[uint64]bool{}
	last := map[*AlarmLog]uint64{}
	for i := range 3 * alarmIDBlock {
		for _, l := range []*AlarmLog{a, b} {
			id, err := l.NextAlarmID(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if seen[id] {
				t.Fatalf("id %d handed out twice (round %d)", id, i)
			}
			if id <= last[l] {
				t.Fatalf("id %d after %d from the same log", id, last[l])
			}
			seen[id], last[l] = true, id
		}
	}
}

// TestRegistryDeleteIsNotUndone: a replica still holding a machine another
// replica deleted does not bring it back when it saves — also after its
// baseline was reloaded without it — nor does an auto-registration of a
// machine another replica already stored overwrite that entry.
func TestRegistryDeleteIsNotUndone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, "", Options{})
	a, b := newRegistry(t, s, RegistryOptions{}), newRegistry(t, s, RegistryOptions{})
	if err := a.Save(ctx, []twin.Info{entry("x", "doomed", 1), entry("y", "kept", 1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, []twin.Info{entry("y", "kept", 1)}); err != nil { // deletes x
		t.Fatal(err)
	}
	if _, err := b.Load(ctx); err != nil { // b's baseline no longer has x
		t.Fatal(err)
	}
	// b's twins still hold x (as of before the delete), and b registered
	// z on its first sample, which a registered meanwhile with a name.
	if err := a.Save(ctx, []twin.Info{entry("y", "kept", 1), entry("z", "named on a", 2)}); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(ctx, []twin.Info{entry("x", "doomed", 1), entry("y", "kept", 1), {ID: "z", CreatedAt: regBase.Add(3 * time.Second), UpdatedAt: regBase.Add(3 * time.Second)}}); err != nil {
		t.Fatal(err)
	}
	got, err := newRegistry(t, s, RegistryOptions{}).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []twin.Info{entry("y", "kept", 1), entry("z", "named on a", 2)}
	if diff := cmp.Diff(got, want, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("registry (-got +want):\n%s", diff)
	}
}
