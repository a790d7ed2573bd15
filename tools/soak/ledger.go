package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// bucketMs is the width of the ledger's buckets and of the count queries
// that check it: the store's own aggregate width, so the PostgreSQL store
// answers from its 10 s aggregates.
const bucketMs = 10_000

// ledger counts, per machine and 10 s bucket of event time, the events the
// server acknowledged (2xx) and those sent without ever being answered 2xx
// (the run ended, or the server refused them for good): the second may or
// may not be stored, the first must be.
type ledger struct {
	mu       sync.Mutex
	machines int
	buckets  map[ledgerKey]*ledgerCount
}

type ledgerKey struct {
	machine int
	bucket  int64 // start, Unix ms
}

type ledgerCount struct{ acked, unsure int64 }

func newLedger(machines int) *ledger {
	return &ledger{machines: machines, buckets: map[ledgerKey]*ledgerCount{}}
}

// add records events [lo, hi) of the schedule; ev gives event i's machine
// and time (Unix ms).
func (l *ledger) add(lo, hi int64, acked bool, ev func(i int64) (machine int, ts int64)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := lo; i < hi; i++ {
		m, ts := ev(i)
		k := ledgerKey{m, ts - ts%bucketMs}
		c := l.buckets[k]
		if c == nil {
			c = &ledgerCount{}
			l.buckets[k] = c
		}
		if acked {
			c.acked++
		} else {
			c.unsure++
		}
	}
}

// totals returns the acknowledged and unsure events.
func (l *ledger) totals() (acked, unsure int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.buckets {
		acked += c.acked
		unsure += c.unsure
	}
	return acked, unsure
}

// span returns the first bucket's start and the last bucket's end (Unix
// ms); ok is false when the ledger is empty.
func (l *ledger) span() (from, to int64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.buckets {
		if !ok || k.bucket < from {
			from = k.bucket
		}
		if !ok || k.bucket+bucketMs > to {
			to = k.bucket + bucketMs
		}
		ok = true
	}
	return from, to, ok
}

// countFunc returns the stored samples of one machine's metric per bucket
// start over [from, to) (Unix ms), e.g. from the series API with step=10s
// and agg=count.
type countFunc func(ctx context.Context, machine string, metric string, from, to int64) (map[int64]int64, error)

// verdict is the result of checking the ledger against the store.
type verdict struct {
	Acked, Unsure int64
	// Found is the samples stored in the buckets the run wrote to. Every
	// event carries each checked metric once, so each figure is per metric,
	// the largest over the metrics (a loss in one metric is a loss).
	Found int64
	// Lost: acknowledged events not stored. Duplicates: samples stored
	// beyond the events sent (acknowledged or not). StoredUnsure: events
	// never acknowledged that were stored all the same (a kill right
	// after the commit, before the answer) — not an error.
	Lost, Duplicates, StoredUnsure int64
	// Worst names a few buckets that do not add up.
	Worst []string
}

// check compares, for every machine, metric and bucket, what the store
// holds with what was acknowledged.
func (l *ledger) check(ctx context.Context, names []string, metrics []string, count countFunc) (verdict, error) {
	var v verdict
	v.Acked, v.Unsure = l.totals()
	from, to, ok := l.span()
	if !ok {
		return v, nil
	}
	l.mu.Lock()
	byMachine := make([]map[int64]ledgerCount, len(names))
	for k, c := range l.buckets {
		if byMachine[k.machine] == nil {
			byMachine[k.machine] = map[int64]ledgerCount{}
		}
		byMachine[k.machine][k.bucket] = *c
	}
	l.mu.Unlock()
	per := make([]verdict, len(metrics))
	for m, name := range names {
		want := byMachine[m]
		for j, metric := range metrics {
			pv := &per[j]
			got, err := count(ctx, name, metric, from, to)
			if err != nil {
				return v, fmt.Errorf("counting %s/%s: %w", name, metric, err)
			}
			starts := make([]int64, 0, len(want)+len(got))
			for b := range want {
				starts = append(starts, b)
			}
			for b := range got {
				if _, ok := want[b]; !ok {
					starts = append(starts, b)
				}
			}
			slices.Sort(starts)
			for _, b := range starts {
				w, g := want[b], got[b]
				pv.Found += g
				switch {
				case g < w.acked:
					pv.Lost += w.acked - g
					v.note(fmt.Sprintf("%s/%s %s: %d stored of %d acknowledged", name, metric, time.UnixMilli(b).UTC().Format("15:04:05"), g, w.acked))
				case g > w.acked+w.unsure:
					pv.Duplicates += g - w.acked - w.unsure
					pv.StoredUnsure += w.unsure
					v.note(fmt.Sprintf("%s/%s %s: %d stored of %d sent", name, metric, time.UnixMilli(b).UTC().Format("15:04:05"), g, w.acked+w.unsure))
				default:
					pv.StoredUnsure += g - w.acked
				}
			}
		}
	}
	for _, pv := range per {
		v.Found = max(v.Found, pv.Found)
		v.Lost = max(v.Lost, pv.Lost)
		v.Duplicates = max(v.Duplicates, pv.Duplicates)
		v.StoredUnsure = max(v.StoredUnsure, pv.StoredUnsure)
	}
	return v, nil
}

func (v *verdict) note(s string) {
	if len(v.Worst) < 5 {
		v.Worst = append(v.Worst, s)
	}
}
