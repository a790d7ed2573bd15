package control

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// mergePatchRFC is RFC 7396 section 2's MergePatch pseudocode, written as
// plainly as it reads there: the oracle of merge.
func mergePatchRFC(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	out := map[string]any{}
	for k, v := range t {
		out[k] = v
	}
	for k, v := range p {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = mergePatchRFC(out[k], v)
		}
	}
	return out
}

// randValue is a random JSON value from a small alphabet, so that
// patches often hit existing fields and equal values.
func randValue(r *rand.Rand, depth int, patch bool) any {
	n := 6
	if depth <= 0 {
		n = 4
	}
	switch r.IntN(n) {
	case 0:
		if patch {
			return nil
		}
		return float64(r.IntN(3))
	case 1:
		return float64(r.IntN(3))
	case 2:
		return []string{"a", "b"}[r.IntN(2)]
	case 3:
		return []any{float64(r.IntN(2))}
	default:
		return randObject(r, depth-1, patch)
	}
}

func randObject(r *rand.Rand, depth int, patch bool) map[string]any {
	m := map[string]any{}
	for range r.IntN(4) {
		m[[]string{"x", "y", "z"}[r.IntN(3)]] = randValue(r, depth, patch)
	}
	return m
}

// TestMergeProperties: on random documents and patches, merge gives what
// RFC 7396 says; it reports a change exactly when the document changes;
// its field times have the document's shape, the changed leaves at the
// patch's time and the others as they were; and the delta is empty
// exactly when reported, merged with desired, stays as it is.
func TestMergeProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 5000 {
		doc := randObject(r, 3, false)
		patch := randObject(r, 3, true)
		meta := timesOf(doc, 1)
		got, times, changed := merge(doc, meta, patch, 2)
		want := mergePatchRFC(doc, patch)
		if diff := cmp.Diff(got, want); diff != "" {
			t.Fatalf("case %d: merge(%v, %v) vs RFC 7396 (-got +want):\n%s", i, doc, patch, diff)
		}
		if changed != !reflect.DeepEqual(got, doc) {
			t.Fatalf("case %d: merge(%v, %v): changed = %v", i, doc, patch, changed)
		}
		if err := sameShape(got, doc, times, meta); err != nil {
			t.Fatalf("case %d: merge(%v, %v): times %v: %v", i, doc, patch, times, err)
		}
		reported := randObject(r, 3, false)
		d := delta(got, reported)
		covered := reflect.DeepEqual(mergePatchRFC(reported, got), reported)
		if (len(d) == 0) != covered {
			t.Fatalf("case %d: delta(%v, %v) = %v, but reported covers desired: %v", i, got, reported, d, covered)
		}
	}
}

// sameShape checks that times has a leaf for each non-object field of
// doc and nests for each object; a leaf whose value is unchanged from old
// keeps its old time (1), a changed one has 2.
func sameShape(doc, old map[string]any, times, oldTimes FieldTimes) error {
	if len(times) != len(doc) {
		return fmt.Errorf("%d times for %d fields", len(times), len(doc))
	}
	for k, v := range doc {
		ft, ok := times[k]
		if !ok {
			return fmt.Errorf("no time for %q", k)
		}
		if m, isObj := v.(map[string]any); isObj {
			if ft.Fields == nil {
				return fmt.Errorf("%q: an object with a leaf time", k)
			}
			om, _ := old[k].(map[string]any)
			if err := sameShape(m, om, ft.Fields, oldTimes[k].Fields); err != nil {
				return fmt.Errorf("%q.%w", k, err)
			}
			continue
		}
		want := int64(2)
		if ov, had := old[k]; had && reflect.DeepEqual(ov, v) {
			want = oldTimes[k].UpdatedAt
		}
		if ft.Fields != nil || ft.UpdatedAt != want {
			return fmt.Errorf("%q: time %+v, want updatedAt %d", k, ft, want)
		}
	}
	return nil
}
