package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// meter holds the live counters every scenario updates and the progress
// line reads.
type meter struct {
	start time.Time
	phase atomic.Pointer[string]

	requests, events, samples, errors atomic.Int64
	behind                            atomic.Int64
	clients, connected                atomic.Int64
	messages, received                atomic.Int64
	queries                           atomic.Int64
	// reconnects counts sessions of connected subscribers that ended
	// before the run did (slow client cut off, server restart).
	reconnects atomic.Int64
	// reconnectNotices and closeNotices count the announced drops the
	// stream clients saw: reconnect messages and WebSocket close frames
	// with status 1013 (try again later).
	reconnectNotices, closeNotices atomic.Int64
	// fleetMessages counts the fleet messages of conflated clients.
	fleetMessages atomic.Int64
}

func newMeter(now time.Time) *meter {
	m := &meter{start: now}
	m.setPhase("starting")
	return m
}

func (m *meter) setPhase(p string) { m.phase.Store(&p) }

// counters is one reading of a meter.
type counters struct {
	at                                time.Time
	phase                             string
	requests, events, samples, errors int64
	behind                            int64
	clients, connected                int64
	messages, received                int64
	queries                           int64
	fleetMessages                     int64
}

func (m *meter) read(now time.Time) counters {
	return counters{
		at: now, phase: *m.phase.Load(),
		requests: m.requests.Load(), events: m.events.Load(), samples: m.samples.Load(), errors: m.errors.Load(),
		behind:  m.behind.Load(),
		clients: m.clients.Load(), connected: m.connected.Load(),
		messages: m.messages.Load(), received: m.received.Load(),
		queries:       m.queries.Load(),
		fleetMessages: m.fleetMessages.Load(),
	}
}

// field is one "name value" pair of the progress line.
type field struct{ name, value string }

// progressLine is what the progress line shows at one instant.
type progressLine struct {
	elapsed  time.Duration
	scenario string
	phase    string
	fields   []field
}

// lineFor builds the progress line of cur, with rates since prev.
func lineFor(scenario string, start time.Time, prev, cur counters) progressLine {
	dt := cur.at.Sub(prev.at).Seconds()
	rate := func(a, b int64) string {
		if dt <= 0 {
			return "0"
		}
		return FormatCount(float64(b-a) / dt)
	}
	p := progressLine{elapsed: cur.at.Sub(start), scenario: scenario, phase: cur.phase}
	add := func(name, value string) { p.fields = append(p.fields, field{name, value}) }
	switch scenario {
	case "query":
		if cur.phase == "queries" {
			add("queries/s", rate(prev.queries, cur.queries))
		} else {
			add("events/s", rate(prev.events, cur.events))
		}
	default:
		add("events/s", rate(prev.events, cur.events))
		add("samples/s", rate(prev.samples, cur.samples))
	}
	if cur.clients > 0 {
		add("clients", fmt.Sprintf("%d/%d", cur.connected, cur.clients))
		add("msgs/s", rate(prev.messages, cur.messages))
		add("recv samples/s", rate(prev.received, cur.received))
	}
	if cur.fleetMessages > 0 {
		add("fleet msgs/s", rate(prev.fleetMessages, cur.fleetMessages))
	}
	if cur.behind > 0 {
		add("backlog", FormatCount(float64(cur.behind)))
	}
	add("errors", FormatCount(float64(cur.errors)))
	return p
}

// String formats the line: "[  12s] latency measure · events/s 50 000 · …".
func (p progressLine) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%4ds] %s %s", int(p.elapsed.Seconds()), p.scenario, p.phase)
	for _, f := range p.fields {
		b.WriteString(" · ")
		b.WriteString(f.name)
		b.WriteByte(' ')
		b.WriteString(f.value)
	}
	return b.String()
}

// render returns the bytes that show line: on a terminal it overwrites the
// current line (carriage return, then erase to the end of the line);
// elsewhere it is one line of its own.
func render(line string, terminal bool) string {
	if terminal {
		return "\r" + line + "\x1b[K"
	}
	return line + "\n"
}

// reporter prints the progress line every interval until stopped.
type reporter struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startReporter prints m's progress to w every interval (no-op when w is
// nil). stop ends it and, on a terminal, ends the line.
func startReporter(ctx context.Context, w io.Writer, terminal bool, scenario string, m *meter, interval time.Duration) *reporter {
	ctx, cancel := context.WithCancel(ctx)
	r := &reporter{cancel: cancel}
	if w == nil {
		return r
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		prev := m.read(time.Now())
		wrote := false
		for {
			select {
			case <-ctx.Done():
				if terminal && wrote {
					io.WriteString(w, "\n")
				}
				return
			case now := <-t.C:
				cur := m.read(now)
				io.WriteString(w, render(lineFor(scenario, m.start, prev, cur).String(), terminal))
				wrote = true
				prev = cur
			}
		}
	}()
	return r
}

func (r *reporter) stop() {
	r.cancel()
	r.wg.Wait()
}
