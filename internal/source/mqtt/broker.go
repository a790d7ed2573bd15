package mqtt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/tracing"
)

// BrokerOptions configure the embedded broker. The zero value is usable.
type BrokerOptions struct {
	// Ingest says how payloads become events.
	Ingest IngestOptions
	// MaxPacketSize is the largest MQTT packet accepted, in bytes; a
	// client sending a larger one is disconnected (MQTT 5: 0x95). 0 means
	// 256 KiB.
	MaxPacketSize int
	// MaxClients caps the connected clients; further ones are refused at
	// CONNECT (MQTT 5: 0x89 Server busy, 3.1.1: 3 Server unavailable).
	// 0 means 10 000.
	MaxClients int
	// MaxSessionExpiry caps how long the session of a disconnected client
	// is kept (in memory); 0 means 1 hour.
	MaxSessionExpiry time.Duration
	// ReceiveMaximum is how many QoS 1 and 2 messages a client may have
	// unacknowledged; 0 means 64.
	ReceiveMaximum int
	// MaxRetained caps the retained messages one identity (one client id
	// when the broker is open) may have set; a retained publish over it
	// is refused (MQTT 5: 0x97 Quota exceeded). 0 means 1000.
	MaxRetained int
	// MaxRetainedBytes caps the payload bytes of those retained messages;
	// 0 means 1 MiB.
	MaxRetainedBytes int
	// TLSListen, when not empty, is a second address (host:port) that
	// serves MQTT over TLS (MQTTS) with TLSConfig.
	TLSListen string
	// TLSConfig is required with TLSListen. The caller builds it:
	// certificates (GetCertificate to reload them), and for device
	// certificates (mTLS) ClientCAs with ClientAuth
	// tls.VerifyClientCertIfGiven, so that token clients need none. Only
	// a verified client certificate reaches Deps.Authenticate.
	TLSConfig *tls.Config
}

func (o BrokerOptions) withDefaults() BrokerOptions {
	if o.MaxPacketSize <= 0 {
		o.MaxPacketSize = 256 << 10
	}
	if o.MaxClients <= 0 {
		o.MaxClients = 10_000
	}
	if o.MaxSessionExpiry <= 0 {
		o.MaxSessionExpiry = time.Hour
	}
	if o.ReceiveMaximum <= 0 {
		o.ReceiveMaximum = 64
	}
	o.ReceiveMaximum = min(o.ReceiveMaximum, 65535)
	if o.MaxRetained <= 0 {
		o.MaxRetained = 1000
	}
	if o.MaxRetainedBytes <= 0 {
		o.MaxRetainedBytes = 1 << 20
	}
	return o
}

// authTimeout bounds one Authenticate or Authorize call.
const authTimeout = 10 * time.Second

// Broker is the embedded MQTT broker (MQTT 3.1.1 and 5), on TCP and
// optionally TLS. Messages published on telemetry topics are decoded and
// submitted before they are acknowledged; other topics are brokered as
// usual. With Deps.Authenticate, clients are authenticated at CONNECT and
// their publications and subscriptions checked against their identity
// (see the package documentation); without it, every client may connect,
// publish and subscribe. Retained messages are allowed only under
// twinline/ and capped per identity either way.
type Broker struct {
	srv    *mochi.Server
	ln     *listener
	tln    *listener // nil without TLSListen
	h      *handler
	logger *slog.Logger

	authenticate AuthenticateFunc
	authorize    AuthorizeFunc
	ids          identities
	retained     *retainedQuota
	refused      *prometheus.CounterVec // by reason
	authLog      *logLimiter

	// Twin control (control_broker.go).
	ctl             ControlHandlers
	control         *controlMetrics
	deliveries      deliveries
	delivered       *deliverer
	subscribed      *deliverer
	desiredMu       sync.Mutex
	desiredVersions map[string]uint64 // last published, by machine

	// submitCtx ends when Run's context does: a client blocked in a
	// submit lets go, so that the server can close.
	submitCtx    context.Context
	cancelSubmit context.CancelFunc

	started atomic.Bool
	serving atomic.Bool
}

