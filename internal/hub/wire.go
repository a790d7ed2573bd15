package hub

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/twinline/twinline/internal/jsonenc"
)

// The stream's messages as Go types: the schema of every message the hub
// sends, one struct per type. The hub encodes them by hand (message.go,
// bodies.go, fleet.go: no reflection on the publish path); these types
// describe that encoding field for field (TestAppendersMatchTypes decodes
// every appender's output into its type, unknown fields refused), decode
// what other replicas publish (remote.go), and are checked against the
// AsyncAPI document served at /api/asyncapi.json (internal/api), from which
// the dashboard's TypeScript types are generated (web/src/lib/wire.ts).

// MessageType is the "type" of a stream message.
type MessageType string

// The stream's message types.
const (
	// TypeHello opens every stream (HelloMessage).
	TypeHello MessageType = "hello"
	// TypeHeartbeat is sent every heartbeat interval (HeartbeatMessage).
	TypeHeartbeat MessageType = "heartbeat"
	// TypeReset tells the client to reload what it shows (ResetMessage).
	TypeReset MessageType = "reset"
	// TypeReconnect is the last message before the hub closes a stream
	// (ReconnectMessage).
	TypeReconnect MessageType = "reconnect"
	// TypeSamples carries one machine's samples of one publish
	// (SamplesMessage).
	TypeSamples MessageType = "samples"
	// TypeWindows carries one machine's window aggregates of one publish
	// (WindowsMessage).
	TypeWindows MessageType = "windows"
	// TypeMedian carries one machine's sliding medians of one publish
	// (MedianMessage).
	TypeMedian MessageType = "median"
	// TypeStatus is a machine's status change (StatusMessage).
	TypeStatus MessageType = "status"
	// TypeAlarm is an alarm raised, cleared or acknowledged (AlarmMessage).
	TypeAlarm MessageType = "alarm"
	// TypeNote is an operator's note (NoteMessage).
	TypeNote MessageType = "note"
	// TypeTwin is a machine's twin documents changed or deleted
	// (TwinMessage).
	TypeTwin MessageType = "twin"
	// TypeCommand is a command created or moved along its lifecycle
	// (CommandMessage).
	TypeCommand MessageType = "command"
	// TypeFleet is a conflated fleet stream's periodic summary
	// (FleetMessage).
	TypeFleet MessageType = "fleet"
	// TypeState is a change of one of a machine's state series
	// (StateMessage).
	TypeState MessageType = "state"
)

// absorbed reports whether a conflated stream takes messages of type t
// through its fleet state rather than as they are.
func (t MessageType) absorbed() bool {
	return t == TypeSamples || t == TypeStatus || t == TypeWindows || t == TypeMedian
}

// Float is a number on the stream: a value JSON cannot carry (NaN, ±Inf)
// is sent as null, and null is read back as NaN.
type Float float64

// MarshalJSON encodes f as the hub's encoder does.
func (f Float) MarshalJSON() ([]byte, error) { return jsonenc.AppendFloat(nil, float64(f)), nil }

// UnmarshalJSON decodes a number, or null as NaN.
func (f *Float) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = Float(math.NaN())
		return nil
	}
	var v float64
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("decoding a stream number: %w", err)
	}
	*f = Float(v)
	return nil
}

// HelloMessage opens every stream: the hub's latest seq, the heartbeat
// interval, the bounds of the client's queue, and for a conflated stream
// its interval.
type HelloMessage struct {
	Type        MessageType `json:"type"`
	Seq         uint64      `json:"seq"`
	HeartbeatMs int64       `json:"heartbeatMs"`
	Queue       int64       `json:"queue"`
	QueueBytes  int64       `json:"queueBytes"`
	MaxLagMs    int64       `json:"maxLagMs"`
	ConflateMs  int64       `json:"conflateMs,omitempty"`
}

// HeartbeatMessage is sent every heartbeat interval: the server time (Unix
// ms) and the hub's latest seq, a valid resume cursor.
type HeartbeatMessage struct {
	Type MessageType `json:"type"`
	TS   int64       `json:"ts"`
	Seq  uint64      `json:"seq"`
}

// ResetMessage tells the client that the hub cannot replay what it missed:
// it reloads what it shows from the query API. Reasons: cursor_expired,
// cursor_unknown, conflated, fanout_gap.
type ResetMessage struct {
	Type   MessageType `json:"type"`
	Reason string      `json:"reason"`
	Seq    uint64      `json:"seq"`
}

