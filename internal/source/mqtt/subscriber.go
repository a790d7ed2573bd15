package mqtt

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

// SubscriberOptions configure the subscriber to an external broker. The
// zero value is usable. The broker URL's query may override ClientID
// (client_id), Group (group; empty: no shared subscription) and
// SessionExpiry (session_expiry, a Go duration).
type SubscriberOptions struct {
	// Ingest says how payloads become events.
	Ingest IngestOptions
	// ClientID must be stable across restarts, for the broker to keep the
	// session, and unique per replica; "" means "twinline-" + host name.
	ClientID string
	// Group is the shared-subscription group: the filter becomes
	// $share/{Group}/twinline/+/+/+/telemetry and each message goes to one
	// replica of the group. "" means "twinline"; "-" means no shared
	// subscription (every subscriber gets every message).
	Group string
	// SessionExpiry is how long the broker keeps the session, and the QoS 1
	// messages for it, while the subscriber is disconnected; 0 means 1 hour.
	SessionExpiry time.Duration
	// KeepAlive is the MQTT keep-alive; 0 means 30 s.
	KeepAlive time.Duration
	// ReceiveMaximum is how many unacknowledged messages the broker may
	// send; 0 means 256.
	ReceiveMaximum int
	// Workers decode and submit messages concurrently, each submitting
	// what has queued up for it as one batch; the messages of one topic go
	// to one worker, in order, and acknowledgements go out in the order
	// the messages came. 0 means 4.
	Workers int
	// MinBackoff and MaxBackoff bound the delay between reconnection
	// attempts (exponential, jittered); 0 means 250 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// ConnectTimeout bounds one connection attempt; 0 means 10 s.
	ConnectTimeout time.Duration
	// DrainTimeout is how long, at shutdown, submits in progress may take
	// to finish (and be acknowledged); 0 means 5 s.
	DrainTimeout time.Duration
	// Username and Password authenticate to a secured broker (sent only
	// when Username is not empty). User information in the broker URL
	// (mqtt://user:password@host) overrides them.
	Username, Password string
}

func (o SubscriberOptions) withDefaults() SubscriberOptions {
	if o.ClientID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "local"
		}
		o.ClientID = "twinline-" + host
	}
	switch o.Group {
	case "":
		o.Group = "twinline"
	case "-":
		o.Group = ""
	}
	if o.SessionExpiry <= 0 {
		o.SessionExpiry = time.Hour
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.ReceiveMaximum <= 0 {
		o.ReceiveMaximum = 256
	}
	o.ReceiveMaximum = min(o.ReceiveMaximum, 65535)
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 250 * time.Millisecond
	}
	if o.MaxBackoff <= o.MinBackoff {
		o.MaxBackoff = max(30*time.Second, 2*o.MinBackoff)
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 5 * time.Second
	}
	return o
}

// Subscriber consumes telemetry from an external MQTT 5 broker with a
// persistent session, QoS 1 and manual acknowledgement: a message is
// acknowledged only once its events are durable (or it was rejected as
// bad), so the broker sends an unacknowledged one again after a crash or a
// reconnection.
type Subscriber struct {
	url    *url.URL
	opts   SubscriberOptions
	h      *handler
	logger *slog.Logger
	filter string

	connected    atomic.Bool // connection up and subscription granted
	connMu       sync.Mutex  // orders connection state changes
	connGen      uint64      // counts connections up and down, under connMu
	connGauge    prometheus.Gauge
	connectFails prometheus.Counter
	started      atomic.Bool

	work []chan paho.PublishReceived // one per worker, chosen by topic
	stop chan struct{}

	// Twin control (control_subscriber.go).
	cm              atomic.Pointer[autopaho.ConnectionManager] // while Run runs
	ctl             ControlHandlers
	control         *controlMetrics
	delivered       *deliverer
	desiredMu       sync.Mutex
	desiredVersions map[string]uint64 // last published, by machine
}