// NewBroker listens on addr (host:port; port 0 picks a free one; "" for
// none), and on opts.TLSListen when set, and returns the broker; Run serves it. opts may
// be the zero value.
func NewBroker(addr string, opts BrokerOptions, deps Deps) (*Broker, error) {
	opts = opts.withDefaults()
	if opts.TLSListen != "" && opts.TLSConfig == nil {
		return nil, errors.New("mqtt: BrokerOptions.TLSConfig is required with TLSListen")
	}
	h, err := newHandler(opts.Ingest, deps, "broker")
	if err != nil {
		return nil, err
	}
	logger := h.logger
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(opts.MaxPacketSize)
	caps.MaximumClients = int64(opts.MaxClients)
	caps.MaximumSessionExpiryInterval = uint32(opts.MaxSessionExpiry / time.Second)
	caps.ReceiveMaximum = uint16(opts.ReceiveMaximum)
	// A PUBACK does not echo the PUBLISH's user properties (mochi's
	// default): with them it would also carry reason code 0x01, which is
	// no PUBACK code, to a device that sent a traceparent.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	srv := mochi.New(&mochi.Options{
		Capabilities: caps,
		// The inline client publishes the desired documents and commands.
		InlineClient: true,
		// mochi's info lines (hooks added, started, stopped) are noise here.
		Logger: slog.New(minLevel{logger.With("lib", "mochi").Handler(), slog.LevelWarn}),
	})
	b := &Broker{
		srv: srv, h: h, logger: logger,
		authenticate: deps.Authenticate, authorize: deps.Authorize,
		retained: newRetainedQuota(opts.MaxRetained, opts.MaxRetainedBytes),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_mqtt_refused_total", ConstLabels: prometheus.Labels{"source": "broker"},
			Help: "MQTT connections, publications and subscriptions the embedded broker refused, by reason: credentials, not_authorized, unavailable (CONNECT); publish, subscribe (ACL); retained_topic, retained_quota.",
		}, []string{"reason"}),
		authLog: newLogLimiter(h.clock, 10),
		ctl:     deps.Control,

		desiredVersions: map[string]uint64{},
	}
	if b.control, err = newControlMetrics(deps.Registerer, "broker"); err != nil {
		return nil, err
	}
	if fn := deps.Control.Delivered; fn != nil {
		b.delivered = newDeliverer("delivered", func(ctx context.Context, r commandRef) error { return fn(ctx, r.machine, r.id) }, logger, b.control)
	}
	if fn := deps.Control.Subscribed; fn != nil {
		b.subscribed = newDeliverer("subscribed", func(ctx context.Context, r commandRef) error { return fn(ctx, r.machine) }, logger, b.control)
	}
	for _, r := range allRefusals {
		b.refused.WithLabelValues(r)
	}
	b.submitCtx, b.cancelSubmit = context.WithCancel(context.Background())
	if err := srv.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("adding mqtt hook: %w", err)
	}
	if err := register(deps.Registerer, b.refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "twinline_mqtt_clients_connected", ConstLabels: prometheus.Labels{"source": "broker"},
		Help: "MQTT clients connected to the embedded broker.",
	}, func() float64 { return float64(atomic.LoadInt64(&srv.Info.ClientsConnected)) })); err != nil {
		return nil, err
	}
	if addr == "" && opts.TLSListen == "" {
		return nil, errors.New("mqtt: no address to listen on")
	}
	if addr != "" {
		nl, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listening for mqtt: %w", err)
		}
		b.ln = &listener{id: "twinline-mqtt", ln: nl, logger: logger}
		if err := srv.AddListener(b.ln); err != nil {
			nl.Close()
			return nil, fmt.Errorf("adding mqtt listener: %w", err)
		}
	}
	if opts.TLSListen != "" {
		tl, err := net.Listen("tcp", opts.TLSListen)
		if err == nil {
			b.tln = &listener{id: "twinline-mqtts", ln: tls.NewListener(tl, opts.TLSConfig), logger: logger}
			if err = srv.AddListener(b.tln); err != nil {
				tl.Close()
			}
		}
		if err != nil {
			if b.ln != nil {
				b.ln.ln.Close()
			}
			return nil, fmt.Errorf("listening for mqtts: %w", err)
		}
	}
	return b, nil
}

