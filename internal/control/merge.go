package control

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
)

// MaxDocBytes bounds a desired or reported document, encoded; MaxDocDepth
// bounds how deep its objects and arrays nest.
const (
	MaxDocBytes = 64 << 10
	MaxDocDepth = 16
)

// decodePatch decodes a JSON merge patch (RFC 7396) that must be an
// object, nested at most MaxDocDepth levels; an error wraps ErrMalformed.
func decodePatch(patch []byte) (map[string]any, error) {
	if len(patch) > MaxDocBytes {
		return nil, fmt.Errorf("%w: the patch exceeds %d bytes", ErrMalformed, MaxDocBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(patch))
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: the patch is not JSON: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: the patch has data after its JSON value", ErrMalformed)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: the patch must be a JSON object", ErrMalformed)
	}
	if depth(m) > MaxDocDepth {
		return nil, fmt.Errorf("%w: the patch nests deeper than %d levels", ErrMalformed, MaxDocDepth)
	}
	return m, nil
}

// depth is how deep v nests: 0 for a scalar, 1 for a flat object.
func depth(v any) int {
	d := 0
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			d = max(d, depth(e))
		}
		return d + 1
	case []any:
		for _, e := range x {
			d = max(d, depth(e))
		}
		return d + 1
	}
	return 0
}

// merge applies patch to doc (RFC 7396) and the field times to meta:
// a null removes a field, an object merges into an object (replaces
// anything else), any other value replaces. A field whose value changes
// gets the time at; unchanged fields keep theirs. It returns the new
// document and times (doc and meta are not changed) and whether anything
// changed.
func merge(doc map[string]any, meta FieldTimes, patch map[string]any, at int64) (map[string]any, FieldTimes, bool) {
	out := maps.Clone(doc)
	if out == nil {
		out = map[string]any{}
	}
	times := maps.Clone(meta)
	if times == nil {
		times = FieldTimes{}
	}
	changed := false
	for k, pv := range patch {
		old, had := out[k]
		switch pv := pv.(type) {
		case nil:
			if had {
				delete(out, k)
				delete(times, k)
				changed = true
			}
		case map[string]any:
			sub, _ := old.(map[string]any)
			var subTimes FieldTimes
			if sub != nil {
				subTimes = times[k].Fields
			}
			nv, nt, ch := merge(sub, subTimes, pv, at)
			if sub == nil {
				ch = true // a new object, or an object replacing a scalar
			}
			if ch {
				out[k] = nv
				times[k] = FieldTime{Fields: nt}
				changed = true
			}
		default:
			if !had || !reflect.DeepEqual(old, pv) {
				out[k] = pv
				times[k] = FieldTime{UpdatedAt: at}
				changed = true
			}
		}
	}
	return out, times, changed
}

// delta is the part of desired that reported does not match: nested
// objects compared field by field, anything else (arrays included) as a
// whole. Nil when reported matches all of desired.
func delta(desired, reported map[string]any) map[string]any {
	var out map[string]any
	for k, dv := range desired {
		rv, ok := reported[k]
		if dm, isObj := dv.(map[string]any); isObj {
			if rm, ok := rv.(map[string]any); ok {
				if d := delta(dm, rm); d != nil {
					if out == nil {
						out = map[string]any{}
					}
					out[k] = d
				}
				continue
			}
		}
		if !ok || !reflect.DeepEqual(dv, rv) {
			if out == nil {
				out = map[string]any{}
			}
			out[k] = dv
		}
	}
	return out
}

// docSize is the encoded size of a document.
func docSize(doc map[string]any) (int, error) {
	b, err := json.Marshal(doc)
	if err != nil {
		return 0, fmt.Errorf("encoding a document: %w", err)
	}
	return len(b), nil
}
