package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/source/mqtt"
	"github.com/twinline/twinline/internal/tlsconf"
	"github.com/twinline/twinline/internal/twin"
)

// controlPublisher is an MQTT side that carries desired documents and
// commands to devices: the embedded broker or the subscriber to an
// external broker.
type controlPublisher interface {
	PublishDesired(site, line, machine string, version uint64, desired, delta map[string]any) error
	ClearDesired(site, line, machine string) error
	PublishCommand(site, line, machine, cmdID string, payload []byte) error
}

// delivery carries the twins' desired documents and the commands to the
// machines: MQTT (retained desired and delta, QoS 1 commands) and the
// Kafka desired topic (latest document per machine, tombstone on
// deletion); and takes the devices' answers back (reported patches,
// command responses, deliveries).
type delivery struct {
	registry *twin.Registry
	twins    *control.Twins
	commands *control.Commands // nil on roles without commands
	desired  *kafka.DesiredWriter
	// writes are the desired topic's records to write, in order (one
	// writer: a machine's versions must land in the order they were made).
	writes chan desiredWrite
	logger *slog.Logger

	mu sync.Mutex
	// pubs are the MQTT sides; shared marks an external broker, which
	// every replica publishes to: a change another replica made is
	// that replica's to publish there.
	pubs []publisher
	// topics is where each machine's desired document was last
	// published (site, line): cleared there when the machine is deleted
	// or moves.
	topics map[string][2]string
	// published is when each pending command was last published, so
	// that the publications at start and on a device's subscription do
	// not send it twice to a device that already got it.
	published map[string]time.Time
}

type desiredWrite struct {
	machine string
	write   func(context.Context) error
}

type publisher struct {
	p      controlPublisher
	shared bool
}

// handlers are the MQTT sides' calls into the twins and commands.
func (d *delivery) handlers() mqtt.ControlHandlers {
	h := mqtt.ControlHandlers{
		Reported: func(ctx context.Context, machine string, patch []byte) error {
			_, err := d.twins.PatchReported(ctx, machine, patch, identityName(ctx, "mqtt"))
			return busy(err)
		},
	}
	if d.commands == nil {
		return h
	}
	h.Respond = func(ctx context.Context, machine, id string, body []byte) error {
		var in struct {
			State  control.State `json:"state"`
			Result any           `json:"result"`
			Reason string        `json:"reason"`
		}
		if err := json.Unmarshal(body, &in); err != nil {
			return fmt.Errorf("decoding the response to command %s: %w", id, err)
		}
		_, err := d.commands.Respond(ctx, machine, id, control.Response{State: in.State, Result: in.Result, Reason: in.Reason,
			By: identityName(ctx, "mqtt"), Via: "mqtt"})
		return busy(err)
	}
	h.Delivered = func(ctx context.Context, machine, id string) error {
		_, err := d.commands.Delivered(ctx, machine, id, "mqtt")
		return busy(err)
	}
	h.Subscribed = func(ctx context.Context, machine string) error {
		subscribed := time.Now()
		pending, err := d.commands.List(ctx, machine, control.Filter{State: control.StatePending})
		if err != nil {
			return err
		}
		for _, c := range pending {
			// One published after the subscription reached the device.
			// Only the embedded brokers (not shared): the subscription
			// was to one of them.
			if at, ok := d.lastPublished(c.ID); !ok || at.Before(subscribed) {
				d.publishCommandOn(c, d.publishers(true))
			}
		}
		return nil
	}
	return h
}

// busy marks the errors worth a retry (the store unavailable) as such
// for the MQTT side; a refusal (unknown machine or command, a bad patch,
// an answer too late) is final.
func busy(err error) error {
	if err == nil || errors.Is(err, control.ErrInvalid) || errors.Is(err, control.ErrMalformed) ||
		errors.Is(err, control.ErrNotFound) || errors.Is(err, control.ErrConflict) || errors.Is(err, twin.ErrNotFound) {
		return err
	}
	return fmt.Errorf("%w: %w", mqtt.ErrBusy, err)
}

// identityName is who an MQTT device acts as, for the twins' and
// commands' records.
func identityName(ctx context.Context, fallback string) string {
	if id, ok := auth.FromContext(ctx); ok && id.Name != "" {
		return id.Name
	}
	return fallback
}

// add makes p carry the control messages.
func (d *delivery) add(p controlPublisher, shared bool) {
	d.mu.Lock()
	d.pubs = append(d.pubs, publisher{p: p, shared: shared})
	d.mu.Unlock()
}

// hasShared reports whether an external broker is among the MQTT sides.
func (d *delivery) hasShared() bool { return len(d.sides(false, true)) > 0 }

// sharedPublishers are the external brokers.
func (d *delivery) sharedPublishers() []controlPublisher { return d.sides(false, true) }

// publishers are the MQTT sides a change goes to: all of them for this
// replica's own changes; only its embedded brokers for another replica's
// (remote), which that replica publishes to the shared broker itself.
func (d *delivery) publishers(remote bool) []controlPublisher { return d.sides(true, !remote) }