// Addr returns the address the broker listens on without TLS (nil when it
// serves MQTTS only).
func (b *Broker) Addr() net.Addr {
	if b.ln == nil {
		return nil
	}
	return b.ln.ln.Addr()
}

// TLSAddr returns the address the broker serves MQTTS on, or nil without
// TLSListen.
func (b *Broker) TLSAddr() net.Addr {
	if b.tln == nil {
		return nil
	}
	return b.tln.ln.Addr()
}

// Ready reports whether the broker is serving.
func (b *Broker) Ready() error {
	if !b.serving.Load() {
		return errors.New("mqtt broker not serving")
	}
	return nil
}

// Run serves clients until ctx ends, then disconnects them, closes the
// listener and returns. A message whose submit is cut short by the end is
// not acknowledged, so its client sends it again after reconnecting.
func (b *Broker) Run(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("mqtt broker already run")
	}
	b.serving.Store(true)
	if err := b.srv.Serve(); err != nil {
		b.serving.Store(false)
		b.cancelSubmit()
		for _, l := range []*listener{b.ln, b.tln} {
			if l != nil {
				l.ln.Close()
			}
		}
		return fmt.Errorf("serving mqtt: %w", err)
	}
	var attrs []any
	if b.ln != nil {
		attrs = append(attrs, "addr", b.Addr().String())
	}
	if b.tln != nil {
		attrs = append(attrs, "tls_addr", b.TLSAddr().String())
	}
	b.logger.Info("mqtt broker listening", attrs...)
	var delivering sync.WaitGroup
	for _, d := range []*deliverer{b.delivered, b.subscribed} {
		if d != nil {
			delivering.Go(func() {
				d.run(b.submitCtx, func() (context.Context, context.CancelFunc) {
					return context.WithTimeout(b.submitCtx, b.h.opts.SubmitTimeout)
				})
			})
		}
	}
	<-ctx.Done()
	b.serving.Store(false)
	b.cancelSubmit()
	delivering.Wait()
	if err := b.srv.Close(); err != nil {
		return fmt.Errorf("closing mqtt broker: %w", err)
	}
	return nil
}

// hook authenticates clients, checks their topics and intercepts PUBLISH
// packets on telemetry topics. mochi calls OnPublish in the client's read
// loop before it writes the PUBACK (PUBREC for QoS 2), so the
// acknowledgement leaves only once the submit has returned.
type hook struct {
	mochi.HookBase
	b *Broker
}

func (h *hook) ID() string { return "twinline-telemetry" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mochi.OnConnect, mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnSubscribed,
		mochi.OnPublish, mochi.OnWill, mochi.OnDisconnect, mochi.OnClientExpired, mochi.OnRetainedExpired,
		mochi.OnQosPublish, mochi.OnQosComplete, mochi.OnQosDropped,
	}, []byte{b})
}

