package api

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// The memory model of ingest (docs/operations.md): a request holds, from
// the ingest memory budget, the bytes of its body buffer as they arrive
// and then a decoding reserve; it takes an in-flight slot only once its
// body is read.
const (
	// streamMinBody is the body size above which a request is decoded
	// and stored in chunks (ingest.Sink); smaller ones are decoded whole.
	streamMinBody = 256 << 10
	// wholeDecodeFactor bounds the memory of decoding a small body whole
	// (a JSON tree, the events), per body byte.
	wholeDecodeFactor = 16
	// streamReserve is the memory of decoding a large body in chunks: a
	// few chunks of events in the decoder and the event log.
	streamReserve = 8 << 20
	// minBodyBuffer is the first buffer of a body; it doubles as data
	// arrives, up to the Content-Length.
	minBodyBuffer = 64 << 10
	// budgetWait is how long a request waits for room in the budget
	// before it is answered 503.
	budgetWait = time.Second
	// chunkWindow is the chunks of one request in the event log at once.
	chunkWindow = 2
)

// decodeReserve is the memory decoding a body of n bytes may take.
func decodeReserve(n int) int64 {
	if n > streamMinBody {
		return streamReserve
	}
	return int64(n) * wholeDecodeFactor
}

var (
	// errBudget reports that the ingest memory budget had no room in time.
	errBudget = errors.New("ingest memory budget exhausted")
	// errOverBudget reports a request larger than the whole budget.
	errOverBudget = errors.New("request larger than the ingest memory budget")
	// errIdle reports a body that sent nothing for the idle timeout.
	errIdle = errors.New("body idle")
	// errSlow reports a body not read within the read timeout.
	errSlow = errors.New("body too slow")
)

// memBudget is the ingest memory budget: bytes that requests in flight may
// hold. Acquire waits up to budgetWait, FIFO.
type memBudget struct {
	size  int64
	sem   *semaphore.Weighted
	used  atomic.Int64
	waits prometheus.Counter
	shed  prometheus.Counter
}

func newMemBudget(size int64) *memBudget {
	return &memBudget{
		size: size,
		sem:  semaphore.NewWeighted(size),
		waits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_ingest_memory_waits_total",
			Help: "Ingest requests that waited for room in the ingest memory budget (--ingest-memory).",
		}),
		shed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_ingest_memory_shed_total",
			Help: "Ingest requests answered 503 because the ingest memory budget had no room within 1s.",
		}),
	}
}

func (m *memBudget) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.waits, m.shed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "twinline_ingest_memory_bytes",
			Help: "Bytes of the ingest memory budget held by requests in flight.",
		}, func() float64 { return float64(m.used.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "twinline_ingest_memory_limit_bytes",
			Help: "The ingest memory budget (--ingest-memory).",
		}, func() float64 { return float64(m.size) }),
	}
}

// acquire takes n bytes, waiting up to budgetWait (or until ctx ends).
func (m *memBudget) acquire(ctx context.Context, n int64) error {
	if n <= 0 {
		return nil
	}
	if n > m.size {
		return fmt.Errorf("%w: %d bytes, budget %d", errOverBudget, n, m.size)
	}
	if !m.sem.TryAcquire(n) {
		m.waits.Inc()
		ctx, cancel := context.WithTimeout(ctx, budgetWait)
		defer cancel()
		if err := m.sem.Acquire(ctx, n); err != nil {
			m.shed.Inc()
			return errBudget
		}
	}
	m.used.Add(n)
	return nil
}

func (m *memBudget) release(n int64) {
	if n > 0 {
		m.used.Add(-n)
		m.sem.Release(n)
	}
}

// clientSlots caps the ingest requests one client decodes at once.
type clientSlots struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func (c *clientSlots) acquire(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] >= c.max {
		return false
	}
	c.n[key]++
	return true
}

func (c *clientSlots) release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key]--; c.n[key] <= 0 {
		delete(c.n, key)
	}
}

// body is a request body read into memory, holding its share of the
// budget until release.
type body struct {
	buf  []byte
	held int64
	mem  *memBudget
}

func (b *body) release() {
	if cap(b.buf) == pooledBody {
		buf := b.buf[:0]
		bodyPool.Put(&buf)
	}
	b.mem.release(b.held)
	b.held, b.buf = 0, nil
}

// pooledBody is the size of the pooled body buffers: the bodies decoded
// whole fit in one.
const pooledBody = streamMinBody

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, pooledBody); return &b }}

