// Package ingest decodes what machines send — JSON, NDJSON and InfluxDB line
// protocol — into telemetry events, one decoder per format.
//
// Decoders are pure functions of the body and the Options: no I/O, no HTTP.
// They keep the valid items of a body and name each invalid one in a Reject
// (index or line, field, reason), so a caller can store the rest and tell the
// sender exactly what was wrong. An error is returned only when nothing in
// the body can be interpreted at all.
//
// Every format is held to the same rules. A machine id is 1 to
// Limits.MaxMachineIDLen bytes of UTF-8 without white space, control
// characters or any of / + # ? (it becomes a URL path segment and an MQTT
// topic level). A metric name is 1 to Limits.MaxMetricNameLen bytes of
// A-Z a-z 0-9 _ . : - and appears once per event. Values are finite. String
// fields are states (telemetry.State): named as metrics, sharing an event's
// names with them, with values of 1 to MaxStateValueLen bytes of UTF-8
// without control characters. An event carries 1 to
// Limits.MaxMetricsPerEvent metrics and states, and its time must lie within
// [Options.MinTime, Options.MaxTime].
//
// Strings in the returned events never alias the body: the caller may reuse
// the body buffer as soon as a decoder returns. Repeated strings (machine ids,
// metric names, tag keys and values) are interned, so a body of a thousand
// events from one machine holds one machine-id string, and the metrics of one
// body share one backing array.
package ingest

