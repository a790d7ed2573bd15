package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinline/twinline/internal/bench"
)

// sender posts events at a fixed rate, open loop (event i is due at
// start + i/rate whatever happened before it, and stamped with that
// time), and retries every request until it is answered 2xx: 503 after
// its Retry-After, a broken connection (a killed server) after a short
// backoff. Each event has its own id, so a retry of a request the server
// had stored before dying is recognised as a duplicate, and an event is
// acknowledged exactly when a 2xx covered it.
type sender struct {
	url      string
	client   *http.Client
	rate     float64
	batch    int
	workers  int
	names    []string
	metrics  []string
	runID    string
	start    time.Time
	pacer    *bench.Pacer
	ledger   *ledger
	log      *slog.Logger
	draining atomic.Bool

	sent, acked, retries, unanswered, rejected, dupAnswers, behind atomic.Int64
}

func newSender(url string, rate float64, batch, workers int, names, metrics []string, runID string, l *ledger, log *slog.Logger) *sender {
	return &sender{
		url: url, rate: rate, batch: batch, workers: workers, names: names, metrics: metrics, runID: runID,
		ledger: l, log: log,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: workers}},
	}
}

// event returns event i's machine and time (Unix ms).
func (s *sender) event(i int64) (int, int64) {
	return int(i % int64(len(s.names))), s.pacer.Intended(i).UnixMilli()
}

// body is the JSON array of events [lo, hi).
func (s *sender) body(b []byte, lo, hi int64) []byte {
	b = append(b[:0], '[')
	for i := lo; i < hi; i++ {
		if i > lo {
			b = append(b, ',')
		}
		m, ts := s.event(i)
		b = append(b, `{"machineId":"`...)
		b = append(b, s.names[m]...)
		b = append(b, `","id":"`...)
		b = append(b, s.runID...)
		b = append(b, '-')
		b = strconv.AppendInt(b, i, 10)
		b = append(b, `","timestamp":`...)
		b = strconv.AppendInt(b, ts, 10)
		for k, metric := range s.metrics {
			b = append(b, `,"`...)
			b = append(b, metric...)
			b = append(b, `":`...)
			b = strconv.AppendFloat(b, float64((i*7+int64(k)*13)%10_000)/10, 'f', -1, 64)
		}
		b = append(b, '}')
	}
	return append(b, ']')
}

type span struct{ lo, hi int64 }

// run sends from now until ctx ends; requests already taken are retried
// until drain ends. It returns when every request is answered or given up.
func (s *sender) run(ctx, drain context.Context) {
	s.start = time.Now()
	s.pacer = bench.NewPacer(s.start, s.rate, s.batch)
	jobs := make(chan span, s.workers)
	var wg sync.WaitGroup
	for range s.workers {
		wg.Go(func() {
			var buf []byte
			for j := range jobs {
				buf = s.body(buf, j.lo, j.hi)
				s.post(drain, buf, j)
			}
		})
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	const linger = 20 * time.Millisecond
	for ctx.Err() == nil {
		now := time.Now()
		if wake := s.pacer.NextBatch(s.batch, linger); now.Before(wake) {
			timer.Reset(wake.Sub(now))
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
			continue
		}
		lo, hi := s.pacer.Take(now)
		s.behind.Store(s.pacer.Behind(now))
		if lo == hi {
			continue
		}
		select {
		case jobs <- span{lo, hi}:
		case <-ctx.Done():
		}
	}
	s.draining.Store(true)
	close(jobs)
	wg.Wait()
	s.behind.Store(0)
}

// post sends one request until a 2xx or until drain ends.
func (s *sender) post(drain context.Context, body []byte, j span) {
	n := j.hi - j.lo
	s.sent.Add(n)
	s.unanswered.Add(1)
	defer s.unanswered.Add(-1)
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			s.retries.Add(1)
		}
		wait, done := s.try(drain, body, j, attempt)
		if done {
			return
		}
		if wait == 0 {
			wait = backoff
			backoff = min(2*backoff, 2*time.Second)
		}
		select {
		case <-drain.Done():
			s.ledger.add(j.lo, j.hi, false, s.event)
			return
		case <-time.After(wait):
		}
	}
}

// try makes one attempt; done says the request is settled (acknowledged,
// or refused for good), otherwise wait is the server's Retry-After (0:
// use the backoff).
func (s *sender) try(ctx context.Context, body []byte, j span, attempt int) (wait time.Duration, done bool) {
	req, err := http.NewRequestWithContext(ctx, "POST", s.url+"/api/v1/events", bytes.NewReader(body))
	if err != nil {
		return 0, false
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, false // a killed server, a cut connection: retry
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		s.ledger.add(j.lo, j.hi, true, s.event)
		s.acked.Add(j.hi - j.lo)
		if attempt == 0 && bytes.Contains(msg, []byte(`"duplicates":`)) && !bytes.Contains(msg, []byte(`"duplicates":0`)) {
			s.dupAnswers.Add(1)
		}
		return 0, true
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && ra > 0 {
			return min(time.Duration(ra)*time.Second, 5*time.Second), false
		}
		return 0, false
	default:
		// A 4xx: part of the batch may be stored (a 400 names the rejected
		// items), so its events are neither acknowledged nor retried.
		if s.rejected.Add(1) <= 3 {
			s.log.Warn("request refused", "status", resp.StatusCode, "body", string(msg))
		}
		s.ledger.add(j.lo, j.hi, false, s.event)
		return 0, true
	}
}

func (s *sender) String() string {
	return fmt.Sprintf("sent %d, acknowledged %d", s.sent.Load(), s.acked.Load())
}