// NewSubscriber returns a subscriber to the broker at brokerURL
// (mqtt://, tcp://, mqtts://, tls://, ws:// or wss://, with optional
// user:password@); Run connects. opts may be the zero value.
func NewSubscriber(brokerURL string, opts SubscriberOptions, deps Deps) (*Subscriber, error) {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return nil, fmt.Errorf("parsing mqtt broker url: %w", err)
	}
	switch u.Scheme {
	case "mqtt", "tcp", "mqtts", "tls", "ssl", "ws", "wss":
	default:
		return nil, fmt.Errorf("mqtt broker url %q: scheme must be mqtt, tcp, mqtts, tls, ssl, ws or wss", brokerURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("mqtt broker url %q has no host", brokerURL)
	}
	q := u.Query()
	if v, ok := q["client_id"]; ok {
		opts.ClientID = v[0]
	}
	if v, ok := q["group"]; ok {
		opts.Group = v[0]
		if opts.Group == "" {
			opts.Group = "-"
		}
	}
	if v := q.Get("session_expiry"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("mqtt broker url: session_expiry %q is not a positive duration", v)
		}
		opts.SessionExpiry = d
	}
	u.RawQuery = ""
	opts = opts.withDefaults()
	if strings.ContainsAny(opts.Group, "/+#") {
		return nil, fmt.Errorf("mqtt shared subscription group %q must not contain / + or #", opts.Group)
	}
	h, err := newHandler(opts.Ingest, deps, "subscriber")
	if err != nil {
		return nil, err
	}
	s := &Subscriber{
		url: u, opts: opts, h: h, logger: h.logger,
		filter: TelemetryFilter,
		connGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "twinline_mqtt_connected", ConstLabels: prometheus.Labels{"source": "subscriber"},
			Help: "1 while the subscriber is connected to the external MQTT broker and subscribed.",
		}),
		connectFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_mqtt_connect_errors_total", ConstLabels: prometheus.Labels{"source": "subscriber"},
			Help: "Failed connection attempts to the external MQTT broker.",
		}),
		stop: make(chan struct{}),

		ctl:             deps.Control,
		desiredVersions: map[string]uint64{},
	}
	if s.control, err = newControlMetrics(deps.Registerer, "subscriber"); err != nil {
		return nil, err
	}
	if fn := deps.Control.Delivered; fn != nil {
		s.delivered = newDeliverer("delivered", func(ctx context.Context, r commandRef) error { return fn(ctx, r.machine, r.id) }, h.logger, s.control)
	}
	for range opts.Workers {
		s.work = append(s.work, make(chan paho.PublishReceived, opts.ReceiveMaximum))
	}
	if opts.Group != "" {
		s.filter = "$share/" + opts.Group + "/" + TelemetryFilter
	}
	if err := register(deps.Registerer, s.connGauge, s.connectFails); err != nil {
		return nil, err
	}
	return s, nil
}

// Filter returns the topic filter the subscriber subscribes to.
func (s *Subscriber) Filter() string { return s.filter }

// Ready reports whether the subscriber is connected and subscribed.
func (s *Subscriber) Ready() error {
	if !s.connected.Load() {
		return fmt.Errorf("not connected to mqtt broker %s", s.url.Host)
	}
	return nil
}

// Run connects (and reconnects, with backoff) and consumes messages until
// ctx ends. Then it stops taking messages, lets submits in progress finish
// for up to DrainTimeout, and disconnects; messages not acknowledged by
// then are sent again by the broker when the session resumes.
func (s *Subscriber) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("mqtt subscriber already run")
	}
	// The connection and the submits outlive ctx a little: acknowledgements
	// of the last submits still go out.
	connCtx, stopConn := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConn()
	submitCtx, stopSubmits := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSubmits()

	var subscribing sync.WaitGroup // subscribe calls, one per connection
	username, password := s.opts.Username, s.opts.Password
	if s.url.User != nil {
		username = s.url.User.Username()
		password, _ = s.url.User.Password()
	}
	srv := *s.url
	srv.User = nil
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{&srv},
		KeepAlive:                     uint16(max(s.opts.KeepAlive/time.Second, 1)),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(s.opts.SessionExpiry / time.Second),
		ReconnectBackoff:              autopaho.NewExponentialBackoff(s.opts.MinBackoff, s.opts.MaxBackoff, s.opts.MinBackoff*2, 2),
		ConnectTimeout:                s.opts.ConnectTimeout,
		ConnectUsername:               username,
		ConnectPassword:               []byte(password),
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ca *paho.Connack) {
			s.logger.Info("mqtt connected", "broker", srv.Host, "session_present", ca.SessionPresent)
			gen := s.connChange()
			subscribing.Go(func() { s.subscribe(connCtx, cm, gen) })
		},
		OnConnectionDown: func() bool {
			s.connChange()
			s.logger.Warn("mqtt connection lost", "broker", srv.Host)
			return true
		},
		OnConnectError: func(err error) {
			s.connectFails.Inc()
			s.logger.Warn("connecting to mqtt broker", "broker", srv.Host, "err", err)
		},
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if c.Properties == nil {
				c.Properties = &paho.ConnectProperties{}
			}
			rm := uint16(s.opts.ReceiveMaximum)
			c.Properties.ReceiveMaximum = &rm
			return c, nil
		},
		Errors:     pahoLogger{s.logger, slog.LevelDebug},
		PahoErrors: pahoLogger{s.logger, slog.LevelDebug},
		ClientConfig: paho.ClientConfig{
			ClientID:                   s.opts.ClientID,
			EnableManualAcknowledgment: true,
			OnPublishReceived:          []func(paho.PublishReceived) (bool, error){s.receive},
		},
	}
	if username == "" {
		cfg.ConnectPassword = nil
	}
	if tlsScheme(strings.ToLower(srv.Scheme)) {
		cfg.AttemptConnection = dialTLSLocked(cfg.TlsCfg)
	}
	cm, err := autopaho.NewConnection(connCtx, cfg)
	if err != nil {
		return fmt.Errorf("starting mqtt connection: %w", err)
	}

	s.cm.Store(cm)
	var wg sync.WaitGroup
	for _, work := range s.work {
		wg.Go(func() { s.worker(submitCtx, work) })
	}
	var delivering sync.WaitGroup
	if s.delivered != nil {
		delivering.Go(func() {
			s.delivered.run(ctx, func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(submitCtx, s.h.opts.SubmitTimeout)
			})
		})
	}

	<-ctx.Done()
	s.cm.Store(nil)
	delivering.Wait()
	close(s.stop)
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	timer := time.NewTimer(s.opts.DrainTimeout)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		stopSubmits()
		<-drained
	}
	s.connChange()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ConnectTimeout)
	defer cancel()
	if err := cm.Disconnect(dctx); err != nil && !errors.Is(err, autopaho.ConnectionDownError) {
		s.logger.Debug("disconnecting from mqtt broker", "err", err)
	}
	stopConn()
	<-cm.Done()
	subscribing.Wait()
	return nil
}