// ReconnectMessage is the last message before the hub closes a stream:
// why, the cursor to resume from and how long to wait first. Reasons:
// slow_client, shutdown, write_error.
type ReconnectMessage struct {
	Type    MessageType `json:"type"`
	Reason  string      `json:"reason"`
	Cursor  uint64      `json:"cursor"`
	RetryMs int64       `json:"retryMs"`
}

// SamplesMessage is one machine's samples of one publish; IngestTs is the
// server's ingest time (Unix ms). Traceparent, on the samples of a traced
// batch, is the W3C traceparent of the server span that published them,
// for the client's own span to continue the trace (absent otherwise).
type SamplesMessage struct {
	Seq         uint64       `json:"seq"`
	Type        MessageType  `json:"type"`
	Machine     string       `json:"machine"`
	IngestTs    int64        `json:"ingestTs"`
	Traceparent string       `json:"traceparent,omitempty"`
	Samples     []SampleData `json:"samples"`
}

// SampleData is one sample of a SamplesMessage: metric, event time (Unix
// ms) and value.
type SampleData struct {
	Metric string `json:"metric"`
	TS     int64  `json:"ts"`
	Value  Float  `json:"value"`
}

// WindowsMessage is one machine's window aggregates of one publish.
type WindowsMessage struct {
	Seq     uint64      `json:"seq"`
	Type    MessageType `json:"type"`
	Machine string      `json:"machine"`
	Windows []Window    `json:"windows"`
}

// MedianMessage is one machine's sliding medians of one publish.
type MedianMessage struct {
	Seq     uint64      `json:"seq"`
	Type    MessageType `json:"type"`
	Machine string      `json:"machine"`
	Data    MedianData  `json:"data"`
}

// MedianData is the data of a MedianMessage: the medians by metric.
type MedianData struct {
	Metrics map[string]MedianValue `json:"metrics"`
}

// MedianValue is one metric's median and the event time (Unix ms) of the
// newest sample it covers.
type MedianValue struct {
	Median Float `json:"median"`
	T      int64 `json:"t"`
}

// StatusMessage is a machine's status change.
type StatusMessage struct {
	Seq     uint64      `json:"seq"`
	Type    MessageType `json:"type"`
	Machine string      `json:"machine"`
	Data    StatusData  `json:"data"`
}

// StatusData is the data of a StatusMessage: the machine's status, whether
// it has an active alarm, and when it was last seen (Unix ms, absent if
// unknown).
type StatusData struct {
	Status   string `json:"status"`
	Alarm    bool   `json:"alarm"`
	LastSeen int64  `json:"lastSeen,omitempty"`
}

// AlarmMessage is an alarm raised, cleared or acknowledged.
type AlarmMessage struct {
	Seq     uint64      `json:"seq"`
	Type    MessageType `json:"type"`
	Machine string      `json:"machine"`
	Data    Alarm       `json:"data"`
}

// Alarm is an alarm as the stream carries it. Its fields are those of
// twin.Alarm, in the same order and of the same types, so that either
// converts to the other (a change to one that the other lacks does not
// compile), and their JSON names are the same (TestAsyncAPIMatchesGo).
type Alarm struct {
	ID        string     `json:"id"`
	Machine   string     `json:"machine"`
	Metric    string     `json:"metric,omitempty"`
	Kind      string     `json:"kind"`
	Limit     *float64   `json:"limit,omitempty"`
	Value     *float64   `json:"value,omitempty"`
	State     string     `json:"state"`
	RaisedAt  time.Time  `json:"raisedAt"`
	ClearedAt *time.Time `json:"clearedAt,omitempty"`
	Acked     bool       `json:"acknowledged"`
	AckedAt   *time.Time `json:"acknowledgedAt,omitempty"`
	AckedBy   string     `json:"acknowledgedBy,omitempty"`
	AckNote   string     `json:"acknowledgeNote,omitempty"`
}

// NoteMessage is an operator's note pinned to a machine.
type NoteMessage struct {
	Seq     uint64      `json:"seq"`
	Type    MessageType `json:"type"`
	Machine string      `json:"machine"`
	Data    Note        `json:"data"`
}

// Note is a note as the stream carries it; like Alarm, it converts to and
// from twin.Note.
type Note struct {
	ID      string    `json:"id"`
	Machine string    `json:"machine"`
	Text    string    `json:"text"`
	Author  string    `json:"author,omitempty"`
	Time    time.Time `json:"time"`
}

// TwinMessage is a machine's desired or reported document changed (data:
// the whole twin, as GET /api/v1/machines/{id}/twin answers), or its twin
// deleted (data: {"machine":…,"deleted":true}).
type TwinMessage struct {
	Seq     uint64      `json:"seq"`
	Type    MessageType `json:"type"`
	Machine string      `json:"machine"`
	Data    TwinData    `json:"data"`
}

