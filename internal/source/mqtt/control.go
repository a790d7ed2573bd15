package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ControlHandlers take what devices send about twin control: reported
// state and command responses. A nil handler leaves its topic alone (the
// subscriber does not subscribe to it; the broker relays it like any other
// topic). Handlers get the message's identity in ctx (auth.FromContext) on
// the embedded broker; the subscriber's ctx carries none (the external
// broker authenticated the device).
//
// An error wrapping ErrBusy is "try again": the broker answers an MQTT 5
// publisher 0x97 and disconnects an MQTT 3.1.1 one so that it sends the
// message again, the subscriber leaves it unacknowledged until it
// succeeds. Any other error drops the message (0x83 with the error's text
// in the PUBACK's reason string of an MQTT 5 publisher).
type ControlHandlers struct {
	// Reported merges a reported-state patch (an RFC 7396 JSON merge
	// patch object, the payload of twinline/…/{machine}/reported).
	Reported func(ctx context.Context, machine string, patch []byte) error
	// Respond records a device's answer to a command: body is the payload
	// of twinline/…/{machine}/commands/{cmdId}/response,
	// {"state","result","reason"}.
	Respond func(ctx context.Context, machine, cmdID string, body []byte) error
	// Delivered marks a command delivered. On the embedded broker it is
	// called when a client that may answer for the machine (the machine's
	// device, or an ingest identity that writes for it; any client when the
	// broker is open) acknowledges the command (its PUBACK, QoS 1); on the
	// subscriber when the external broker acknowledged the publication,
	// which says the broker has it, not that a device got it. Called from
	// a goroutine of its own, never twice concurrently for one command.
	Delivered func(ctx context.Context, machine, cmdID string) error
	// Subscribed, on the embedded broker only, is called when a client
	// that may answer for machine subscribes with QoS 1 to its commands
	// (…/{machine}/commands/+ or /#, the machine level spelled out): the
	// time to publish its pending commands again, which a device without
	// a session missed while away. Called from a goroutine of its own.
	// The subscriber cannot see subscriptions on an external broker.
	Subscribed func(ctx context.Context, machine string) error
}

// Control topic leaves after twinline/{site}/{line}/{machineId}/.
const (
	leafDesired      = "desired"
	leafDesiredDelta = "desired/delta"
	leafReported     = "reported"
	leafCommands     = "commands"
	leafResponse     = "response"
)

// Control topic filters (the subscriber's, without a shared-subscription
// prefix).
const (
	ReportedFilter = "twinline/+/+/+/reported"
	ResponseFilter = "twinline/+/+/+/commands/+/response"
)

// controlKind names what a control topic carries.
type controlKind int

const (
	kindNone     controlKind = iota
	kindDesired              // …/desired, …/desired/delta (server → device)
	kindCommand              // …/commands/{cmdId} (server → device)
	kindReported             // …/reported (device → server)
	kindResponse             // …/commands/{cmdId}/response (device → server)
)

// controlTopic is a parsed control topic.
type controlTopic struct {
	kind                controlKind
	site, line, machine string
	cmdID               string // kindCommand, kindResponse
}

// parseControlTopic parses a control topic; kind is kindNone for any other
// topic (telemetry included). Levels are not validated beyond being
// non-empty: the handlers look the machine up.
func parseControlTopic(name string) controlTopic {
	if !strings.HasPrefix(name, topicRoot) {
		return controlTopic{}
	}
	parts := strings.Split(name, "/")
	if len(parts) < 5 {
		return controlTopic{}
	}
	for _, p := range parts[1:] {
		if p == "" || p == "+" || p == "#" {
			return controlTopic{}
		}
	}
	t := controlTopic{site: parts[1], line: parts[2], machine: parts[3]}
	switch rest := parts[4:]; {
	case len(rest) == 1 && rest[0] == leafDesired,
		len(rest) == 2 && rest[0] == leafDesired && rest[1] == "delta":
		t.kind = kindDesired
	case len(rest) == 1 && rest[0] == leafReported:
		t.kind = kindReported
	case len(rest) == 2 && rest[0] == leafCommands:
		t.kind, t.cmdID = kindCommand, rest[1]
	case len(rest) == 3 && rest[0] == leafCommands && rest[2] == leafResponse:
		t.kind, t.cmdID = kindResponse, rest[1]
	default:
		return controlTopic{}
	}
	return t
}

// serverOwned reports whether only the server publishes on topic: the
// desired documents and the commands. topic may be any topic.
func serverOwned(topic string) bool {
	parts := strings.Split(topic, "/")
	if len(parts) < 5 || parts[0] != "twinline" {
		return false
	}
	switch parts[4] {
	case leafDesired:
		return true
	case leafCommands:
		return !(len(parts) == 7 && parts[6] == leafResponse)
	}
	return false
}

// level returns s as a topic level: "_" when empty (a machine without a
// site or line in the registry).
func level(s string) string {
	if s == "" {
		return "_"
	}
	return s
}

func machineTopic(site, line, machine string) string {
	return topicRoot + level(site) + "/" + level(line) + "/" + machine + "/"
}

// DesiredTopic returns the retained topic of a machine's desired document;
// an empty site or line is "_".
func DesiredTopic(site, line, machine string) string {
	return machineTopic(site, line, machine) + leafDesired
}