// OnConnect authenticates the client. It answers a refusal itself:
// mochi's own (OnConnectAuthenticate returning false) is always 0x86,
// which it turns into the 3.1.1 code 5 (Not authorized) instead of 4 (Bad
// user name or password), and it cannot say 0x87 or 0x88. Returning the
// error ends the connection without a second CONNACK.
func (h *hook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	b := h.b
	if b.authenticate == nil {
		return nil
	}
	var cert *x509.Certificate
	if len(pk.Connect.Password) == 0 {
		cert = peerCertificate(cl.Net.Conn)
	}
	ctx, cancel := context.WithTimeout(b.submitCtx, authTimeout)
	id, err := b.authenticate(ctx, string(pk.Connect.Username), pk.Connect.Password, cert)
	cancel()
	var refusal connRefusal
	switch {
	case err != nil:
		refusal = connRefusalFor(err)
	case !id.Can(auth.ScopeIngest) && !id.Can(auth.ScopeRead):
		refusal, err = connNotAuthorized, errors.New("neither ingest nor read scope")
	case cl.Properties.Will.Flag == 1 && !mayPublish(id, cl.Properties.Will.TopicName):
		// mochi publishes the will without an ACL check.
		refusal, err = connNotAuthorized, fmt.Errorf("will topic %q not writable", cl.Properties.Will.TopicName)
	default:
		b.ids.set(cl, id)
		return nil
	}
	b.refused.WithLabelValues(refusal.reason).Inc()
	b.logRefusal("refusing mqtt connection", cl, "reason", refusal.reason, "user", string(pk.Connect.Username), "err", err)
	code := refusal.v5
	if cl.Properties.ProtocolVersion < 5 {
		code = refusal.v3
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code.Code}
	if cl.Properties.ProtocolVersion == 5 {
		ack.Properties.ReasonString = code.Reason
	}
	if werr := cl.WritePacket(ack); werr != nil {
		return fmt.Errorf("writing mqtt connack: %w", werr)
	}
	return code
}

// OnConnectAuthenticate lets in a client OnConnect verified, or every
// client without Authenticate.
func (h *hook) OnConnectAuthenticate(cl *mochi.Client, _ packets.Packet) bool {
	if h.b.authenticate == nil {
		return true
	}
	_, ok := h.b.ids.get(cl)
	return ok
}

// OnACLCheck checks a publication (write), a subscription filter or a
// delivery (the topic of a message for a subscriber: a session inherited
// by a new connection is judged by the new identity) against the client's
// identity.
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	b := h.b
	if b.authenticate == nil {
		return true
	}
	id, ok := b.ids.get(cl)
	if !ok {
		return false
	}
	if !write {
		return maySubscribe(id, topic)
	}
	if topic == "" {
		// Named by an MQTT 5 topic alias, which mochi resolves after
		// this check: OnPublish checks the resolved topic.
		return true
	}
	if mayPublish(id, topic) {
		return true
	}
	b.refused.WithLabelValues(refusedPublish).Inc()
	b.logRefusal("refusing mqtt publish", cl, "topic", topic, "identity", id.Name)
	return false
}

// OnSubscribed counts the filters OnACLCheck refused.
func (h *hook) OnSubscribed(cl *mochi.Client, pk packets.Packet, codes []byte) {
	b := h.b
	b.commandsSubscribed(cl, pk, codes)
	if b.authenticate == nil {
		return
	}
	id, _ := b.ids.get(cl)
	for _, f := range pk.Filters {
		if !maySubscribe(id, f.Filter) {
			b.refused.WithLabelValues(refusedSubscribe).Inc()
			b.logRefusal("refusing mqtt subscription", cl, "filter", f.Filter, "identity", id.Name)
		}
	}
}

// OnDisconnect forgets the identity of a client whose session ends with
// the connection; a kept session keeps it, for the messages queued for it.
func (h *hook) OnDisconnect(cl *mochi.Client, _ error, expire bool) {
	if expire {
		h.b.ids.drop(cl)
		h.b.deliveries.drop(cl.ID)
	}
}

// OnClientExpired forgets the identity of a session that expired.
func (h *hook) OnClientExpired(cl *mochi.Client) {
	h.b.ids.drop(cl)
	h.b.deliveries.drop(cl.ID)
}

// OnRetainedExpired frees the quota of an expired retained message.
func (h *hook) OnRetainedExpired(topic string) { h.b.retained.expired(topic) }