// TwinData is a twin as the stream carries it: every member but machine
// is absent in a deletion. The app publishes control.Twin, whose JSON is
// this (a test in internal/api checks it).
type TwinData struct {
	Machine         string         `json:"machine"`
	Desired         map[string]any `json:"desired,omitzero"`
	Reported        map[string]any `json:"reported,omitzero"`
	Delta           map[string]any `json:"delta,omitzero"`
	Version         *uint64        `json:"version,omitzero"`
	ReportedVersion *uint64        `json:"reportedVersion,omitzero"`
	Metadata        *TwinMetadata  `json:"metadata,omitzero"`
	Deleted         bool           `json:"deleted,omitzero"`
}

// TwinMetadata is when each field of the documents last changed: a leaf
// is {"updatedAt": Unix ms}, a nested object nests.
type TwinMetadata struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}

// CommandMessage is a command sent to a machine, at each transition of
// its lifecycle (creation included).
type CommandMessage struct {
	Seq     uint64      `json:"seq"`
	Type    MessageType `json:"type"`
	Machine string      `json:"machine"`
	Data    Command     `json:"data"`
}

// Command is a command as the stream carries it: the JSON of
// internal/control's Command, as GET /api/v1/machines/{id}/commands/{cmdId}
// answers it (times RFC 3339 with milliseconds).
type Command struct {
	ID             string              `json:"id"`
	Machine        string              `json:"machine"`
	Name           string              `json:"name"`
	Params         map[string]any      `json:"params"`
	State          string              `json:"state"`
	TimeoutMs      int64               `json:"timeoutMs"`
	CreatedAt      time.Time           `json:"createdAt"`
	UpdatedAt      time.Time           `json:"updatedAt"`
	ExpiresAt      time.Time           `json:"expiresAt"`
	CreatedBy      string              `json:"createdBy,omitempty"`
	Result         json.RawMessage     `json:"result,omitempty"`
	Reason         string              `json:"reason,omitempty"`
	IdempotencyKey string              `json:"idempotencyKey,omitempty"`
	History        []CommandTransition `json:"history"`
}

// CommandTransition is one step of a Command's history.
type CommandTransition struct {
	State string    `json:"state"`
	At    time.Time `json:"at"`
	By    string    `json:"by,omitempty"`
	Via   string    `json:"via,omitempty"`
}

// StateMessage is a change of one of a machine's state series (a string
// field of its events: "state", "mode"), once it is stored.
type StateMessage struct {
	Seq     uint64      `json:"seq"`
	Type    MessageType `json:"type"`
	Machine string      `json:"machine"`
	Data    StateData   `json:"data"`
}

// StateData is the data of a StateMessage: from event time TS (Unix ms)
// on, the state Name is Value.
type StateData struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	TS    int64  `json:"ts"`
}

// FleetMessage is a conflated fleet stream's summary: each machine that
// changed since the last one.
type FleetMessage struct {
	Type     MessageType    `json:"type"`
	Seq      uint64         `json:"seq"`
	Machines []FleetMachine `json:"machines"`
}

// FleetMachine is one machine's changes in a FleetMessage: its status and
// alarm flag (both absent if unknown), when it was last seen (absent if
// unknown) and the latest value of each metric that changed.
type FleetMachine struct {
	Machine  string                `json:"machine"`
	Status   string                `json:"status,omitempty"`
	Alarm    *bool                 `json:"alarm,omitempty"`
	LastSeen int64                 `json:"lastSeen,omitempty"`
	Metrics  map[string]FleetValue `json:"metrics"`
}

// FleetValue is a metric's latest value and its event time (Unix ms).
type FleetValue struct {
	Value Float `json:"value"`
	TS    int64 `json:"ts"`
}

// Messages maps each message type to a value of its Go type, for the
// tests and tools that check the types against the AsyncAPI document.
func Messages() map[MessageType]any {
	return map[MessageType]any{
		TypeHello: HelloMessage{}, TypeHeartbeat: HeartbeatMessage{}, TypeReset: ResetMessage{},
		TypeReconnect: ReconnectMessage{}, TypeSamples: SamplesMessage{}, TypeWindows: WindowsMessage{},
		TypeMedian: MedianMessage{}, TypeStatus: StatusMessage{}, TypeAlarm: AlarmMessage{}, TypeNote: NoteMessage{},
		TypeTwin: TwinMessage{}, TypeCommand: CommandMessage{}, TypeFleet: FleetMessage{}, TypeState: StateMessage{},
	}
}