// sides returns the embedded brokers (own) and the external ones (shared).
func (d *delivery) sides(own, shared bool) []controlPublisher {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []controlPublisher
	for _, p := range d.pubs {
		if p.shared && shared || !p.shared && own {
			out = append(out, p.p)
		}
	}
	return out
}

// twinChanged publishes a twin change: desired and delta on MQTT (both
// move when either document does), the desired document on Kafka.
func (d *delivery) twinChanged(c control.Change) {
	if c.Kind == control.ChangeDeleted {
		d.mu.Lock()
		at, ok := d.topics[c.Machine]
		delete(d.topics, c.Machine)
		d.mu.Unlock()
		if ok {
			for _, p := range d.publishers(c.Remote) {
				if err := p.ClearDesired(at[0], at[1], c.Machine); err != nil {
					d.logger.Warn("clearing the desired document on MQTT", "machine", c.Machine, "err", err)
				}
			}
		}
		if d.desired != nil && !c.Remote {
			d.kafka(func(ctx context.Context) error { return d.desired.Tombstone(ctx, c.Machine) }, c.Machine)
		}
		return
	}
	d.publishTwin(c.Twin, c.Remote)
	if c.Kind == control.ChangeDesired && d.desired != nil && !c.Remote {
		tw := c.Twin
		d.kafka(func(ctx context.Context) error { return d.desired.Write(ctx, tw.Machine, tw.Version, tw.Desired) }, tw.Machine)
	}
}

// kafka queues a write to the desired topic, which run makes in order,
// off the caller's path (a twin change is durable already; the topic
// follows it).
func (d *delivery) kafka(write func(context.Context) error, machine string) {
	select {
	case d.writes <- desiredWrite{machine: machine, write: write}:
	default:
		d.logger.Error("the desired topic's queue is full: a desired document was not written", "machine", machine)
	}
}

// publishTwin publishes tw's desired document and delta on the MQTT
// sides, under the machine's current site and line (clearing the topics
// of the ones it had before).
func (d *delivery) publishTwin(tw control.Twin, remote bool) {
	in, err := d.registry.Get(tw.Machine)
	if err != nil {
		return // deleted meanwhile
	}
	at := [2]string{in.Site, in.Line}
	d.mu.Lock()
	old, had := d.topics[tw.Machine]
	if d.topics == nil {
		d.topics = map[string][2]string{}
	}
	d.topics[tw.Machine] = at
	d.mu.Unlock()
	for _, p := range d.publishers(remote) {
		if had && old != at {
			if err := p.ClearDesired(old[0], old[1], tw.Machine); err != nil {
				d.logger.Warn("clearing the desired document the machine had before it moved", "machine", tw.Machine, "err", err)
			}
		}
		if err := p.PublishDesired(at[0], at[1], tw.Machine, tw.Version, tw.Desired, tw.Delta); err != nil {
			d.logger.Warn("publishing the desired document on MQTT", "machine", tw.Machine, "err", err)
		}
	}
}

// commandChanged publishes a new command to its machine: one another
// replica created goes out only on this replica's own sides (its embedded
// broker), not on an external broker, which the creator publishes to.
func (d *delivery) commandChanged(c control.Command) {
	if c.State != control.StatePending {
		d.mu.Lock()
		delete(d.published, c.ID)
		d.mu.Unlock()
		return
	}
	if len(c.History) == 1 {
		d.publishCommand(c, c.Remote)
	}
}

// lastPublished is when the pending command id was last published.
func (d *delivery) lastPublished(id string) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.published[id]
	return at, ok
}

// publishCommand sends c to its machine on every MQTT side, off the
// caller's path (on an external broker a publication waits for the
// broker's PUBACK).
func (d *delivery) publishCommand(c control.Command, remote bool) {
	d.publishCommandOn(c, d.publishers(remote))
}

// publishCommandOn sends c to its machine on the MQTT sides pubs.
func (d *delivery) publishCommandOn(c control.Command, pubs []controlPublisher) {
	in, err := d.registry.Get(c.Machine)
	if err != nil {
		return
	}
	payload, err := mqtt.CommandPayload(c.ID, c.Name, c.Params, c.ExpiresAt)
	if err != nil {
		d.logger.Warn("encoding a command for MQTT", "machine", c.Machine, "command", c.ID, "err", err)
		return
	}
	d.mu.Lock()
	if d.published == nil {
		d.published = map[string]time.Time{}
	}
	d.published[c.ID] = time.Now()
	d.mu.Unlock()
	for _, p := range pubs {
		go func() {
			if err := p.PublishCommand(in.Site, in.Line, c.Machine, c.ID, payload); err != nil && !errors.Is(err, mqtt.ErrNoSubscribers) {
				d.logger.Warn("publishing a command on MQTT", "machine", c.Machine, "command", c.ID, "err", err)
			}
		}()
	}
}