// subscribe subscribes to the telemetry filter on a new connection (the
// session may already hold the subscription; subscribing again is
// harmless).
func (s *Subscriber) subscribe(ctx context.Context, cm *autopaho.ConnectionManager, gen uint64) {
	sctx, cancel := context.WithTimeout(ctx, s.opts.ConnectTimeout)
	defer cancel()
	filters := append([]string{s.filter}, s.controlFilters()...)
	subs := make([]paho.SubscribeOptions, len(filters))
	for i, f := range filters {
		subs[i] = paho.SubscribeOptions{
			Topic: f, QoS: 1,
			RetainHandling: 2, // no retained messages: they are old events (or old patches)
		}
	}
	sa, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: subs})
	if err != nil {
		s.logger.Error("subscribing to mqtt telemetry", "filters", filters, "err", err)
		return
	}
	if len(sa.Reasons) != len(filters) || slices.ContainsFunc(sa.Reasons, func(r byte) bool { return r >= 0x80 }) {
		s.logger.Error("mqtt subscription refused", "filters", filters, "reasons", sa.Reasons)
		return
	}
	s.connMu.Lock()
	if s.connGen == gen { // still the same connection
		s.setConnected(true)
	}
	s.connMu.Unlock()
	s.logger.Info("mqtt subscribed", "filter", s.filter, "qos", sa.Reasons[0])
}

// connChange marks a connection going up or down as not (yet) ready and
// returns the new connection generation.
func (s *Subscriber) connChange() uint64 {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	s.connGen++
	s.setConnected(false)
	return s.connGen
}

func (s *Subscriber) setConnected(up bool) {
	s.connected.Store(up)
	if up {
		s.connGauge.Set(1)
	} else {
		s.connGauge.Set(0)
	}
}

// receive queues a message for a worker, chosen by topic so that the
// messages of one machine are submitted in the order they came. A queue
// holds ReceiveMaximum messages, as many as the broker may have
// unacknowledged, so it does not block paho's router.
func (s *Subscriber) receive(pr paho.PublishReceived) (bool, error) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(pr.Packet.Topic))
	select {
	case s.work[h.Sum32()%uint32(len(s.work))] <- pr:
	case <-s.stop:
		// Shutting down: not acknowledged, sent again later.
	}
	return true, nil
}

// worker handles queued messages until the subscriber stops.
func (s *Subscriber) worker(ctx context.Context, work <-chan paho.PublishReceived) {
	var msgs []paho.PublishReceived
	for {
		select {
		case <-s.stop:
			return
		case pr := <-work:
			// Take what else is queued: one submit (one durable commit)
			// for all of it.
			msgs = append(msgs[:0], pr)
		collect:
			for len(msgs) < maxBatchMessages {
				select {
				case pr := <-work:
					msgs = append(msgs, pr)
				default:
					break collect
				}
			}
			if !s.handle(ctx, msgs) {
				continue
			}
			for _, pr := range msgs {
				if err := pr.Client.Ack(pr.Packet); err != nil {
					// The connection that brought it is gone: the broker
					// sends it again on the next one.
					s.logger.Debug("acknowledging mqtt message", "topic", pr.Packet.Topic, "err", err)
				}
			}
			clear(msgs)
		}
	}
}

// maxBatchMessages bounds how many messages one submit carries.
const maxBatchMessages = 256

