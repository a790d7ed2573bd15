// Package twin keeps the digital twin of every machine, in two parts: the
// Registry of machine entries (name, site, line, thresholds, attributes),
// persisted by a RegistryStore, and the Live state (latest metrics, last
// seen, medians, rates), built from the samples the processor hands over
// once they are durable. A Machine is the two together, as the API shows
// it. The package also keeps the alarms (journaled to an AlarmStore, with
// their own offline watch, Alarms.Run) and the operator notes (a
// NoteStore).
//
// The stores are interfaces owned here: the files in the data directory
// (RegistryFile, AlarmFile, NoteFile) are the embedded default, and
// internal/store/postgres implements them on PostgreSQL. Every
// implementation passes the conformance suite in internal/twin/twintest.
package twin

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

var (
	// ErrNotFound reports an unknown machine or alarm.
	ErrNotFound = errors.New("not found")
	// ErrInvalid reports a registry entry that does not validate.
	ErrInvalid = errors.New("invalid machine")
)

// Status values of a twin: its liveness only. Whether it is in alarm is
// told apart, by Machine.Alarm, so a machine may be offline and in alarm.
const (
	// StatusOnline: an event arrived within --offline-after.
	StatusOnline = "online"
	// StatusOffline: none did, or none was seen since the server started.
	StatusOffline = "offline"
)

// Liveness is a machine's status after a change to al: offline while al
// is its active offline alarm, else status, the twin's own view (which
// shows it online once the event that cleared the offline alarm has
// arrived). The offline alarm and the twin judge silence by the same
// --offline-after at slightly different instants: this keeps a status
// message consistent with the alarm it follows.
func Liveness(status string, al Alarm) string {
	if al.Kind == AlarmOffline && al.State == AlarmActive {
		return StatusOffline
	}
	return status
}

// Threshold is an alarm rule for one metric.
type Threshold struct {
	High     *float64 `json:"high,omitempty"`
	Low      *float64 `json:"low,omitempty"`
	Deadband float64  `json:"deadband,omitempty"`
	// For is how long the condition must hold before the alarm is raised,
	// as a Go duration ("10s").
	For string `json:"for,omitempty"`
}

// Info is a machine's registry entry.
type Info struct {
	ID         string               `json:"id"`
	Name       string               `json:"name,omitempty"`
	Site       string               `json:"site,omitempty"`
	Line       string               `json:"line,omitempty"`
	Thresholds map[string]Threshold `json:"thresholds,omitempty"`
	Attributes map[string]any       `json:"attributes,omitempty"`
	// DesiredSchema constrains the machine's desired document (a JSON
	// Schema subset, see Schema); nil allows any document.
	DesiredSchema *Schema `json:"desiredSchema,omitempty"`
	// Commands are the commands the machine supports, by name; a command
	// not listed is refused.
	Commands map[string]CommandSpec `json:"commands,omitempty"`
	// OEE says how to compute the machine's OEE; nil: not computed.
	OEE       *OEESpec  `json:"oee,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Value is the latest value of one metric: its value and event time (Unix
// ms), and the median of its last samples in event-time order.
type Value struct {
	Value  float64  `json:"value"`
	TS     int64    `json:"ts"`
	Median *float64 `json:"median,omitempty"`
}

// StateValue is the latest value of a state series and the event time
// (Unix ms) of the event that carried it.
type StateValue struct {
	Value string `json:"value"`
	TS    int64  `json:"ts"`
}

// Machine is a twin as the API shows it: registry entry and live state
// (Live.Machine).
type Machine struct {
	Info
	// Status is the liveness: StatusOnline or StatusOffline.
	Status string `json:"status"`
	// Alarm is set when the machine has an active alarm other than the
	// offline one (see Alarms.Alarmed); Live leaves it false, the API
	// fills it in.
	Alarm bool `json:"alarm"`
	// LastSeen is the server time (Unix ms) of the machine's latest event,
	// or 0 if none was seen since the server started.
	LastSeen int64            `json:"lastSeen,omitempty"`
	Metrics  map[string]Value `json:"metrics"`
	// States are the latest values of the machine's state series (string
	// fields of its events: "state", "mode"), by name; omitted when it
	// sent none since the server started.
	States map[string]StateValue `json:"states,omitempty"`
	// Rate1m and Rate5m are events per second over the last 1 and 5
	// minutes of server time.
	Rate1m float64 `json:"rate1m"`
	Rate5m float64 `json:"rate5m"`
}

// mergePatch applies an RFC 7386 JSON merge patch to in.
func mergePatch(in Info, patch []byte) (Info, error) {
	var p any
	if err := json.Unmarshal(patch, &p); err != nil {
		return Info{}, fmt.Errorf("%w: body is not JSON: %v", ErrInvalid, err)
	}
	if _, ok := p.(map[string]any); !ok {
		return Info{}, fmt.Errorf("%w: a merge patch must be a JSON object", ErrInvalid)
	}
	cur, err := json.Marshal(in)
	if err != nil {
		return Info{}, fmt.Errorf("encoding machine: %w", err)
	}
	var doc any
	if err := json.Unmarshal(cur, &doc); err != nil {
		return Info{}, fmt.Errorf("decoding machine: %w", err)
	}
	merged, err := json.Marshal(merge(doc, p))
	if err != nil {
		return Info{}, fmt.Errorf("encoding patched machine: %w", err)
	}
	out, err := DecodeInfo(merged)
	if err != nil {
		return Info{}, err
	}
	out.CreatedAt, out.UpdatedAt = in.CreatedAt, in.UpdatedAt
	return out, out.validate()
}

func merge(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = merge(tm[k], v)
	}
	return tm
}