// grow makes room for at least one more byte, up to limit bytes in all,
// taking the new capacity from the budget. The buffer doubles as data
// arrives; once an eighth of the announced size want has arrived, it
// takes the whole of it. So a stalled sender holds at most 8 times what it
// sent, and a large body leaves little garbage behind.
func (b *body) grow(ctx context.Context, want, limit int) error {
	n := max(2*cap(b.buf), minBodyBuffer)
	if want > 0 && (n >= want/8 || n >= want) {
		n = want
	}
	n = min(n, limit)
	if n <= cap(b.buf) {
		n = min(cap(b.buf)+minBodyBuffer, limit)
	}
	if cap(b.buf) == 0 && n <= pooledBody && (want == 0 || want <= pooledBody) {
		// A small body (or one of unknown size) starts in a pooled
		// buffer.
		if err := b.mem.acquire(ctx, pooledBody); err != nil {
			return err
		}
		b.held += pooledBody
		b.buf = (*bodyPool.Get().(*[]byte))[:0]
		return nil
	}
	if err := b.mem.acquire(ctx, int64(n-cap(b.buf))); err != nil {
		return err
	}
	b.held += int64(n - cap(b.buf))
	buf := make([]byte, len(b.buf), n)
	copy(buf, b.buf)
	if cap(b.buf) == pooledBody {
		old := b.buf[:0]
		bodyPool.Put(&old)
	}
	b.buf = buf
	return nil
}

// idleReader cuts a body that sends nothing for idle, or that is not read
// by deadline: it moves the connection's read deadline before each read.
type idleReader struct {
	r        io.Reader
	rc       *http.ResponseController
	now      func() time.Time
	idle     time.Duration
	deadline time.Time
	idled    bool
}

func (ir *idleReader) Read(p []byte) (int, error) {
	d := ir.now().Add(ir.idle)
	ir.idled = d.Before(ir.deadline)
	if !ir.idled {
		d = ir.deadline
	}
	if err := ir.rc.SetReadDeadline(d); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, fmt.Errorf("setting read deadline: %w", err)
	}
	n, err := ir.r.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if ir.idled {
			return n, fmt.Errorf("%w: no data for %s", errIdle, ir.idle)
		}
		return n, fmt.Errorf("%w: not read within %s", errSlow, ir.deadline.Sub(ir.now()))
	}
	return n, err
}

// readBody reads the request body into memory taken from the budget,
// enforcing the compressed and decompressed size limits, the idle timeout
// and the read timeout.
func (a *API) readBody(w http.ResponseWriter, r *http.Request) (*body, error) {
	b := &body{mem: a.mem}
	ir := &idleReader{r: r.Body, rc: http.NewResponseController(w), now: a.now, idle: a.opts.ReadIdleTimeout,
		deadline: a.now().Add(a.opts.ReadTimeout)}
	if ir.idle <= 0 {
		ir.idle = a.opts.ReadTimeout
	}
	var src io.Reader = http.MaxBytesReader(w, io.NopCloser(ir), a.opts.MaxBodyBytes)
	want := 0 // the size the body announces
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
		if limit := min(a.opts.MaxBodyBytes, a.opts.MaxDecompressedBytes); r.ContentLength > limit {
			return b, fmt.Errorf("%w: body exceeds %d bytes", errTooLarge, limit)
		}
		want = int(max(r.ContentLength, 0))
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(src)
		if err != nil {
			return b, tooLargeOr(fmt.Errorf("reading gzip body: %w", err), a.opts.MaxBodyBytes)
		}
		defer zr.Close()
		src = zr
	default:
		return b, fmt.Errorf("%w %q: send identity or gzip", errUnsupportedEncoding, enc)
	}
	limit := int(a.opts.MaxDecompressedBytes)
	defer func() {
		// What remains of the deadline must not cut the next request on
		// this connection.
		ir.rc.SetReadDeadline(time.Time{})
	}()
	for want == 0 || len(b.buf) < want {
		if len(b.buf) == cap(b.buf) {
			if len(b.buf) >= limit+1 {
				return b, fmt.Errorf("%w: decompressed body exceeds %d bytes", errTooLarge, limit)
			}
			if err := b.grow(r.Context(), want, limit+1); err != nil {
				return b, err
			}
		}
		n, err := src.Read(b.buf[len(b.buf):cap(b.buf)])
		b.buf = b.buf[:len(b.buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return b, tooLargeOr(fmt.Errorf("reading body: %w", err), a.opts.MaxBodyBytes)
		}
	}
	if len(b.buf) > limit {
		return b, fmt.Errorf("%w: decompressed body exceeds %d bytes", errTooLarge, limit)
	}
	return b, nil
}

// typeRequestTimeout is the problem type of a body cut for being too slow
// (408).
const typeRequestTimeout = "urn:twinline:problem:request-timeout"