// runWrites writes the queued desired records, retrying each until it is
// written or ctx ends.
func (d *delivery) runWrites(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case w := <-d.writes:
			for attempt := 0; ; attempt++ {
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := w.write(wctx)
				cancel()
				if err == nil || ctx.Err() != nil {
					break
				}
				d.logger.Warn("writing the desired topic", "machine", w.machine, "attempt", attempt+1, "err", err)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(min(time.Duration(attempt+1)*time.Second, 30*time.Second)):
				}
			}
		}
	}
}

// run publishes, once at start, every twin's desired document (the
// embedded broker keeps retained messages in memory only; an external
// one may hold stale ones) and, on an external broker, every pending
// command (a device's persistent session there may be waiting for it),
// then waits for ctx. The embedded broker lost every session with the
// restart: its devices subscribe again, and get their pending commands
// then (Subscribed).
func (d *delivery) run(ctx context.Context) error {
	if len(d.publishers(false)) > 0 {
		n := 0
		for _, id := range d.registry.IDs() {
			tw, err := d.twins.Get(ctx, id)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.logger.Warn("reading a twin to publish it", "machine", id, "err", err)
				continue
			}
			if tw.Version == 0 && len(tw.Reported) == 0 {
				continue
			}
			d.publishTwin(tw, false)
			n++
		}
		if d.commands != nil && d.hasShared() {
			pending, err := d.commands.Pending(ctx)
			if err != nil && ctx.Err() == nil {
				d.logger.Warn("reading the pending commands to publish them", "err", err)
			}
			for _, c := range pending {
				// Not one a device's subscription had published already.
				if _, done := d.lastPublished(c.ID); c.State == control.StatePending && !done {
					d.publishCommandOn(c, d.sharedPublishers())
				}
			}
			d.logger.Info("published the twins' desired documents and pending commands", "twins", n, "commands", len(pending))
		}
	}
	<-ctx.Done()
	return nil
}

// openDelivery builds the delivery of desired documents and commands:
// the MQTT sides join it as openMQTT starts them; with Kafka, the roles
// that change desired documents (those serving the API) write the desired
// topic.
func (a *App) openDelivery(twins *control.Twins) error {
	cfg := a.cfg
	d := &delivery{registry: a.registry, twins: twins, commands: a.commands, logger: a.logger.With("component", "control_delivery")}
	a.delivery = d
	if len(cfg.KafkaBrokers) > 0 && cfg.Role.Queries() {
		opts := []kgo.Opt{kgo.SeedBrokers(cfg.KafkaBrokers...), kgo.RequiredAcks(kgo.AllISRAcks()),
			kgo.RecordDeliveryTimeout(30 * time.Second), kgo.ClientID("twinline-desired")}
		if cfg.KafkaTLS {
			tc, err := tlsconf.ClientConfig(cfg.KafkaTLSCA)
			if err != nil {
				return fmt.Errorf("--kafka-tls-ca: %w", err)
			}
			opts = append(opts, kgo.DialTLSConfig(tc))
		}
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			return fmt.Errorf("starting the desired topic's Kafka client: %w", err)
		}
		a.cleanup = append(a.cleanup, cl.Close)
		d.desired = kafka.NewDesiredWriter(cl, cfg.KafkaDesiredTopic)
		d.writes = make(chan desiredWrite, 16384)
		a.background = append(a.background, part{name: "stopping the desired topic's writer", run: d.runWrites})
	}
	twins.Subscribe(d.twinChanged)
	if a.commands != nil {
		a.commands.Subscribe(d.commandChanged)
		if a.sec != nil && a.sec.audit != nil {
			audit, logger := a.sec.audit, d.logger
			a.commands.Subscribe(func(c control.Command) { auditCommand(audit, logger, c) })
		}
	}
	a.background = append(a.background, part{name: "stopping the control delivery", run: d.run})
	return nil
}

// auditCommand records in the audit log the transitions of a command this
// replica made outside an audited API request: deliveries, the devices'
// answers over MQTT (or in process), expiry. Its creation and the answers
// posted over HTTP are audited by their routes (command.create,
// command.response).
func auditCommand(audit auth.AuditStore, logger *slog.Logger, c control.Command) {
	e, ok := commandAuditEntry(c)
	if !ok {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := audit.Append(ctx, e); err != nil {
			logger.Warn("recording a command transition in the audit log", "machine", c.Machine, "command", c.ID, "err", err)
		}
	}()
}

// commandAuditEntry is the audit entry of c's last transition, if it is
// one auditCommand records.
func commandAuditEntry(c control.Command) (auth.AuditEntry, bool) {
	if c.Remote || len(c.History) < 2 {
		return auth.AuditEntry{}, false
	}
	last := c.History[len(c.History)-1]
	if last.Via == "http" && last.State != control.StateDelivered {
		return auth.AuditEntry{}, false
	}
	// The transition keeps who made it, not the kind of identity: none
	// is claimed. One without anybody (expiry) is twinline's own.
	actor := last.By
	if actor == "" {
		actor = "twinline"
	}
	return auth.AuditEntry{At: last.At, Actor: actor, Action: "command." + string(last.State),
		Machine: c.Machine, Target: c.ID, Outcome: "ok", Detail: map[string]any{"name": c.Name, "via": last.Via}}, true
}