// OnWill keeps the retained message rules for a will (mochi publishes it
// without OnPublish): a will outside twinline/ or over the quota is
// published without the retain flag.
func (h *hook) OnWill(cl *mochi.Client, will mochi.Will) (mochi.Will, error) {
	if !will.Retain {
		return will, nil
	}
	b := h.b
	if !strings.HasPrefix(will.TopicName, topicRoot) {
		b.refused.WithLabelValues(refusedRetainedTopic).Inc()
		will.Retain = false
		return will, nil
	}
	if !b.retained.admit(retainedOwner(cl, b.identity(cl)), will.TopicName, len(will.Payload), true) {
		b.refused.WithLabelValues(refusedRetainedQuota).Inc()
		will.Retain = false
	}
	return will, nil
}

func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	b := h.b
	if cl.Net.Inline {
		// The broker's own: desired documents and commands.
		return pk, nil
	}
	id := b.identity(cl)
	if b.authenticate != nil && !mayPublish(id, pk.TopicName) {
		// Only a topic alias gets here (OnACLCheck saw an empty name), and
		// an alias is only ever set by a publish the ACL let through.
		b.refused.WithLabelValues(refusedPublish).Inc()
		return b.refuse(cl, pk, outcome{code: codeNotAuthorized, detail: "not authorized"})
	}
	retain := pk.FixedHeader.Retain
	var owner string
	if retain {
		if !strings.HasPrefix(pk.TopicName, topicRoot) {
			b.refused.WithLabelValues(refusedRetainedTopic).Inc()
			b.logRefusal("refusing mqtt retained message", cl, "topic", pk.TopicName, "reason", refusedRetainedTopic)
			return b.refuse(cl, pk, outcome{code: codeNotAuthorized, detail: "retained messages only under " + topicRoot})
		}
		owner = retainedOwner(cl, id)
		if !b.retained.admit(owner, pk.TopicName, len(pk.Payload), false) {
			b.refused.WithLabelValues(refusedRetainedQuota).Inc()
			b.logRefusal("refusing mqtt retained message", cl, "topic", pk.TopicName, "reason", refusedRetainedQuota)
			return b.refuse(cl, pk, outcome{code: codeQuotaExceeded, detail: "retained message quota exceeded"})
		}
	}
	if isTelemetryTopic(pk.TopicName) {
		var authorize func(Topic) error
		if b.authorize != nil {
			authorize = func(t Topic) error {
				ctx, cancel := context.WithTimeout(b.submitCtx, authTimeout)
				defer cancel()
				return b.authorize(ctx, id, t.Machine)
			}
		}
		ctx, span := b.submitCtx, trace.Span(nil)
		if b.h.tracer != nil {
			ctx, span = b.h.startReceive(ctx, pk.TopicName, cl.ID, userPropertiesTrace(pk.Properties.User), nil, 1, len(pk.Payload))
		}
		p, out := b.h.prepare(pk.TopicName, pk.Payload, authorize)
		if p != nil {
			if span != nil {
				p.batch.Trace = tracing.Sampled(span)
			}
			out = b.h.submitOnce(auth.NewContext(ctx, id), p)
		}
		b.h.finish(ctx, pk.TopicName, cl.ID, p, out)
		if span != nil && span.IsRecording() {
			endReceive(span, out)
		}
		if out.reason != "" {
			return b.refuse(cl, pk, out)
		}
	}
	if handled, out := b.handleControl(cl, id, pk); handled && out.reason != "" {
		return b.refuse(cl, pk, out)
	}
	if retain && !b.retained.admit(owner, pk.TopicName, len(pk.Payload), true) {
		// Another connection of the same identity took the quota since
		// the check above: deliver, but do not retain.
		pk.FixedHeader.Retain = false
	}
	return pk, nil
}

// userPropertiesTrace returns the trace context of an MQTT 5 message's
// traceparent and tracestate user properties.
func userPropertiesTrace(props []packets.UserProperty) trace.SpanContext {
	var tp, ts string
	for _, p := range props {
		switch p.Key {
		case tracing.TraceparentKey:
			tp = p.Val
		case tracing.TracestateKey:
			ts = p.Val
		}
	}
	return tracing.Remote(tp, ts)
}

