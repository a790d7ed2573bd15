package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinline/twinline/internal/auth"
)

// runStream runs the latency, fanout and dashboard scenarios: connect the
// stream clients — o.Clients machine (or all=1) clients, then
// o.FleetClients conflated fleet clients — then send at a fixed rate, open
// loop, and measure every sample and fleet message the clients receive,
// and every client the server drops.
func runStream(ctx context.Context, o Options, r *Result) error {
	if err := checkOpenFiles(o); err != nil {
		return err
	}

	m := newMeter(time.Now())
	rep := startReporter(ctx, o.Progress, o.Terminal, o.Scenario, m, time.Second)
	defer rep.stop()

	// Subscriptions: the first AllClients subscribe to every machine, the
	// others to MachinesPerClient consecutive machines each, round robin.
	names := machineList(o.Prefix, o.Machines)
	subs := make([]int64, o.Machines) // subscribers per machine
	total := o.Clients + o.FleetClients
	queries := make([]string, total)
	for c := o.Clients; c < total; c++ {
		queries[c] = "all=1&conflate=" + o.Conflate.String()
	}
	for c := range o.Clients {
		if c < o.AllClients {
			queries[c] = "all=1"
			continue
		}
		q := make([]byte, 0, o.MachinesPerClient*22)
		for j := range o.MachinesPerClient {
			i := ((c-o.AllClients)*o.MachinesPerClient + j) % o.Machines
			subs[i]++
			if j > 0 {
				q = append(q, '&')
			}
			q = append(q, "machine="...)
			q = append(q, names[i]...)
		}
		queries[c] = string(q)
	}
	for i := range subs {
		subs[i] += int64(o.AllClients)
	}

	rss0, rssErr := serverRSS(o)
	self0, selfErr := selfRSS(o)
	// Drops are counted from here: the server's counter before, and the
	// notices the clients see.
	dropped0, droppedErr := droppedClients(ctx, o)
	m.setPhase("connect")
	m.clients.Store(int64(total))
	var from atomic.Int64
	from.Store(math.MaxInt64)
	shards := NewShards(4 * runtime.GOMAXPROCS(0))
	fleet := newFleetMeter(m)
	wsClient := &http.Client{Transport: auth.BearerTransport(o.Token, &http.Transport{Proxy: nil, MaxIdleConnsPerHost: -1})}
	defer wsClient.CloseIdleConnections()

	clientsCtx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	var wg sync.WaitGroup
	sem := make(chan struct{}, o.ConnectWorkers)
	allConnected := make(chan struct{})
	var connectErrs atomic.Int64
	var connectErrMu sync.Mutex
	var firstConnectErr error
	connectStart := time.Now()
	var connectEnd atomic.Int64
	for c := range total {
		s := &subscriber{
			base: o.StreamTargets[c%len(o.StreamTargets)], query: queries[c], transport: o.Transport,
			hist: shards.Shard(c), m: m, from: &from, wsClient: wsClient,
		}
		if c >= o.Clients {
			s.fleet = fleet
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-clientsCtx.Done():
				return
			}
			var once sync.Once
			release := func() { once.Do(func() { <-sem }) }
			defer release()
			s.run(clientsCtx, func() {
				release()
				if m.connected.Add(1) == int64(total) {
					connectEnd.Store(time.Now().UnixNano())
					close(allConnected)
				}
			}, func(err error) {
				connectErrs.Add(1)
				m.errors.Add(1)
				connectErrMu.Lock()
				if firstConnectErr == nil {
					firstConnectErr = err
				}
				connectErrMu.Unlock()
			})
		}()
	}
	connectTimeout := max(30*time.Second, time.Duration(total)*5*time.Millisecond)
	t := time.NewTimer(connectTimeout)
	select {
	case <-allConnected:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	connected := m.connected.Load()
	connectDur := time.Since(connectStart)
	if end := connectEnd.Load(); end > 0 {
		connectDur = time.Duration(end - connectStart.UnixNano())
	}
	st := &StreamResult{
		Clients:     total,
		Connected:   connected,
		ConnectS:    connectDur.Seconds(),
		ConnectErrs: connectErrs.Load(),
	}
	if connectDur > 0 {
		st.ConnectPerS = float64(connected) / connectDur.Seconds()
	}
	r.Stream = st
	if connected < int64(total) {
		connectErrMu.Lock()
		r.Notes = append(r.Notes, fmt.Sprintf("only %d of %d clients connected within %s; first error: %v", connected, total, connectTimeout, firstConnectErr))
		connectErrMu.Unlock()
	}
	if connected == 0 {
		stopClients()
		wg.Wait()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("no stream client connected: %v", firstConnectErr)
	}
	if rssErr == nil {
		if rss1, err := serverRSS(o); err == nil {
			st.RSSDelta = rss1 - rss0
			st.BytesPerClient = float64(st.RSSDelta) / float64(connected)
		}
	}
	if o.Connected != nil {
		o.Connected()
	}
	if selfErr == nil {
		if self1, err := selfRSS(o); err == nil {
			st.ClientBytesPerClient = float64(self1-self0) / float64(connected)
		}
	}
	if ctx.Err() != nil {
		stopClients()
		wg.Wait()
		return ctx.Err()
	}

	// Send, open loop; measure samples whose event time is after the
	// warm-up.
	p := newPoster(o, formatJSON, m)
	defer p.close()
	cpu0, cpuErr := serverCPU(o.Server)
	start := time.Now()
	measureFrom := start.Add(o.Warmup)
	from.Store(measureFrom.UnixMilli())
	m.setPhase("measure")
	// The servers' legs and backlog over the measured phase: read once the
	// warm-up is over, and again after the drain.
	watchc := make(chan *phaseWatch, 1)
	go func() {
		t := time.NewTimer(time.Until(measureFrom))
		defer t.Stop()
		select {
		case <-t.C:
			watchc <- startPhase(ctx, metricsSources(o), o.Token, time.Second)
		case <-ctx.Done():
			watchc <- nil
		}
	}()
	expected, behind, err := sendOpenLoop(ctx, o, p, m, names, subs, start, measureFrom, start.Add(o.Duration))
	sendEnd := time.Now()

	// Let the last deliveries arrive: until every expected sample is in or
	// nothing has come for a second (at most 10 s).
	m.setPhase("drain")
	last, lastAt := m.received.Load(), time.Now()
	for m.received.Load() < expected && time.Since(lastAt) < time.Second && time.Since(sendEnd) < 10*time.Second && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		if n := m.received.Load(); n != last {
			last, lastAt = n, time.Now()
		}
	}
	if w := <-watchc; w != nil {
		var notes []string
		r.Legs, r.Pipeline, notes = w.finish(context.WithoutCancel(ctx))
		r.Notes = append(r.Notes, notes...)
	}
	// Before the clients leave: a client that goes away can be counted as
	// a write error on the server.
	drops := &DropResult{ReconnectNotices: m.reconnectNotices.Load(), CloseNotices: m.closeNotices.Load()}
	dropped1, dropErr := droppedClients(ctx, o)
	if dropErr = errors.Join(droppedErr, dropErr); dropErr != nil {
		r.Notes = append(r.Notes, fmt.Sprintf("dropped clients not read from the server: %v", dropErr))
	} else {
		drops.ServerRead = true
		for reason, n := range dropped1 {
			if d := n - dropped0[reason]; d != 0 {
				if drops.Server == nil {
					drops.Server = make(map[string]int64)
				}
				drops.Server[reason] = d
				drops.ServerTotal += d
			}
		}
	}
	stopClients()
	wg.Wait()
	m.setPhase("done")

	measured := o.Duration - o.Warmup
	r.Seconds = o.Duration.Seconds()
	r.Ingest = p.result(m, r.Seconds)
	r.Ingest.Behind = behind
	st.Messages = m.messages.Load()
	st.Samples = m.received.Load()
	st.Expected = expected
	st.Reconnects = m.reconnects.Load()
	st.Drops = drops
	st.MessagesPerS = float64(st.Messages) / measured.Seconds()
	st.SamplesPerS = float64(st.Samples) / measured.Seconds()
	lat := shards.Merged().Summary()
	r.Latency = &lat
	if o.FleetClients > 0 {
		r.Fleet = fleet.result(o.FleetClients, o.Conflate, r.Ingest.SamplesPerS*measured.Seconds(), measured.Seconds())
		if r.Fleet.Interval.Count > 0 && r.Fleet.Interval.P99Ms > 2*r.Fleet.ConflateMs {
			r.Notes = append(r.Notes, fmt.Sprintf("fleet updates came at p99 %s, more than twice the conflation interval (%s)",
				formatMs(r.Fleet.Interval.P99Ms), formatMs(r.Fleet.ConflateMs)))
		}
	}
	if drops.ServerTotal > 0 || drops.ReconnectNotices > 0 || drops.CloseNotices > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d clients dropped by the server, %d reconnect and %d close notices seen: a healthy run has none",
			drops.ServerTotal, drops.ReconnectNotices, drops.CloseNotices))
	}
	r.Server = serverResult(o.Server, cpu0, cpuErr, 0)
	if got := r.Ingest.EventsPerS; got < 0.95*o.Rate {
		r.Notes = append(r.Notes, fmt.Sprintf("the sender achieved %s of %s events/s: the server (or this machine) did not keep up; the latencies include the backlog",
			FormatCount(got), FormatCount(o.Rate)))
	}
	if st.Samples < st.Expected {
		r.Notes = append(r.Notes, fmt.Sprintf("%s of %s expected samples were not received (clients cut off as slow, or still in flight)",
			FormatCount(float64(st.Expected-st.Samples)), FormatCount(float64(st.Expected))))
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// serverRSS reads the server's resident memory; for an embedded server it
// collects garbage first, so the figure is live memory rather than GC
// timing.
func serverRSS(o Options) (int64, error) {
	if o.Server == nil {
		return 0, errors.New("no server process")
	}
	if o.Embedded {
		runtime.GC()
		debug.FreeOSMemory()
	}
	return o.Server.RSS()
}

// selfRSS reads this process's resident memory after a GC, when the
// server runs elsewhere (embedded, serverRSS covers both sides).
func selfRSS(o Options) (int64, error) {
	if o.Embedded {
		return 0, errors.New("embedded")
	}
	runtime.GC()
	debug.FreeOSMemory()
	return Process{}.RSS()
}

// job is one request of the open-loop sender.
type job struct {
	body   *[]byte
	events int
	// expected is the samples subscribers should receive for the events
	// of the measured phase in this request.
	expected int64
}

// sendOpenLoop sends o.Rate events per second from start to stop, event i
// from machine i mod M stamped with its intended send time, in batches of
// at most o.Batch (or what is due after o.Linger). It returns how many
// samples the subscribers should receive for the acknowledged events of
// the measured phase, and the backlog of events due but never sent.
func sendOpenLoop(ctx context.Context, o Options, p *poster, m *meter, names []string, subs []int64, start, measureFrom, stop time.Time) (expected, behind int64, err error) {
	metrics := metricList(o.Metrics)
	pacer := NewPacer(start, o.Rate, o.Batch)
	jobs := make(chan job, o.Workers)
	pool := sync.Pool{New: func() any {
		b := make([]byte, 0, o.Batch*(64+16*o.Metrics))
		return &b
	}}
	var exp atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	for w := range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				acked, err := p.post(ctx, w, *j.body, j.events)
				pool.Put(j.body)
				if err != nil {
					continue
				}
				if j.events > 0 {
					exp.Add(j.expected * acked / int64(j.events))
				}
				if err := p.failedOut(m); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		}()
	}
	measureMs := measureFrom.UnixMilli()
	timer := time.NewTimer(0)
	defer timer.Stop()