// handle decodes messages and submits their events together, and reports
// whether the messages may be acknowledged: their events are stored, or
// they are bad and never will be.
func (s *Subscriber) handle(ctx context.Context, msgs []paho.PublishReceived) bool {
	var ps []*prepared
	for _, pr := range msgs {
		if t := parseControlTopic(pr.Packet.Topic); t.kind == kindReported || t.kind == kindResponse {
			if !s.handleControl(ctx, t, pr) {
				return false
			}
			continue
		}
		p, out := s.h.prepare(pr.Packet.Topic, pr.Packet.Payload, nil)
		if p == nil {
			s.h.finish(ctx, pr.Packet.Topic, s.opts.ClientID, nil, out)
			continue
		}
		if s.h.tracer != nil && pr.Packet.Properties != nil {
			p.batch.Trace = propertiesTrace(pr.Packet.Properties.User) // the sender's, for submit's span
		}
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		return true
	}
	return s.submit(ctx, ps)
}

// submit submits the events of ps as one batch. A submit that fails for a
// reason that may pass is tried again, with backoff, until it succeeds or
// the subscriber stops (false: not to be acknowledged). A batch the log
// can never take is split into its messages.
func (s *Subscriber) submit(ctx context.Context, ps []*prepared) bool {
	all := ps[0]
	if len(ps) > 1 {
		n := 0
		for _, p := range ps {
			n += len(p.batch.Events)
		}
		events := make([]telemetry.Event, 0, n)
		for _, p := range ps {
			events = append(events, p.batch.Events...)
		}
		all = &prepared{batch: &telemetry.Batch{Events: events, Protocol: protocol, Received: ps[0].batch.Received}}
	}
	ctx, span := s.startReceive(ctx, ps, all)
	var last outcome
	if span.IsRecording() {
		defer func() { endReceive(span, last) }()
	}
	client := s.opts.ClientID
	delay := backoffStart
	for {
		out := s.h.submitOnce(ctx, all)
		last = out
		if out.reason == reasonUnprocessable && len(ps) > 1 {
			ok := true
			for _, p := range ps {
				ok = s.submit(ctx, []*prepared{p}) && ok
			}
			return ok
		}
		if !out.retry() {
			s.h.finishBatch(ctx, client, ps, out)
			return true
		}
		if ctx.Err() != nil {
			s.h.finishBatch(ctx, client, ps, out)
			return false
		}
		s.logger.Warn("submitting mqtt messages, will retry", "messages", len(ps), "topic", ps[0].topicName,
			"reason", out.reason, "detail", out.detail, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		case <-s.stop:
			t.Stop()
			s.h.finishBatch(ctx, client, ps, out)
			return false
		}
		delay = min(2*delay, backoffMax)
	}
}

// Retry delays of a submit or a control handler that may pass later.
const (
	backoffStart = 50 * time.Millisecond
	backoffMax   = 5 * time.Second
)

// wait waits d, and reports false when the subscriber stops first.
func (s *Subscriber) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.stop:
		return false
	}
}

// startReceive starts the receive span of the messages ps, submitted
// together as all: a child of the first sampled trace context they
// carried (else of the first one's, or a new root), linked to the other
// sampled ones. all's batch carries the span on when it is sampled.
func (s *Subscriber) startReceive(ctx context.Context, ps []*prepared, all *prepared) (context.Context, trace.Span) {
	if s.h.tracer == nil {
		return ctx, trace.SpanFromContext(context.Background())
	}
	parent := ps[0].batch.Trace
	var links []trace.Link
	for i, p := range ps {
		switch sc := p.batch.Trace; {
		case !sc.IsSampled():
		case !parent.IsSampled():
			parent = sc
		case i > 0 && !sc.Equal(parent):
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	ctx, span := s.h.startReceive(ctx, ps[0].topicName, s.opts.ClientID, parent, links, len(ps), 0)
	all.batch.Trace = tracing.Sampled(span)
	return ctx, span
}

// propertiesTrace returns the trace context of an MQTT 5 message's
// traceparent and tracestate user properties.
func propertiesTrace(props paho.UserProperties) trace.SpanContext {
	var tp, ts string
	for _, p := range props {
		switch p.Key {
		case tracing.TraceparentKey:
			tp = p.Value
		case tracing.TracestateKey:
			ts = p.Value
		}
	}
	return tracing.Remote(tp, ts)
}

// pahoLogger adapts slog to paho's logger interface.
type pahoLogger struct {
	logger *slog.Logger
	level  slog.Level
}

func (l pahoLogger) Println(v ...any) {
	l.logger.Log(context.Background(), l.level, strings.TrimSpace(fmt.Sprintln(v...)), "lib", "paho")
}

func (l pahoLogger) Printf(format string, v ...any) {
	l.logger.Log(context.Background(), l.level, fmt.Sprintf(format, v...), "lib", "paho")
}
