package mqtt

import (
	"context"
	"errors"
	"fmt"

	"github.com/eclipse/paho.golang/paho"
)

// Reason codes of the external broker's PUBACK that say nobody got the
// message.
const codeNoSubscribers byte = 0x10

// ErrNoSubscribers is returned by Subscriber.PublishCommand when the
// external broker acknowledged a command with 0x10 (No matching
// subscribers): no device session subscribes to it, so it is not
// delivered and stays pending.
var ErrNoSubscribers = errors.New("no subscriber for the command")

// PublishDesired publishes machine's desired document and delta as
// retained QoS 1 messages to the external broker (see
// Broker.PublishDesired) and returns once the broker acknowledged both,
// within 10 s. Every replica publishes the changes it hears of: a version
// older than the last this one published is skipped, but another replica
// may still publish an older one after it; devices keep the highest
// version they saw.
func (s *Subscriber) PublishDesired(site, line, machine string, version uint64, desired, delta map[string]any) error {
	if err := checkLevels(site, line, machine, "", false); err != nil {
		return fmt.Errorf("publishing desired document: %w", err)
	}
	doc, dlt, err := desiredPayloads(machine, version, desired, delta)
	if err != nil {
		return err
	}
	s.desiredMu.Lock()
	defer s.desiredMu.Unlock()
	if last, ok := s.desiredVersions[machine]; ok && version < last {
		return nil
	}
	err = s.publishRetained(DesiredTopic(site, line, machine), doc)
	if err == nil {
		err = s.publishRetained(DesiredDeltaTopic(site, line, machine), dlt)
	}
	s.control.count("desired", err)
	if err != nil {
		return fmt.Errorf("publishing desired document of %s: %w", machine, err)
	}
	s.desiredVersions[machine] = version
	return nil
}

// ClearDesired clears machine's retained desired and desired/delta
// messages on the external broker.
func (s *Subscriber) ClearDesired(site, line, machine string) error {
	if err := checkLevels(site, line, machine, "", false); err != nil {
		return fmt.Errorf("clearing desired document: %w", err)
	}
	s.desiredMu.Lock()
	defer s.desiredMu.Unlock()
	err := s.publishRetained(DesiredTopic(site, line, machine), nil)
	if err == nil {
		err = s.publishRetained(DesiredDeltaTopic(site, line, machine), nil)
	}
	s.control.count("desired", err)
	if err != nil {
		return fmt.Errorf("clearing desired document of %s: %w", machine, err)
	}
	delete(s.desiredVersions, machine)
	return nil
}

// PublishCommand publishes a command (payload: CommandPayload) with QoS 1
// to the external broker and returns once the broker acknowledged it
// (within 10 s). Then ControlHandlers.Delivered is called (from another
// goroutine): "delivered" here means the broker has it for the device's
// subscription or session, not that the device acknowledged it — the
// external broker does not tell. A PUBACK 0x10 (no matching subscribers)
// returns ErrNoSubscribers and is not a delivery.
func (s *Subscriber) PublishCommand(site, line, machine, cmdID string, payload []byte) error {
	if err := checkLevels(site, line, machine, cmdID, true); err != nil {
		return fmt.Errorf("publishing command: %w", err)
	}
	code, err := s.publish(&paho.Publish{Topic: CommandTopic(site, line, machine, cmdID), QoS: 1, Payload: payload})
	if err == nil && code == codeNoSubscribers {
		err = ErrNoSubscribers
	}
	s.control.count("command", err)
	if err != nil {
		return fmt.Errorf("publishing command %s of %s: %w", cmdID, machine, err)
	}
	if s.delivered != nil {
		s.delivered.enqueue(commandRef{machine: machine, id: cmdID})
	}
	return nil
}

func (s *Subscriber) publishRetained(topic string, payload []byte) error {
	code, err := s.publish(&paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: payload})
	if err == nil && code == codeNoSubscribers {
		return nil // retained all the same
	}
	return err
}

// publish publishes p and returns the PUBACK's reason code: an error for
// a failure code (0x80 and above).
func (s *Subscriber) publish(p *paho.Publish) (byte, error) {
	cm := s.cm.Load()
	if cm == nil {
		return 0, errNotRunning
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	pr, err := cm.Publish(ctx, p)
	if err != nil {
		return 0, fmt.Errorf("publishing to %s: %w", p.Topic, err)
	}
	if pr == nil {
		return 0, nil
	}
	if pr.ReasonCode >= 0x80 {
		reason := ""
		if pr.Properties != nil {
			reason = pr.Properties.ReasonString
		}
		return pr.ReasonCode, fmt.Errorf("publishing to %s: broker answered %#x %s", p.Topic, pr.ReasonCode, reason)
	}
	return pr.ReasonCode, nil
}

// controlFilters returns the control topic filters the subscriber
// subscribes to (shared like the telemetry one): those with a handler.
func (s *Subscriber) controlFilters() []string {
	var fs []string
	if s.ctl.Reported != nil {
		fs = append(fs, ReportedFilter)
	}
	if s.ctl.Respond != nil {
		fs = append(fs, ResponseFilter)
	}
	if s.opts.Group != "" {
		for i, f := range fs {
			fs[i] = "$share/" + s.opts.Group + "/" + f
		}
	}
	return fs
}

// handleControl hands a received control message to its handler and
// reports whether it may be acknowledged: handled, or failed for good. A
// handler error wrapping ErrBusy is tried again, with backoff, until it
// passes or the subscriber stops (false: not acknowledged, sent again by
// the broker later).
func (s *Subscriber) handleControl(ctx context.Context, t controlTopic, pr paho.PublishReceived) bool {
	delay := backoffStart
	for {
		cctx, cancel := context.WithTimeout(ctx, s.h.opts.SubmitTimeout)
		_, err := s.ctl.dispatch(cctx, t, pr.Packet.Payload)
		cancel()
		s.control.count(t.kind.String(), err)
		if err == nil {
			return true
		}
		out := controlOutcome(ctx, err)
		if !out.retry() {
			if ok, suppressed := s.h.limiter.allow(); ok {
				s.logger.Warn("dropping mqtt control message", "topic", pr.Packet.Topic, "err", err, "suppressed", suppressed)
			}
			return true
		}
		if out.reason == reasonShutdown {
			return false
		}
		s.logger.Warn("handling mqtt control message, will retry", "topic", pr.Packet.Topic, "err", err, "retry_in", delay)
		if !s.wait(ctx, delay) {
			return false
		}
		delay = min(2*delay, backoffMax)
	}
}