loop:
	for {
		now := time.Now()
		if !now.Before(stop) {
			break
		}
		select {
		case err = <-errc:
			break loop
		default:
		}
		if wake := pacer.NextBatch(o.Batch, o.Linger); now.Before(wake) {
			if stop.Before(wake) {
				wake = stop
			}
			timer.Reset(wake.Sub(now))
			select {
			case <-timer.C:
			case <-ctx.Done():
				break loop
			}
			continue
		}
		lo, hi := pacer.Take(now)
		m.behind.Store(pacer.Behind(now))
		var want int64
		buf := pool.Get().(*[]byte)
		*buf, err = formatJSON.body(*buf, int(hi-lo), metrics, func(j int) (string, int64, int64) {
			i := lo + int64(j)
			k := int(i % int64(len(names)))
			ts := pacer.Intended(i).UnixMilli()
			if ts >= measureMs {
				want += subs[k] * int64(len(metrics))
			}
			return names[k], ts, i
		})
		if err != nil {
			break loop
		}
		select {
		case jobs <- job{body: buf, events: int(hi - lo), expected: want}:
		case <-ctx.Done():
			break loop
		}
	}
	// Events due within the last linger were still waiting for their batch,
	// not behind.
	behind = pacer.Behind(stop.Add(-o.Linger))
	close(jobs)
	wg.Wait()
	m.behind.Store(0)
	return exp.Load(), behind, err
}