import (
	"fmt"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// Reject names one item that could not be accepted.
type Reject struct {
	// Index is the 0-based array index for JSON (0 for a single object), and
	// the 1-based line number for NDJSON and line protocol.
	Index int
	// Field is the offending field ("machineId", "timestamp",
	// "metrics.temp", "seq", a tag name…), or "" for the whole item.
	Field string
	// Reason says what is wrong, e.g. `must be a number, got string`.
	Reason string
}

// String formats r for logs and error messages.
func (r Reject) String() string {
	if r.Field == "" {
		return fmt.Sprintf("item %d: %s", r.Index, r.Reason)
	}
	return fmt.Sprintf("item %d: %s: %s", r.Index, r.Field, r.Reason)
}

// Options control what a decoder accepts. The zero value is usable: every
// zero field takes its default (see each field).
type Options struct {
	// Limits bounds metrics per event and id lengths; a zero field takes
	// its value from telemetry.DefaultLimits. Tag keys are bounded by
	// MaxMetricNameLen and the number of tags by MaxMetricsPerEvent.
	Limits telemetry.Limits
	// MaxLineBytes rejects a longer NDJSON or line-protocol line (by line
	// number, not counting the line ending) and keeps the rest; 0 means no
	// limit.
	MaxLineBytes int
	// MachineTags are the line-protocol tags that carry the machine id, in
	// order of preference; empty means DefaultMachineTags.
	MachineTags []string
	// Now is the server time (Unix ms) events without a timestamp are
	// stamped from (see Stamper); 0 means the clock is read once per call.
	Now int64
	// Stamper, if set, stamps the events without a timestamp, so that
	// their stamps increase per machine across calls (one Stamper per
	// server, shared by every ingest path); nil stamps them per call, still
	// strictly increasing per machine within the call.
	Stamper *Stamper
	// MinTime and MaxTime bound the accepted event time (Unix ms,
	// inclusive); 0 means unbounded on that side. Servers set them per
	// request with TimeBounds.
	MinTime, MaxTime int64
	// AdmitMachine, if set, is asked once about each valid machine id the
	// decoder has not met recently; a non-empty answer rejects the events
	// of that machine with it as the reason (e.g. a fleet size limit).
	AdmitMachine func(id string) string
	// Sink, if set, streams the events out in chunks instead of returning
	// them (see Sink).
	Sink *Sink
	// MissingMachine says what becomes of a line-protocol line without
	// any of MachineTags; the zero value rejects it.
	MissingMachine MissingMachine
	// Tags, if set, has the line-protocol decoder report the tags (other
	// than the machine id) of the machines whose tags differ from what
	// Tags remembers for them, in Stats.Tags; nil: tags are dropped.
	Tags *TagCache
}

// DefaultMaxLineBytes is the line-length limit DefaultOptions sets.
const DefaultMaxLineBytes = 64 << 10

// MaxEventIDLen bounds the length of an event's idempotency key, in bytes.
const MaxEventIDLen = 256

// MaxTagValueLen bounds the length of a tag value, in bytes.
const MaxTagValueLen = 1024

// DefaultOptions returns the options used when none are configured. Now is
// left 0 (the clock is read per call); servers set it per request.
func DefaultOptions() Options {
	return Options{
		Limits:       telemetry.DefaultLimits(),
		MaxLineBytes: DefaultMaxLineBytes,
		MachineTags:  DefaultMachineTags(),
	}
}

// defaultMachineTags is read-only; DefaultMachineTags hands out copies.
var defaultMachineTags = [...]string{"machineId", "machine_id", "machine", "host", "name"}

// DefaultMachineTags returns the line-protocol tags that carry the machine
// id when Options.MachineTags is empty, in order of preference.
func DefaultMachineTags() []string {
	return append([]string(nil), defaultMachineTags[:]...)
}

// normalize fills the zero fields of o with their defaults.
func (o Options) normalize() Options {
	def := telemetry.DefaultLimits()
	if o.Limits.MaxMetricsPerEvent <= 0 {
		o.Limits.MaxMetricsPerEvent = def.MaxMetricsPerEvent
	}
	if o.Limits.MaxMachineIDLen <= 0 {
		o.Limits.MaxMachineIDLen = def.MaxMachineIDLen
	}
	if o.Limits.MaxMetricNameLen <= 0 {
		o.Limits.MaxMetricNameLen = def.MaxMetricNameLen
	}
	if len(o.MachineTags) == 0 {
		o.MachineTags = defaultMachineTags[:]
	}
	if o.Now == 0 {
		o.Now = time.Now().UnixMilli()
	}
	return o
}

// SyntaxError reports a body that cannot be interpreted at all, and where.
type SyntaxError struct {
	// Offset is the 0-based byte offset in the body where the problem was
	// found, Line and Column (1-based, Column in bytes) the same place.
	Offset       int64
	Line, Column int
	// Msg says what is wrong.
	Msg string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("invalid JSON at line %d, column %d (byte %d): %s", e.Line, e.Column, e.Offset, e.Msg)
}

// newSyntaxError locates offset in body as a line and column.
func newSyntaxError(body []byte, offset int64, msg string) *SyntaxError {
	offset = min(max(offset, 0), int64(len(body)))
	line, col := 1, 1
	for _, c := range body[:offset] {
		if c == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return &SyntaxError{Offset: offset, Line: line, Column: col, Msg: msg}
}

// TimeBounds returns the event times (Unix ms, inclusive, for
// Options.MinTime and MaxTime) accepted at server time now: any age within
// retention, up to maxFuture ahead of now. The earliest is now − retention
// + maxFuture, so that a store counting its retention back from its newest
// sample (which may be maxFuture ahead) still keeps what was accepted. A
// zero retention leaves the past unbounded, a zero maxFuture the future
// (0 is the unbounded value of both Options fields).
//
// Age alone never refuses an event inside the retention: an old one is
// backfill, which the processor stores without replaying it live (ADR
// 0033).
func TimeBounds(now time.Time, retention, maxFuture time.Duration) (minTime, maxTime int64) {
	if maxFuture > 0 {
		maxTime = now.Add(maxFuture).UnixMilli()
	}
	if retention > 0 {
		minTime = now.Add(-retention + max(maxFuture, 0)).UnixMilli()
	}
	return minTime, maxTime
}

// checkTime rejects event times outside [opts.MinTime, opts.MaxTime].
func checkTime(ms int64, opts *Options) string {
	if opts.MinTime != 0 && ms < opts.MinTime {
		return fmt.Sprintf("%s is older than the accepted range (earliest %s)", fmtMilli(ms), fmtMilli(opts.MinTime))
	}
	if opts.MaxTime != 0 && ms > opts.MaxTime {
		return fmt.Sprintf("%s is in the future (latest accepted %s)", fmtMilli(ms), fmtMilli(opts.MaxTime))
	}
	return ""
}

func fmtMilli(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
