package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/twinline/twinline/internal/auth"
)

// PublishDesired publishes machine's desired document and its delta as
// retained QoS 1 messages on DesiredTopic and DesiredDeltaTopic (site and
// line from the registry; "_" when empty): a device subscribing later
// gets the latest at once. A version older than the last one published
// for the machine is skipped (a change seen late); the same version is
// published again (a reported change moves the delta, not the version).
func (b *Broker) PublishDesired(site, line, machine string, version uint64, desired, delta map[string]any) error {
	if err := checkLevels(site, line, machine, "", false); err != nil {
		return fmt.Errorf("publishing desired document: %w", err)
	}
	doc, dlt, err := desiredPayloads(machine, version, desired, delta)
	if err != nil {
		return err
	}
	b.desiredMu.Lock()
	defer b.desiredMu.Unlock()
	if last, ok := b.desiredVersions[machine]; ok && version < last {
		return nil
	}
	err = errors.Join(
		b.srv.Publish(DesiredTopic(site, line, machine), doc, true, 1),
		b.srv.Publish(DesiredDeltaTopic(site, line, machine), dlt, true, 1),
	)
	b.control.count("desired", err)
	if err != nil {
		return fmt.Errorf("publishing desired document of %s: %w", machine, err)
	}
	b.desiredVersions[machine] = version
	return nil
}

// ClearDesired clears machine's retained desired and desired/delta
// messages (empty retained payloads), for a deleted twin; subscribers get
// the empty messages.
func (b *Broker) ClearDesired(site, line, machine string) error {
	if err := checkLevels(site, line, machine, "", false); err != nil {
		return fmt.Errorf("clearing desired document: %w", err)
	}
	b.desiredMu.Lock()
	defer b.desiredMu.Unlock()
	err := errors.Join(
		b.srv.Publish(DesiredTopic(site, line, machine), nil, true, 1),
		b.srv.Publish(DesiredDeltaTopic(site, line, machine), nil, true, 1),
	)
	b.control.count("desired", err)
	if err != nil {
		return fmt.Errorf("clearing desired document of %s: %w", machine, err)
	}
	delete(b.desiredVersions, machine)
	return nil
}

// PublishCommand publishes a command (payload: CommandPayload) with QoS 1
// on CommandTopic, not retained. It returns once the broker has queued it
// for the subscribers; ControlHandlers.Delivered follows when a client
// that may answer for the machine acknowledges it. A device not
// subscribed (with QoS 1) at that moment, nor holding a session that is,
// does not get it: the command stays pending.
func (b *Broker) PublishCommand(site, line, machine, cmdID string, payload []byte) error {
	if err := checkLevels(site, line, machine, cmdID, true); err != nil {
		return fmt.Errorf("publishing command: %w", err)
	}
	err := b.srv.Publish(CommandTopic(site, line, machine, cmdID), payload, false, 1)
	b.control.count("command", err)
	if err != nil {
		return fmt.Errorf("publishing command %s of %s: %w", cmdID, machine, err)
	}
	return nil
}

// handleControl hands a client's reported patch or command response to
// its handler (asking Authorize about the machine first) and returns the
// outcome for the acknowledgement; handled is false for a topic that is
// not one of them.
func (b *Broker) handleControl(cl *mochi.Client, id auth.Identity, pk packets.Packet) (handled bool, out outcome) {
	t := parseControlTopic(pk.TopicName)
	if t.kind != kindReported && t.kind != kindResponse {
		return false, outcome{}
	}
	if t.kind == kindReported && b.ctl.Reported == nil || t.kind == kindResponse && b.ctl.Respond == nil {
		return false, outcome{}
	}
	if b.authorize != nil {
		ctx, cancel := context.WithTimeout(b.submitCtx, authTimeout)
		err := b.authorize(ctx, id, t.machine)
		cancel()
		if err != nil {
			b.refused.WithLabelValues(refusedPublish).Inc()
			b.logRefusal("refusing mqtt control message", cl, "topic", pk.TopicName, "identity", id.Name, "err", err)
			return true, outcome{reason: reasonNotAuthorized, code: codeNotAuthorized, detail: "machine " + t.machine + ": " + err.Error()}
		}
	}
	ctx, cancel := context.WithTimeout(auth.NewContext(b.submitCtx, id), b.h.opts.SubmitTimeout)
	defer cancel()
	_, err := b.ctl.dispatch(ctx, t, pk.Payload)
	b.control.count(t.kind.String(), err)
	if err == nil {
		return true, outcome{}
	}
	out = controlOutcome(b.submitCtx, err)
	ok, suppressed := b.h.limiter.allow()
	if ok {
		b.logger.Warn("rejecting mqtt control message", "topic", pk.TopicName, "client", cl.ID, "reason", out.reason, "err", err, "suppressed", suppressed)
	}
	return true, out
}

// controlOutcome maps a handler error to the acknowledgement: busy (sent
// again), shutdown, or dropped with the error's text.
func controlOutcome(ctx context.Context, err error) outcome {
	switch {
	case ctx.Err() != nil:
		return outcome{reason: reasonShutdown, code: codeUnspecified, detail: err.Error()}
	case errors.Is(err, ErrBusy) || errors.Is(err, context.DeadlineExceeded):
		return outcome{reason: reasonBusy, code: codeQuotaExceeded, detail: err.Error()}
	default:
		return outcome{reason: reasonUnprocessable, code: codeImplSpecific, detail: err.Error()}
	}
}