// fdReserve is the open files kept for everything but the stream clients:
// HTTP senders, the store, the listener, the runtime.
const fdReserve = 256

// checkOpenFiles raises the open-file limit to what o needs — one file per
// client, two with an embedded server (its side of each connection) — and
// fails at once, naming the most clients that fit, when it cannot.
func checkOpenFiles(o Options) error {
	per := uint64(1)
	if o.Embedded {
		per = 2
	}
	clients := uint64(o.Clients + o.FleetClients)
	need := clients*per + uint64(o.Workers) + fdReserve
	got, err := RaiseOpenFiles(need)
	if err == nil && got >= need {
		return nil
	}
	fit := 0
	if got > uint64(o.Workers)+fdReserve {
		fit = int((got - uint64(o.Workers) - fdReserve) / per)
	}
	hint := "raise the limit (ulimit -n) or lower --clients"
	if o.Embedded {
		hint += "; or run the server separately (twinline serve) and point --target at it, so each process holds one side of each connection"
	} else {
		hint += "; or split the clients over several bench processes"
	}
	return fmt.Errorf("%d clients need %d open files, the limit is %d (at most %d clients fit): %s", clients, need, got, fit, hint)
}

// droppedClients reads twinline_stream_clients_dropped_total{reason} from
// the /metrics of every stream target, by reason, summed.
func droppedClients(ctx context.Context, o Options) (map[string]int64, error) {
	c := &http.Client{Transport: auth.BearerTransport(o.Token, &http.Transport{Proxy: nil})}
	defer c.CloseIdleConnections()
	out := make(map[string]int64)
	for _, t := range o.StreamTargets {
		body, err := fetchMetrics(ctx, c, t)
		if err != nil {
			return nil, fmt.Errorf("reading dropped clients: %w", err)
		}
		one, err := parseDropped(body)
		if err != nil {
			return nil, fmt.Errorf("reading dropped clients of %s: %w", t, err)
		}
		for reason, n := range one {
			out[reason] += n
		}
	}
	return out, nil
}

// parseDropped picks the twinline_stream_clients_dropped_total series out
// of a Prometheus text exposition.
func parseDropped(body []byte) (map[string]int64, error) {
	const name = "twinline_stream_clients_dropped_total{"
	out := make(map[string]int64)
	for line := range bytes.Lines(body) {
		rest, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte(name))
		if !ok {
			continue
		}
		labels, value, ok := bytes.Cut(rest, []byte("} "))
		if !ok {
			return nil, fmt.Errorf("parsing %q: no value", line)
		}
		reason, _ := stringField(labels, `reason="`)
		v, err := strconv.ParseFloat(string(bytes.TrimSpace(value)), 64)
		if err != nil {
			return nil, fmt.Errorf("parsing %q: %w", line, err)
		}
		out[reason] += int64(v)
	}
	return out, nil
}