// identity returns the identity cl acts as: auth.Anonymous without
// Authenticate.
func (b *Broker) identity(cl *mochi.Client) auth.Identity {
	if b.authenticate == nil {
		return auth.Anonymous
	}
	id, _ := b.ids.get(cl)
	return id
}

// refuse answers a publish that is not taken: out.code in the PUBACK
// (PUBREC) of an MQTT 5 client; for MQTT 3.1.1, which has no negative
// acknowledgement, the connection is closed when sending again may
// succeed (out.retry), and the message acknowledged and dropped otherwise.
// A QoS 0 message is dropped (and not relayed).
func (b *Broker) refuse(cl *mochi.Client, pk packets.Packet, out outcome) (packets.Packet, error) {
	qos := pk.FixedHeader.Qos
	switch {
	case qos == 0:
		return pk, packets.CodeSuccessIgnore
	case cl.Properties.ProtocolVersion == 5:
		// mochi would answer a QoS 2 publish with a PUBACK here, so the
		// negative acknowledgement is written by the hook.
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID:    pk.PacketID,
			ReasonCode:  out.code,
			Properties:  packets.Properties{ReasonString: truncate(out.detail, maxReasonString)},
		}
		if qos == 2 {
			ack.FixedHeader.Type = packets.Pubrec
		}
		if err := cl.WritePacket(ack); err != nil {
			b.logger.Debug("writing mqtt negative acknowledgement", "client", cl.ID, "err", err)
		}
		return pk, packets.ErrRejectPacket
	case out.retry():
		cl.Stop(packets.ErrServerBusy)
		return pk, packets.ErrRejectPacket
	default:
		return pk, packets.CodeSuccessIgnore
	}
}

// logRefusal logs a refused connection, publication or subscription, at
// most a few per second.
func (b *Broker) logRefusal(msg string, cl *mochi.Client, attrs ...any) {
	ok, suppressed := b.authLog.allow()
	if !ok {
		return
	}
	attrs = append(attrs, "client", cl.ID, "remote", cl.Net.Remote)
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	b.logger.Warn(msg, attrs...)
}

// listener serves mochi on a net.Listener opened by NewBroker, so that the
// address (and a bind error) is known before Run, and logs client errors at
// debug level rather than as warnings.
type listener struct {
	id     string
	ln     net.Listener
	logger *slog.Logger
	once   sync.Once

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{} // accepted, not yet ended
	wg     sync.WaitGroup        // their establish calls
}

// closeGrace is how long, at shutdown, connections get to take their
// DISCONNECT before they are closed: mochi waits for every connection,
// also one that never sent CONNECT, until its read deadline otherwise.
const closeGrace = 2 * time.Second

func (l *listener) Init(*slog.Logger) error { return nil }
func (l *listener) ID() string              { return l.id }
func (l *listener) Address() string         { return l.ln.Addr().String() }
func (l *listener) Protocol() string        { return "tcp" }

func (l *listener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			conn.Close()
			continue
		}
		if l.conns == nil {
			l.conns = map[net.Conn]struct{}{}
		}
		l.conns[conn] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			if err := establish(l.ID(), conn); err != nil {
				l.logger.Debug("mqtt connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
			l.mu.Lock()
			delete(l.conns, conn)
			l.mu.Unlock()
		}()
	}
}

// Close stops accepting, disconnects the clients and returns once every
// connection has ended: mochi waits for its connections after this, and a
// connection it had not counted yet would race with that wait.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		l.ln.Close()
		closeClients(l.ID())
		ended := make(chan struct{})
		go func() { l.wg.Wait(); close(ended) }()
		select {
		case <-ended:
		case <-time.After(closeGrace):
			// Still open after the grace — a connection that never sent
			// CONNECT, a client not reading: close it.
			l.mu.Lock()
			for c := range l.conns {
				c.Close()
			}
			l.mu.Unlock()
			<-ended
		}
	})
}

// minLevel drops records below a level.
type minLevel struct {
	slog.Handler
	level slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.level}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.level}
}
