package control

import (
	"encoding/json"
	"fmt"
	"maps"
)

// ChangeKind says what changed in a Change.
type ChangeKind string

// The kinds of Change.
const (
	ChangeDesired  ChangeKind = "desired"
	ChangeReported ChangeKind = "reported"
	ChangeDeleted  ChangeKind = "deleted"
)

// Twin is a machine's pair of documents: what the plant wants (Desired,
// written by operators) and what the machine says it has (Reported,
// written by the device), the part of Desired that Reported does not match
// yet (Delta), each document's version (+1 on every change; 0: never set)
// and when each field last changed (Metadata).
type Twin struct {
	Machine         string         `json:"machine"`
	Desired         map[string]any `json:"desired"`
	Reported        map[string]any `json:"reported"`
	Delta           map[string]any `json:"delta"`
	Version         uint64         `json:"version"`
	ReportedVersion uint64         `json:"reportedVersion"`
	Metadata        Metadata       `json:"metadata"`
}

// Metadata holds when each field of the documents last changed.
type Metadata struct {
	Desired  FieldTimes `json:"desired"`
	Reported FieldTimes `json:"reported"`
}

// FieldTimes maps a document's fields to when they last changed.
type FieldTimes map[string]FieldTime

// FieldTime is when a field last changed (UpdatedAt, Unix ms) or, for an
// object, its fields' times (Fields non-nil; UpdatedAt 0: an object's age
// is its newest field's). In JSON a leaf is {"updatedAt":N} and an object
// is the object of its fields' times.
type FieldTime struct {
	UpdatedAt int64
	Fields    FieldTimes
}

// MarshalJSON encodes a leaf as {"updatedAt":N}, an object as its fields.
func (f FieldTime) MarshalJSON() ([]byte, error) {
	if f.Fields != nil {
		return json.Marshal(map[string]FieldTime(f.Fields))
	}
	return json.Marshal(struct {
		UpdatedAt int64 `json:"updatedAt"`
	}{f.UpdatedAt})
}

// UnmarshalJSON decodes what MarshalJSON encodes: an object whose only
// key is "updatedAt" with a number is a leaf (a document field named
// updatedAt nests an object, never a number).
func (f *FieldTime) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("decoding field times: %w", err)
	}
	if v, ok := raw["updatedAt"]; ok && len(raw) == 1 {
		var n int64
		if err := json.Unmarshal(v, &n); err == nil {
			*f = FieldTime{UpdatedAt: n}
			return nil
		}
	}
	fields := make(FieldTimes, len(raw))
	for k, v := range raw {
		var ft FieldTime
		if err := json.Unmarshal(v, &ft); err != nil {
			return err
		}
		fields[k] = ft
	}
	*f = FieldTime{Fields: fields}
	return nil
}

// withDelta returns t with empty documents as {} and its Delta computed.
func (t Twin) withDelta() Twin {
	if t.Desired == nil {
		t.Desired = map[string]any{}
	}
	if t.Reported == nil {
		t.Reported = map[string]any{}
	}
	if t.Metadata.Desired == nil {
		t.Metadata.Desired = FieldTimes{}
	}
	if t.Metadata.Reported == nil {
		t.Metadata.Reported = FieldTimes{}
	}
	t.Delta = delta(t.Desired, t.Reported)
	if t.Delta == nil {
		t.Delta = map[string]any{}
	}
	return t
}

// clone returns a copy of t whose top-level maps a caller may change.
// Nested values are shared: documents are never changed in place.
func (t Twin) clone() Twin {
	t.Desired = maps.Clone(t.Desired)
	t.Reported = maps.Clone(t.Reported)
	t.Delta = maps.Clone(t.Delta)
	t.Metadata.Desired = maps.Clone(t.Metadata.Desired)
	t.Metadata.Reported = maps.Clone(t.Metadata.Reported)
	return t
}

// Change is a twin change, told to Subscribe's functions: a document
// written (Twin is the new twin), or the twin deleted (Twin has only its
// Machine). By is who wrote it. Remote marks a change another replica
// made (followed through a shared store): a fan-out that already crosses
// replicas (the hub over Redis) publishes only the others.
type Change struct {
	Machine string
	Kind    ChangeKind
	Twin    Twin
	By      string
	Remote  bool
}
