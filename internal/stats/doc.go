// Package stats holds the running statistics of a machine's live state:
// the sliding median of a metric's latest samples (Median) and event rates
// over the last minutes (Rate). It imports nothing of twinline, so the twin
// state that uses them, and the stores that persist the twin's types, do
// not depend on the event-time engine.
package stats
