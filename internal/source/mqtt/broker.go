package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
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
	return o
}

// Broker is the embedded MQTT broker (MQTT 3.1.1 and 5). Messages published
// on telemetry topics are decoded and submitted before they are
// acknowledged; other topics are brokered as usual. Every client may
// connect, publish and subscribe: bind it to loopback or a trusted network.
type Broker struct {
	srv    *mochi.Server
	ln     *listener
	h      *handler
	logger *slog.Logger

	// submitCtx ends when Run's context does: a client blocked in a
	// submit lets go, so that the server can close.
	submitCtx    context.Context
	cancelSubmit context.CancelFunc

	started atomic.Bool
	serving atomic.Bool
}

// NewBroker listens on addr (host:port; port 0 picks a free one) and
// returns the broker; Run serves it. opts may be the zero value.
func NewBroker(addr string, opts BrokerOptions, deps Deps) (*Broker, error) {
	opts = opts.withDefaults()
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
	srv := mochi.New(&mochi.Options{
		Capabilities: caps,
		// mochi's info lines (hooks added, started, stopped) are noise here.
		Logger: slog.New(minLevel{logger.With("lib", "mochi").Handler(), slog.LevelWarn}),
	})
	b := &Broker{srv: srv, h: h, logger: logger}
	b.submitCtx, b.cancelSubmit = context.WithCancel(context.Background())
	if err := srv.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("adding mqtt hook: %w", err)
	}
	if err := register(deps.Registerer, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "twinline_mqtt_clients_connected", ConstLabels: prometheus.Labels{"source": "broker"},
		Help: "MQTT clients connected to the embedded broker.",
	}, func() float64 { return float64(atomic.LoadInt64(&srv.Info.ClientsConnected)) })); err != nil {
		return nil, err
	}
	nl, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for mqtt: %w", err)
	}
	b.ln = &listener{ln: nl, logger: logger}
	if err := srv.AddListener(b.ln); err != nil {
		nl.Close()
		return nil, fmt.Errorf("adding mqtt listener: %w", err)
	}
	return b, nil
}

// Addr returns the address the broker listens on.
func (b *Broker) Addr() net.Addr { return b.ln.ln.Addr() }

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
		b.ln.ln.Close()
		return fmt.Errorf("serving mqtt: %w", err)
	}
	b.logger.Info("mqtt broker listening", "addr", b.Addr().String())
	<-ctx.Done()
	b.serving.Store(false)
	b.cancelSubmit()
	if err := b.srv.Close(); err != nil {
		return fmt.Errorf("closing mqtt broker: %w", err)
	}
	return nil
}

// hook intercepts PUBLISH packets on telemetry topics. mochi calls OnPublish
// in the client's read loop before it writes the PUBACK (PUBREC for QoS 2),
// so the acknowledgement leaves only once the submit has returned.
type hook struct {
	mochi.HookBase
	b *Broker
}

func (h *hook) ID() string { return "twinline-telemetry" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPublish}, []byte{b})
}

// OnConnectAuthenticate lets every client in: the broker is meant for
// loopback or a trusted network.
func (h *hook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

// OnACLCheck lets every client publish and subscribe anywhere.
func (h *hook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if !isTelemetryTopic(pk.TopicName) {
		return pk, nil
	}
	b := h.b
	p, out := b.h.prepare(pk.TopicName, pk.Payload)
	if p != nil {
		out = b.h.submitOnce(b.submitCtx, p)
	}
	b.h.finish(pk.TopicName, cl.ID, p, out)
	if out.reason == "" {
		return pk, nil
	}
	qos := pk.FixedHeader.Qos
	v5 := cl.Properties.ProtocolVersion == 5
	switch {
	case qos == 0:
		// Nothing to acknowledge: drop it (and don't relay it).
		return pk, packets.CodeSuccessIgnore
	case v5:
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
		// MQTT 3.1.1 has no negative acknowledgement: close the
		// connection without one, and the client sends it again.
		cl.Stop(packets.ErrServerBusy)
		return pk, packets.ErrRejectPacket
	default:
		// MQTT 3.1.1, bad message: acknowledge and drop it, or the client
		// would send it for ever.
		return pk, packets.CodeSuccessIgnore
	}
}

// listener serves mochi on a net.Listener opened by NewBroker, so that the
// address (and a bind error) is known before Run, and logs client errors at
// debug level rather than as warnings.
type listener struct {
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
func (l *listener) ID() string              { return "twinline-mqtt" }
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
