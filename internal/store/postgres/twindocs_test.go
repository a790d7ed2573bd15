package postgres

import (
	"context"
	"strconv"
	"testing"
	"time"

	ctl "github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/control/controltest"
)

func TestTwinDocsConformance(t *testing.T) {
	controltest.RunTwinStore(t, func(t *testing.T) (ctl.TwinStore, func() ctl.TwinStore) {
		s := openTest(t, "", Options{})
		schema := s.schema
		return NewTwinDocs(s), func() ctl.TwinStore {
			// Another replica: a store of its own on the same schema.
			return NewTwinDocs(openTest(t, "", Options{Schema: schema}))
		}
	})
}

// TestTwinDocsReplicas: a change made through one replica's Twins reaches
// the other replica's subscribers and long-polls.
func TestTwinDocsReplicas(t *testing.T) {
	a := openTest(t, "", Options{})
	b := openTest(t, "", Options{Schema: a.schema})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ta := ctl.NewTwins(NewTwinDocs(a), nil, time.Now, testLogger(t))
	tb := ctl.NewTwins(NewTwinDocs(b), nil, time.Now, testLogger(t))
	seen := make(chan ctl.Change, 16)
	tb.Subscribe(func(c ctl.Change) { seen <- c })
	ownSeen := make(chan ctl.Change, 16)
	ta.Subscribe(func(c ctl.Change) { ownSeen <- c })
	done := make(chan error, 2)
	go func() { done <- ta.Run(ctx) }()
	go func() { done <- tb.Run(ctx) }()

	// LISTEN takes effect asynchronously: patch until b hears of it.
	deadline := time.After(10 * time.Second)
	for i := 0; ; i++ {
		if _, err := ta.PatchDesired(ctx, "m", []byte(`{"v":`+strconv.Itoa(i)+`}`), nil, "alice"); err != nil {
			t.Fatal(err)
		}
		select {
		case c := <-seen:
			if c.Kind != ctl.ChangeDesired || !c.Remote || c.By != "alice" || c.Twin.Version == 0 || c.Twin.Desired["v"] == nil {
				t.Errorf("change seen by the other replica = %+v", c)
			}
			goto heard
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatal("the other replica heard nothing within 10 s")
		}
	}
heard:
	cur, err := tb.Get(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan ctl.Twin, 1)
	go func() {
		tw, _ := tb.Wait(ctx, "m", cur.Version)
		waited <- tw
	}()
	// The writer's own subscribers are told once per change, not again
	// by its notification.
	for len(ownSeen) > 0 {
		<-ownSeen
	}
	if _, err := ta.PatchDesired(ctx, "m", []byte(`{"v":"last"}`), nil, "alice"); err != nil {
		t.Fatal(err)
	}
	select {
	case tw := <-waited:
		if tw.Version != cur.Version+1 {
			t.Errorf("long-poll on the other replica: version %d, want %d", tw.Version, cur.Version+1)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long-poll on the other replica was not answered within 10 s")
	}
	if n := len(ownSeen); n != 1 {
		t.Errorf("the writing replica told its subscribers %d times, want 1", n)
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// TestTwinDocsReady: Ready is an error until Watch LISTENs; from then on
// the first change another replica makes is heard, and once Watch ends
// Ready is an error again.
func TestTwinDocsReady(t *testing.T) {
	a := openTest(t, "", Options{})
	b := NewTwinDocs(openTest(t, "", Options{Schema: a.schema}))
	if b.Ready() == nil {
		t.Fatal("Ready before Watch = nil, want an error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heard := make(chan ctl.Notice, 1)
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(ctx, func(n ctl.Notice) {
			select {
			case heard <- n:
			default:
			}
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for b.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("Ready within 10 s of Watch: %v", b.Ready())
		}
		time.Sleep(5 * time.Millisecond) // polling a state, not ordering events
	}
	ta := ctl.NewTwins(NewTwinDocs(a), nil, time.Now, testLogger(t))
	if _, err := ta.PatchDesired(ctx, "m", []byte(`{"v":1}`), nil, "alice"); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-heard:
		if n.Machine != "m" || n.Kind != ctl.ChangeDesired {
			t.Errorf("notice = %+v, want a desired change of m", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first change after Ready was not heard within 10 s")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch: %v", err)
	}
	if b.Ready() == nil {
		t.Error("Ready after Watch ended = nil, want an error")
	}
}