// OnQosPublish notes a command sent with QoS 1 to a client that may answer
// for its machine, by client id and packet id (a session taken over by a
// new connection keeps both). A PUBACK the broker is about to send under
// a packet id that carried a command means mochi dropped the command (the
// client reused the id): it is forgotten, not delivered.
func (h *hook) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	b := h.b
	if b.ctl.Delivered == nil {
		return
	}
	switch pk.FixedHeader.Type {
	case packets.Publish:
		// A command topic is never sent under an alias first (its topic
		// is new to the client), and a resent packet is the one stored
		// with its name.
		t := parseControlTopic(pk.TopicName)
		if t.kind != kindCommand {
			return
		}
		if b.authenticate != nil && !mayPublish(b.identity(cl), ResponseTopic(t.site, t.line, t.machine, t.cmdID)) {
			return
		}
		b.deliveries.set(cl.ID, pk.PacketID, commandRef{machine: t.machine, id: t.cmdID})
	case packets.Puback, packets.Pubrec:
		b.deliveries.take(cl.ID, pk.PacketID)
	}
}

// OnQosComplete reports a command whose PUBACK came.
func (h *hook) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	b := h.b
	if b.ctl.Delivered == nil || pk.FixedHeader.Type != packets.Puback {
		return
	}
	if ref, ok := b.deliveries.take(cl.ID, pk.PacketID); ok {
		b.delivered.enqueue(ref)
	}
}

// OnQosDropped forgets a command mochi gave up on.
func (h *hook) OnQosDropped(cl *mochi.Client, pk packets.Packet) {
	h.b.deliveries.take(cl.ID, pk.PacketID)
}

// commandRef names a command.
type commandRef struct{ machine, id string }

// deliveries are the commands in flight to clients, by client id and
// packet id.
type deliveries struct {
	mu sync.Mutex
	m  map[string]map[uint16]commandRef
}

func (d *deliveries) set(client string, packetID uint16, ref commandRef) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string]map[uint16]commandRef{}
	}
	c := d.m[client]
	if c == nil {
		c = map[uint16]commandRef{}
		d.m[client] = c
	}
	c[packetID] = ref
}

func (d *deliveries) take(client string, packetID uint16) (commandRef, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.m[client]
	ref, ok := c[packetID]
	if ok {
		delete(c, packetID)
		if len(c) == 0 {
			delete(d.m, client)
		}
	}
	return ref, ok
}

// drop forgets the commands in flight to a client whose session ended.
func (d *deliveries) drop(client string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.m, client)
}

// commandsSubscribed tells ControlHandlers.Subscribed of each machine
// whose commands a client that may answer for it subscribed to with
// QoS 1: a filter twinline/{site}/{line}/{machine}/commands/+ (or /#)
// with the machine level spelled out.
func (b *Broker) commandsSubscribed(cl *mochi.Client, pk packets.Packet, codes []byte) {
	if b.subscribed == nil {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] != 1 && codes[i] != 2 {
			continue
		}
		filter := f.Filter
		if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
			_, filter, _ = strings.Cut(rest, "/")
		}
		parts := strings.Split(filter, "/")
		if len(parts) != 6 || parts[0] != "twinline" || parts[4] != leafCommands || parts[5] != "+" && parts[5] != "#" {
			continue
		}
		machine := parts[3]
		if machine == "" || machine == "+" || machine == "#" {
			continue
		}
		if b.authenticate != nil {
			id, _ := b.ids.get(cl)
			if id.Machine != "" && id.Machine != machine || !id.Can(auth.ScopeIngest) {
				continue
			}
		}
		b.subscribed.enqueue(commandRef{machine: machine})
	}
}

// deliverer calls a handler (ControlHandlers.Delivered, Subscribed) from
// one goroutine, off the clients' read loops and the publishers' paths.
type deliverer struct {
	kind    string // metrics and logs
	fn      func(ctx context.Context, ref commandRef) error
	ch      chan commandRef
	logger  *slog.Logger
	metrics *controlMetrics
}

// deliveredQueue bounds the calls waiting for the handler; beyond it one
// is dropped (logged): a delivery's command stays pending until the
// device's response moves it on.
const deliveredQueue = 4096

func newDeliverer(kind string, fn func(context.Context, commandRef) error, logger *slog.Logger, m *controlMetrics) *deliverer {
	return &deliverer{kind: kind, fn: fn, ch: make(chan commandRef, deliveredQueue), logger: logger, metrics: m}
}

func (d *deliverer) enqueue(ref commandRef) {
	select {
	case d.ch <- ref:
	default:
		d.metrics.count(d.kind, errors.New("queue full"))
		d.logger.Warn("dropping mqtt control call: queue full", "kind", d.kind, "machine", ref.machine, "command", ref.id)
	}
}

// run calls the handler for each queued call until ctx ends.
func (d *deliverer) run(ctx context.Context, callTimeout func() (context.Context, context.CancelFunc)) {
	for {
		select {
		case <-ctx.Done():
			return
		case ref := <-d.ch:
			cctx, cancel := callTimeout()
			err := d.fn(cctx, ref)
			cancel()
			d.metrics.count(d.kind, err)
			if err != nil {
				d.logger.Warn("mqtt control handler", "kind", d.kind, "machine", ref.machine, "command", ref.id, "err", err)
			}
		}
	}
}
