package twin

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMergeAttributes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	reg, err := OpenRegistryFile(path, clock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// An operator's attribute stays beside the tags.
	if _, _, err := reg.Put("truck_1", Info{Attributes: map[string]any{"owner": "ops"}}); err != nil {
		t.Fatal(err)
	}
	before, changed, err := reg.MergeAttributes("truck_1", map[string]string{"fleet": "South", "driver": "Trish"})
	if err != nil || !changed || before != nil {
		t.Fatalf("first tags: before %v, changed %v, err %v", before, changed, err)
	}
	// The same tags again change nothing.
	if before, changed, err := reg.MergeAttributes("truck_1", map[string]string{"driver": "Trish"}); err != nil || changed || before != nil {
		t.Fatalf("same tags: before %v, changed %v, err %v", before, changed, err)
	}
	// A tag that changes: latest wins, the previous value is returned.
	now = now.Add(time.Hour)
	before, changed, err = reg.MergeAttributes("truck_1", map[string]string{"fleet": "South", "driver": "Albert"})
	if err != nil || !changed || len(before) != 1 || before["driver"] != "Trish" {
		t.Fatalf("changed tag: before %v, changed %v, err %v", before, changed, err)
	}
	in, _ := reg.Get("truck_1")
	want := map[string]any{"owner": "ops", "fleet": "South", "driver": "Albert"}
	if len(in.Attributes) != len(want) {
		t.Fatalf("attributes %v, want %v", in.Attributes, want)
	}
	for k, v := range want {
		if in.Attributes[k] != v {
			t.Fatalf("attributes %v, want %v", in.Attributes, want)
		}
	}
	if !in.UpdatedAt.Equal(now) {
		t.Errorf("updatedAt %v, want %v", in.UpdatedAt, now)
	}
	// An unknown machine is registered with its tags.
	if _, changed, err := reg.MergeAttributes("truck_2", map[string]string{"fleet": "North"}); err != nil || !changed {
		t.Fatalf("unknown machine: changed %v, err %v", changed, err)
	}
	// Too large: refused, nothing changed.
	if _, _, err := reg.MergeAttributes("truck_2", map[string]string{"big": strings.Repeat("x", maxAttributeBytes)}); err == nil {
		t.Fatal("oversized attributes accepted")
	}
	// Flush persists the changes: a reopened registry has them.
	if err := reg.Flush(); err != nil {
		t.Fatal(err)
	}
	again, err := OpenRegistryFile(path, clock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t1, _ := again.Get("truck_1")
	t2, err := again.Get("truck_2")
	if err != nil || t1.Attributes["driver"] != "Albert" || t2.Attributes["fleet"] != "North" || t2.Attributes["big"] != nil {
		t.Fatalf("reopened: truck_1 %v, truck_2 %v (%v)", t1.Attributes, t2.Attributes, err)
	}
}

// TestMergeTagsKeyCap: tags add keys only while the machine has fewer than
// MaxTagAttributes attributes (an operator's count); beyond, new keys are
// ignored and counted, and keys the machine has still change.
func TestMergeTagsKeyCap(t *testing.T) {
	reg, err := OpenRegistryFile(filepath.Join(t.TempDir(), "registry.json"), time.Now, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := reg.Put("m", Info{Attributes: map[string]any{"owner": "ops"}}); err != nil {
		t.Fatal(err)
	}
	tags := map[string]string{}
	for i := range MaxTagAttributes + 5 {
		tags[fmt.Sprintf("k%02d", i)] = "v"
	}
	res, err := reg.MergeTags("m", tags)
	if err != nil || !res.Changed || res.Ignored != 6 {
		t.Fatalf("over the cap: %+v, %v", res, err)
	}
	in, _ := reg.Get("m")
	if len(in.Attributes) != MaxTagAttributes || in.Attributes["owner"] != "ops" || in.Attributes["k00"] != "v" || in.Attributes["k31"] != nil {
		t.Fatalf("attributes %v", in.Attributes)
	}
	// New keys keep being ignored, without a change; known keys change.
	res, err = reg.MergeTags("m", map[string]string{"fresh": "1", "k00": "w"})
	if err != nil || !res.Changed || res.Ignored != 1 || res.Before["k00"] != "v" {
		t.Fatalf("at the cap: %+v, %v", res, err)
	}
	res, err = reg.MergeTags("m", map[string]string{"fresh": "2", "k00": "w"})
	if err != nil || res.Changed || res.Ignored != 1 {
		t.Fatalf("at the cap, nothing new: %+v, %v", res, err)
	}
	if in, _ := reg.Get("m"); len(in.Attributes) != MaxTagAttributes || in.Attributes["fresh"] != nil {
		t.Fatalf("attributes %v", in.Attributes)
	}
}