// DesiredDeltaTopic returns the retained topic of a machine's desired
// delta (what reported does not match yet).
func DesiredDeltaTopic(site, line, machine string) string {
	return machineTopic(site, line, machine) + leafDesiredDelta
}

// ReportedTopic returns the topic a device publishes its reported state
// patches to.
func ReportedTopic(site, line, machine string) string {
	return machineTopic(site, line, machine) + leafReported
}

// CommandTopic returns the topic a command is published to.
func CommandTopic(site, line, machine, cmdID string) string {
	return machineTopic(site, line, machine) + leafCommands + "/" + cmdID
}

// ResponseTopic returns the topic a device answers a command on.
func ResponseTopic(site, line, machine, cmdID string) string {
	return CommandTopic(site, line, machine, cmdID) + "/" + leafResponse
}

// checkLevels refuses ids that cannot be topic levels.
func checkLevels(site, line, machine, cmdID string, withCmd bool) error {
	for _, f := range [...]struct{ name, v string }{{"site", site}, {"line", line}, {"machine id", machine}, {"command id", cmdID}} {
		if f.name == "command id" && !withCmd {
			continue
		}
		if (f.name == "machine id" || f.name == "command id") && f.v == "" {
			return fmt.Errorf("empty %s", f.name)
		}
		if strings.ContainsAny(f.v, "/+#") {
			return fmt.Errorf("%s %q contains / + or #", f.name, f.v)
		}
	}
	return nil
}

// desiredPayloads returns the payloads of the desired and desired/delta
// topics: {"machine","version","desired"} and {"machine","version","delta"}.
func desiredPayloads(machine string, version uint64, desired, delta map[string]any) (doc, dlt []byte, err error) {
	if desired == nil {
		desired = map[string]any{}
	}
	if delta == nil {
		delta = map[string]any{}
	}
	doc, err = json.Marshal(struct {
		Machine string         `json:"machine"`
		Version uint64         `json:"version"`
		Desired map[string]any `json:"desired"`
	}{machine, version, desired})
	if err != nil {
		return nil, nil, fmt.Errorf("encoding desired document of %s: %w", machine, err)
	}
	dlt, err = json.Marshal(struct {
		Machine string         `json:"machine"`
		Version uint64         `json:"version"`
		Delta   map[string]any `json:"delta"`
	}{machine, version, delta})
	if err != nil {
		return nil, nil, fmt.Errorf("encoding desired delta of %s: %w", machine, err)
	}
	return doc, dlt, nil
}

// CommandPayload returns the payload of a command topic:
// {"id","name","params","expiresAt"} (expiresAt RFC 3339 with ms, UTC).
func CommandPayload(id, name string, params map[string]any, expiresAt time.Time) ([]byte, error) {
	if params == nil {
		params = map[string]any{}
	}
	b, err := json.Marshal(struct {
		ID        string         `json:"id"`
		Name      string         `json:"name"`
		Params    map[string]any `json:"params"`
		ExpiresAt string         `json:"expiresAt"`
	}{id, name, params, expiresAt.UTC().Format("2006-01-02T15:04:05.000Z07:00")})
	if err != nil {
		return nil, fmt.Errorf("encoding command %s: %w", id, err)
	}
	return b, nil
}

// controlMetrics count control messages of one source.
type controlMetrics struct {
	messages *prometheus.CounterVec // by kind (reported, response, delivered, desired, command), result (ok, error)
}

func newControlMetrics(reg prometheus.Registerer, source string) (*controlMetrics, error) {
	m := &controlMetrics{messages: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "twinline_mqtt_control_messages_total", ConstLabels: prometheus.Labels{"source": source},
		Help: "MQTT twin control messages, by kind (desired, command: published; reported, response: received; delivered: command acknowledged; subscribed: a device subscribed to its commands) and result (ok, error).",
	}, []string{"kind", "result"})}
	for _, k := range []string{"desired", "command", "reported", "response", "delivered", "subscribed"} {
		for _, r := range []string{"ok", "error"} {
			m.messages.WithLabelValues(k, r)
		}
	}
	if err := register(reg, m.messages); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *controlMetrics) count(kind string, err error) {
	r := "ok"
	if err != nil {
		r = "error"
	}
	m.messages.WithLabelValues(kind, r).Inc()
}

// kindName names a received control kind for metrics and logs.
func (k controlKind) String() string {
	switch k {
	case kindDesired:
		return "desired"
	case kindCommand:
		return "command"
	case kindReported:
		return "reported"
	case kindResponse:
		return "response"
	}
	return "none"
}

// dispatch hands a device's control message to its handler; false when
// there is none (the message is not a control message the handlers take).
func (c ControlHandlers) dispatch(ctx context.Context, t controlTopic, payload []byte) (bool, error) {
	switch {
	case t.kind == kindReported && c.Reported != nil:
		return true, c.Reported(ctx, t.machine, payload)
	case t.kind == kindResponse && c.Respond != nil:
		return true, c.Respond(ctx, t.machine, t.cmdID, payload)
	}
	return false, nil
}

// errNotRunning is returned by a publish before the subscriber runs.
var errNotRunning = errors.New("mqtt subscriber not connected")

// publishTimeout bounds one control publication of the subscriber.
const publishTimeout = 10 * time.Second
