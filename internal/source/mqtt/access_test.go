package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paholog "github.com/eclipse/paho.golang/paho/log"
	"github.com/google/go-cmp/cmp"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/telemetry"
)

func TestMayPublish(t *testing.T) {
	t.Parallel()
	ingestLyon := auth.Identity{Scopes: auth.ScopeIngest, Sites: []string{"lyon"}}
	ingestAll := auth.Identity{Scopes: auth.ScopeIngest}
	device := auth.Identity{Scopes: auth.ScopeIngest, Machine: "m1"}
	readAll := auth.Identity{Scopes: auth.ScopeRead}
	tests := []struct {
		name  string
		id    auth.Identity
		topic string
		want  bool
	}{
		{"own site", ingestLyon, "twinline/lyon/a/m1/telemetry", true},
		{"own site, other leaf", ingestLyon, "twinline/lyon/a/m1/status", true},
		{"other site", ingestLyon, "twinline/paris/a/m2/telemetry", false},
		{"site level only", ingestLyon, "twinline/lyon", false},
		{"empty site", ingestAll, "twinline//a/m1/telemetry", false},
		{"outside twinline", ingestAll, "factory/m1", false},
		{"unrestricted, any site", ingestAll, "twinline/paris/a/m2/telemetry", true},
		{"device, own machine", device, "twinline/lyon/a/m1/telemetry", true},
		{"device, other machine", device, "twinline/lyon/a/m2/telemetry", false},
		{"device, no machine level", device, "twinline/lyon/a", false},
		{"no ingest scope", readAll, "twinline/lyon/a/m1/telemetry", false},
	}
	for _, tt := range tests {
		if got := mayPublish(tt.id, tt.topic); got != tt.want {
			t.Errorf("%s: mayPublish(%q) = %v, want %v", tt.name, tt.topic, got, tt.want)
		}
	}
}

func TestMaySubscribe(t *testing.T) {
	t.Parallel()
	readLyon := auth.Identity{Scopes: auth.ScopeRead, Sites: []string{"lyon"}}
	readAll := auth.Identity{Scopes: auth.ScopeRead}
	ingestAll := auth.Identity{Scopes: auth.ScopeIngest}
	tests := []struct {
		name   string
		id     auth.Identity
		filter string
		want   bool
	}{
		{"own site", readLyon, "twinline/lyon/#", true},
		{"own site, exact topic", readLyon, "twinline/lyon/a/m1/telemetry", true},
		{"own site, shared", readLyon, "$share/g/twinline/lyon/+/+/telemetry", true},
		{"other site, shared", readLyon, "$share/g/twinline/paris/#", false},
		{"shared without filter", readLyon, "$share/g", false},
		{"other site", readLyon, "twinline/paris/#", false},
		{"wildcard site", readLyon, "twinline/+/#", false},
		{"multi-level wildcard site", readLyon, "twinline/#", false},
		{"everything", readLyon, "#", false},
		{"wildcard root", readLyon, "+/lyon/#", false},
		{"sys", readLyon, "$SYS/#", false},
		{"unrestricted, everything", readAll, "#", true},
		{"unrestricted, sys", readAll, "$SYS/#", true},
		{"no read scope", ingestAll, "twinline/lyon/#", false},
	}
	for _, tt := range tests {
		if got := maySubscribe(tt.id, tt.filter); got != tt.want {
			t.Errorf("%s: maySubscribe(%q) = %v, want %v", tt.name, tt.filter, got, tt.want)
		}
	}
}

func TestRetainedQuota(t *testing.T) {
	t.Parallel()
	q := newRetainedQuota(2, 10)
	steps := []struct {
		owner, topic string
		size         int
		want         bool
	}{
		{"a", "t/1", 4, true},
		{"a", "t/1", 6, true},  // replaces: still 1 message, 6 bytes
		{"a", "t/2", 5, false}, // 11 bytes
		{"a", "t/2", 4, true},  // 2 messages, 10 bytes
		{"a", "t/3", 1, false}, // 3 messages
		{"b", "t/2", 3, true},  // b takes t/2 over: a has 1 message, 6 bytes
		{"a", "t/3", 4, true},
		{"a", "t/1", 0, true}, // clearing is always allowed, and frees
		{"a", "t/4", 6, true},
	}
	for i, s := range steps {
		if got := q.admit(s.owner, s.topic, s.size, true); got != s.want {
			t.Errorf("step %d: admit(%s, %s, %d) = %v, want %v", i, s.owner, s.topic, s.size, got, s.want)
		}
	}
	q.expired("t/4")
	if !q.admit("a", "t/5", 6, false) {
		t.Error("an expired message still counts")
	}
	if diff := cmp.Diff(q.owners, map[string]retainedUsage{"a": {1, 4}, "b": {1, 3}}, cmp.AllowUnexported(retainedUsage{})); diff != "" {
		t.Errorf("usage (-got +want):\n%s", diff)
	}
}

// Tokens of the fake Authenticate: the password is the token.
var testIdentities = map[string]auth.Identity{
	"ingest-lyon": {Name: "ingest-lyon", Kind: auth.KindToken, Scopes: auth.ScopeIngest, Sites: []string{"lyon"}, TokenID: "t1"},
	"read-lyon":   {Name: "read-lyon", Kind: auth.KindToken, Scopes: auth.ScopeRead, Sites: []string{"lyon"}, TokenID: "t2"},
	"read-all":    {Name: "read-all", Kind: auth.KindToken, Scopes: auth.ScopeRead, TokenID: "t3"},
	"operate":     {Name: "operate", Kind: auth.KindToken, Scopes: auth.ScopeOperate, TokenID: "t4"},
	"witness":     {Name: "witness", Kind: auth.KindToken, Scopes: auth.ScopeIngest | auth.ScopeRead, TokenID: "t5"},
}

// fakeAuthenticate knows testIdentities, the token "expired", a broken
// token store ("broken") and device certificates (CN = machine id).
func fakeAuthenticate(_ context.Context, _ string, password []byte, cert *x509.Certificate) (auth.Identity, error) {
	switch pw := string(password); {
	case pw == "" && cert != nil:
		cn := cert.Subject.CommonName
		return auth.Identity{Name: cn, Kind: auth.KindCertificate, Scopes: auth.ScopeIngest, Machine: cn}, nil
	case pw == "":
		return auth.Identity{}, auth.ErrNoCredentials
	case pw == "expired":
		return auth.Identity{}, fmt.Errorf("checking token: %w", auth.ErrExpired)
	case pw == "broken":
		return auth.Identity{}, errors.New("loading tokens: database unreachable")
	default:
		if id, ok := testIdentities[pw]; ok {
			return id, nil
		}
		return auth.Identity{}, auth.ErrInvalidToken
	}
}

// fakeAuthorize: machine m9 is registered at site paris.
func fakeAuthorize(_ context.Context, id auth.Identity, machine string) error {
	if machine == "m9" && !id.SeesSite("paris") {
		return errors.New("registered at another site")
	}
	return nil
}

// submitters records, by machine, the identities telemetry was submitted
// as (from the submit context).
type submitters struct {
	mu sync.Mutex
	m  map[string][]string
}

func (s *submitters) wrap(submit SubmitFunc) SubmitFunc {
	return func(ctx context.Context, b *telemetry.Batch) (int, int, error) {
		id, ok := auth.FromContext(ctx)
		name := "(none)"
		if ok {
			name = id.Name
		}
		s.mu.Lock()
		if s.m == nil {
			s.m = map[string][]string{}
		}
		for _, ev := range b.Events {
			s.m[ev.Machine] = append(s.m[ev.Machine], name)
		}
		s.mu.Unlock()
		return submit(ctx, b)
	}
}

// testPKI is a CA with a server certificate for 127.0.0.1 and client
// certificates it signs.
type testPKI struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
	server tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "twinline test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{ca: ca, caKey: key, pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.server = p.issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	return p
}

// issue returns a certificate for cn signed by the CA.
func (p *testPKI) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if ip := net.ParseIP(cn); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serverConfig is what the caller of NewBroker builds: client
// certificates verified when given.
func (p *testPKI) serverConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientCAs:    p.pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		MinVersion:   tls.VersionTLS12,
	}
}

// dialTLS opens an MQTTS connection, with a client certificate when cert
// is not nil.
func (p *testPKI) dialTLS(addr string, cert *tls.Certificate) (net.Conn, error) {
	cfg := &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: waitFor}}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// The handshake ends on the first read; a server refusing the
	// certificate shows there, so make it happen now.
	if err := conn.(*tls.Conn).HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// mqttClient is a paho client that records the topics it receives.
type mqttClient struct {
	*paho.Client
	id       string
	received chan string
}

// quietPinger is a paho Pinger that sends no PINGREQ. paho's default one
// sends its first at once after CONNACK, from a goroutine of its own; over
// TLS a packet is several writes, and that PINGREQ (0xc0 0x00) can land
// inside the test's PUBLISH, which the broker then reads as a payload
// starting with 0xc0. The tests last far less than the keep-alive.
type quietPinger struct{}

func (quietPinger) Run(ctx context.Context, _ net.Conn, _ uint16) error {
	<-ctx.Done()
	return nil
}
func (quietPinger) PacketSent()             {}
func (quietPinger) PacketReceived()         {}
func (quietPinger) PingResp()               {}
func (quietPinger) SetDebug(paholog.Logger) {}

// connectOn sends CONNECT over conn with password (none when empty) and
// returns the client and the CONNACK reason code.
func connectOn(t *testing.T, conn net.Conn, clientID, password string) (*mqttClient, byte) {
	t.Helper()
	mc := &mqttClient{id: clientID, received: make(chan string, 100)}
	mc.Client = paho.NewClient(paho.ClientConfig{
		Conn: conn, ClientID: clientID, PingHandler: quietPinger{},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case mc.received <- pr.Packet.Topic:
			default: // a test that no longer reads must not block paho
			}
			return true, nil
		}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true}
	if password != "" {
		cp.UsernameFlag, cp.Username = true, "token"
		cp.PasswordFlag, cp.Password = true, []byte(password)
	}
	ca, err := mc.Connect(ctx, cp)
	if ca == nil {
		t.Fatalf("connecting %s: no CONNACK: %v", clientID, err)
	}
	if ca.ReasonCode == 0 {
		t.Cleanup(func() { _ = mc.Disconnect(&paho.Disconnect{}) })
	}
	return mc, ca.ReasonCode
}

// subscribe subscribes with QoS 0 and returns the SUBACK reason code
// (0x00 when granted). Not QoS 1: mochi refuses a packet id the client
// uses while the same id is in flight from the server (0x91), and the
// retained messages a subscription brings are.
func (c *mqttClient) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 0}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("subscribing %s to %s: %+v, %v", c.id, filter, sa, err)
	}
	return sa.Reasons[0]
}

// publishRetained publishes a retained QoS 1 message and returns the
// PUBACK reason code.
func (c *mqttClient) publishRetained(t *testing.T, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	pr, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte(payload)})
	if pr == nil {
		t.Fatalf("publishing retained to %s: %v", topic, err)
	}
	return pr.ReasonCode
}

// stored reports whether an event of machine with value v was submitted.
func (f *fakeLog) stored(machine string, v float64) bool {
	return slices.ContainsFunc(f.events(), func(ev telemetry.Event) bool {
		return ev.Machine == machine && len(ev.Metrics) > 0 && ev.Metrics[0].Value == v
	})
}

// TestBrokerAuthMatrix connects every kind of identity and tries every
// action, asserting the exact answer: CONNACK, PUBACK and SUBACK reason
// codes, what was submitted (and as whom), and what a subscriber receives.
func TestBrokerAuthMatrix(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	fl := newFakeLog()
	var subs submitters
	deps := fl.deps(t, nil)
	deps.Submit = subs.wrap(fl.submit)
	deps.Authenticate = fakeAuthenticate
	deps.Authorize = fakeAuthorize
	b := startBroker(t, BrokerOptions{MaxRetained: 3, TLSListen: "127.0.0.1:0", TLSConfig: pki.serverConfig()}, deps)
	device := pki.issue(t, "m1", x509.ExtKeyUsageClientAuth)

	witnessConn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	witness, code := connectOn(t, witnessConn, "witness", "witness")
	if code != 0 {
		t.Fatalf("witness: CONNACK %#x", code)
	}

	const (
		ok      = 0x00
		granted = 0x00
		denied  = 0x87
		quota   = 0x97
	)
	type row struct {
		name     string
		password string
		cert     *tls.Certificate
		connack  byte
		// PUBACK of telemetry to twinline/lyon/a/m1, to twinline/paris/a/m2,
		// and to twinline/lyon/a/m9 (registered at paris: Authorize).
		pubLyon, pubParis, pubForeign byte
		// SUBACK of twinline/lyon/#, #, twinline/+/#, $SYS/#.
		subLyon, subAll, subSites, subSys byte
		// PUBACK of a retained message under twinline/, outside it, and
		// of the one that goes over MaxRetained (3).
		retained, retainedOutside, retainedOver byte
	}
	rows := []row{
		{name: "no credentials", connack: 0x86},
		{name: "wrong password", password: "nope", connack: 0x86},
		{name: "expired", password: "expired", connack: 0x86},
		{name: "no ingest or read scope", password: "operate", connack: 0x87},
		{name: "token store down", password: "broken", connack: 0x88},
		{
			name: "ingest token lyon", password: "ingest-lyon",
			pubLyon: ok, pubParis: denied, pubForeign: denied,
			subLyon: denied, subAll: denied, subSites: denied, subSys: denied,
			retained: ok, retainedOutside: denied, retainedOver: quota,
		},
		{
			name: "read token lyon", password: "read-lyon",
			pubLyon: denied, pubParis: denied, pubForeign: denied,
			subLyon: granted, subAll: denied, subSites: denied, subSys: denied,
			retained: denied, retainedOutside: denied, retainedOver: denied,
		},
		{
			name: "unrestricted read", password: "read-all",
			pubLyon: denied, pubParis: denied, pubForeign: denied,
			subLyon: granted, subAll: granted, subSites: granted, subSys: granted,
			retained: denied, retainedOutside: denied, retainedOver: denied,
		},
		{
			name: "device certificate m1", cert: &device,
			pubLyon: ok, pubParis: denied, pubForeign: denied,
			subLyon: denied, subAll: denied, subSites: denied, subSys: denied,
			retained: ok, retainedOutside: denied, retainedOver: quota,
		},
	}
	for i, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			var conn net.Conn
			var err error
			if r.cert != nil {
				conn, err = pki.dialTLS(b.TLSAddr().String(), r.cert)
			} else {
				conn, err = net.Dial("tcp", b.Addr().String())
			}
			if err != nil {
				t.Fatal(err)
			}
			clientID := fmt.Sprintf("client-%d", i)
			c, code := connectOn(t, conn, clientID, r.password)
			if code != r.connack {
				t.Fatalf("CONNACK %#x, want %#x", code, r.connack)
			}
			if r.connack != 0 {
				return
			}
			base := float64(100 * (i + 1))
			for _, p := range []struct {
				name, machine, topic string
				v                    float64
				want                 byte
			}{
				{"telemetry lyon", "m1", "twinline/lyon/a/m1/telemetry", base + 1, r.pubLyon},
				{"telemetry paris", "m2", "twinline/paris/a/m2/telemetry", base + 2, r.pubParis},
				{"telemetry of a paris machine", "m9", "twinline/lyon/a/m9/telemetry", base + 3, r.pubForeign},
			} {
				code, reason := publish(t, c.Client, p.topic, fmt.Sprintf(`{"temp":%v}`, p.v))
				if code != p.want {
					t.Errorf("publish %s: PUBACK %#x %q, want %#x", p.name, code, reason, p.want)
				}
				// The submit precedes the PUBACK: a refused message that
				// had been submitted would be stored by now.
				if got, want := fl.stored(p.machine, p.v), p.want == ok; got != want {
					t.Errorf("publish %s: stored = %v, want %v", p.name, got, want)
				}
			}
			for _, s := range []struct {
				filter string
				want   byte
			}{{"twinline/lyon/#", r.subLyon}, {"#", r.subAll}, {"twinline/+/#", r.subSites}, {"$SYS/#", r.subSys}} {
				if got := c.subscribe(t, s.filter); got != s.want {
					t.Errorf("subscribe %s: SUBACK %#x, want %#x", s.filter, got, s.want)
				}
			}
			if got := c.publishRetained(t, "twinline/lyon/a/m1/status", "up"); got != r.retained {
				t.Errorf("retained under twinline/: PUBACK %#x, want %#x", got, r.retained)
			}
			if got := c.publishRetained(t, "factory/m1/status", "up"); got != r.retainedOutside {
				t.Errorf("retained outside twinline/: PUBACK %#x, want %#x", got, r.retainedOutside)
			}
			for _, topic := range []string{"twinline/lyon/a/m1/c1", "twinline/lyon/a/m1/c2"} {
				if got := c.publishRetained(t, topic, "x"); got != r.retained {
					t.Errorf("retained %s (within the cap): PUBACK %#x, want %#x", topic, got, r.retained)
				}
			}
			if got := c.publishRetained(t, "twinline/lyon/a/m1/c3", "x"); got != r.retainedOver {
				t.Errorf("retained over the cap: PUBACK %#x, want %#x", got, r.retainedOver)
			}

			// What the client receives: the witness publishes to paris,
			// then a sentinel to lyon; messages reach a subscriber in
			// order, so once the sentinel is in, the paris message would
			// be too.
			probe := fmt.Sprintf("twinline/paris/a/m2/probe-%d", i)
			sentinel := fmt.Sprintf("twinline/lyon/a/m1/sentinel-%d", i)
			if code, reason := publish(t, witness.Client, probe, "p"); code != ok {
				t.Fatalf("witness publish: %#x %q", code, reason)
			}
			if code, reason := publish(t, witness.Client, sentinel, "s"); code != ok {
				t.Fatalf("witness publish: %#x %q", code, reason)
			}
			var got []string
			if r.subLyon == granted {
				timeout := time.After(waitFor)
			wait:
				for {
					select {
					case topic := <-c.received:
						got = append(got, topic)
						if topic == sentinel {
							break wait
						}
					case <-timeout:
						t.Fatalf("sentinel not received; got %v", got)
					}
				}
			} else {
				// No subscription was granted: the broker holds none for
				// the client.
				for _, topic := range []string{probe, sentinel, "$SYS/broker/uptime"} {
					if _, found := b.srv.Topics.Subscribers(topic).Subscriptions[clientID]; found {
						t.Errorf("%s: the client is subscribed to %s", r.name, topic)
					}
				}
			}
			seesParis := r.subAll == granted
			if slices.Contains(got, probe) != seesParis {
				t.Errorf("received %v: paris probe received = %v, want %v", got, !seesParis, seesParis)
			}
			for _, topic := range got {
				if !seesParis && !strings.HasPrefix(topic, "twinline/lyon/") {
					t.Errorf("received %s from another site", topic)
				}
			}
		})
	}

	subs.mu.Lock()
	gotSubmitters := subs.m["m1"]
	subs.mu.Unlock()
	if diff := cmp.Diff(gotSubmitters, []string{"ingest-lyon", "m1"}); diff != "" {
		t.Errorf("identities in the submit context of m1 (-got +want):\n%s", diff)
	}
	if got := testutil.ToFloat64(b.h.m.rejected.WithLabelValues("not_authorized")); got != 1 {
		t.Errorf("rejected{reason=not_authorized} = %v, want 1 (the ingest token's m9)", got)
	}
	for reason, want := range map[string]float64{
		"credentials": 3, "not_authorized": 1, "unavailable": 1,
		// Each read identity: 3 telemetry and 5 retained publishes; the
		// ingest token: paris and factory/ (m9 is Authorize's); the
		// device: paris, m9 and factory/.
		"publish": 8 + 8 + 2 + 3, "subscribe": 4 + 3 + 0 + 4, "retained_quota": 2,
	} {
		if got := testutil.ToFloat64(b.refused.WithLabelValues(reason)); got != want {
			t.Errorf("refused{reason=%q} = %v, want %v", reason, got, want)
		}
	}
}

// TestBrokerAuthTopicAlias shows an authenticated MQTT 5 client naming
// its topic by an alias (mochi checks the ACL before resolving it).
func TestBrokerAuthTopicAlias(t *testing.T) {
	t.Parallel()
	fl := newFakeLog()
	deps := fl.deps(t, nil)
	deps.Authenticate = fakeAuthenticate
	b := startBroker(t, BrokerOptions{}, deps)
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, code := connectOn(t, conn, "alias", "ingest-lyon")
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	alias := uint16(1)
	for i, topic := range []string{"twinline/lyon/a/m1/telemetry", ""} {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		pr, err := c.Publish(ctx, &paho.Publish{
			Topic: topic, QoS: 1, Payload: []byte(fmt.Sprintf(`{"temp":%d}`, i)),
			Properties: &paho.PublishProperties{TopicAlias: &alias},
		})
		cancel()
		if err != nil || pr.ReasonCode != 0 {
			t.Fatalf("publish %d (topic %q, alias 1): %+v, %v", i, topic, pr, err)
		}
	}
	if !fl.stored("m1", 0) || !fl.stored("m1", 1) {
		t.Errorf("stored %v, want both messages of m1", fl.events())
	}
}

// TestBrokerAuthV311 shows the MQTT 3.1.1 CONNACK return codes of a
// refused client: 4 for bad credentials, 5 not authorized, 3 server
// unavailable.
func TestBrokerAuthV311(t *testing.T) {
	t.Parallel()
	deps := newFakeLog().deps(t, nil)
	deps.Authenticate = fakeAuthenticate
	b := startBroker(t, BrokerOptions{}, deps)
	for _, tt := range []struct {
		password string
		want     byte
	}{{"", 4}, {"nope", 4}, {"expired", 4}, {"operate", 5}, {"broken", 3}, {"ingest-lyon", 0}} {
		ack, err := connectV3Auth(t, b.Addr().String(), "v3-"+tt.password, tt.password)
		if err != nil {
			t.Errorf("password %q: %v", tt.password, err)
			continue
		}
		if ack.ReasonCode != tt.want {
			t.Errorf("password %q: CONNACK return code %d, want %d", tt.password, ack.ReasonCode, tt.want)
		}
	}
}

// connectV3Auth sends an MQTT 3.1.1 CONNECT with a user name and password
// (none when empty) and returns the CONNACK.
func connectV3Auth(t *testing.T, addr, clientID, password string) (packets.Packet, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return packets.Packet{}, err
	}
	t.Cleanup(func() { conn.Close() })
	c := &v3Client{conn: conn, r: newReader(conn)}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: clientID, Keepalive: 30},
	}
	if password != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte("token")
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(password)
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return packets.Packet{}, err
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		return packets.Packet{}, err
	}
	return c.read()
}

// TestBrokerTLS connects over MQTTS with and without a client
// certificate: a device certificate (CN=m1) is an identity that writes
// for m1 only; a token works without one; a certificate of another CA is
// refused in the handshake.
func TestBrokerTLS(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	fl := newFakeLog()
	deps := fl.deps(t, nil)
	deps.Authenticate = fakeAuthenticate
	b := startBroker(t, BrokerOptions{TLSListen: "127.0.0.1:0", TLSConfig: pki.serverConfig()}, deps)
	if b.TLSAddr() == nil || b.TLSAddr().String() == b.Addr().String() {
		t.Fatalf("TLSAddr = %v, Addr = %v", b.TLSAddr(), b.Addr())
	}

	t.Run("device certificate", func(t *testing.T) {
		cert := pki.issue(t, "m1", x509.ExtKeyUsageClientAuth)
		conn, err := pki.dialTLS(b.TLSAddr().String(), &cert)
		if err != nil {
			t.Fatal(err)
		}
		c, code := connectOn(t, conn, "dev-m1", "")
		if code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		if code, reason := publish(t, c.Client, "twinline/lyon/a/m1/telemetry", `{"temp":1}`); code != 0 {
			t.Errorf("publish for m1: PUBACK %#x %q, want 0", code, reason)
		}
		if code, _ := publish(t, c.Client, "twinline/lyon/a/m2/telemetry", `{"temp":2}`); code != 0x87 {
			t.Errorf("publish for m2: PUBACK %#x, want 0x87", code)
		}
		if !fl.stored("m1", 1) || fl.stored("m2", 2) {
			t.Errorf("stored events %v, want m1's only", fl.events())
		}
	})
	t.Run("no certificate, no password", func(t *testing.T) {
		conn, err := pki.dialTLS(b.TLSAddr().String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, code := connectOn(t, conn, "anon", ""); code != 0x86 {
			t.Errorf("CONNACK %#x, want 0x86", code)
		}
	})
	t.Run("no certificate, token", func(t *testing.T) {
		conn, err := pki.dialTLS(b.TLSAddr().String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		c, code := connectOn(t, conn, "tok", "ingest-lyon")
		if code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		if code, _ := publish(t, c.Client, "twinline/lyon/a/m3/telemetry", `{"temp":3}`); code != 0 {
			t.Errorf("publish: PUBACK %#x, want 0", code)
		}
	})
	t.Run("certificate of another CA", func(t *testing.T) {
		other := newTestPKI(t)
		cert := other.issue(t, "m1", x509.ExtKeyUsageClientAuth)
		conn, err := pki.dialTLS(b.TLSAddr().String(), &cert)
		if err == nil {
			// TLS 1.3: the client's handshake may end before the server
			// has judged the certificate; the refusal then comes with
			// the first read.
			_, err = connectOnErr(conn)
			conn.Close()
		}
		if err == nil {
			t.Fatal("connected with a certificate of another CA")
		}
	})
}

// connectOnErr tries a CONNECT on conn and returns the error, if any.
func connectOnErr(conn net.Conn) (*paho.Connack, error) {
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "other-ca", PingHandler: quietPinger{}})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: "other-ca", KeepAlive: 30, CleanStart: true})
	if err == nil {
		_ = c.Disconnect(&paho.Disconnect{})
	}
	return ca, err
}

// TestBrokerRetainedOpen shows the retained message rules of an open
// broker (no Authenticate): only under twinline/, and capped by count
// and bytes per client; clearing frees the quota; a 3.1.1 client's
// refused retained message is acknowledged and dropped.
func TestBrokerRetainedOpen(t *testing.T) {
	t.Parallel()
	b := startBroker(t, BrokerOptions{MaxRetained: 2, MaxRetainedBytes: 10}, newFakeLog().deps(t, nil))
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, code := connectOn(t, conn, "open", "")
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	for _, s := range []struct {
		topic, payload string
		want           byte
	}{
		{"factory/x", "a", 0x87},
		{"twinline/s/l/m/a", "12345", 0},
		{"twinline/s/l/m/b", "123456", 0x97}, // 11 bytes
		{"twinline/s/l/m/b", "12345", 0},
		{"twinline/s/l/m/c", "1", 0x97}, // 3 messages
		{"twinline/s/l/m/a", "", 0},     // cleared
		{"twinline/s/l/m/c", "1", 0},
	} {
		if got := c.publishRetained(t, s.topic, s.payload); got != s.want {
			t.Errorf("retained %s %q: PUBACK %#x, want %#x", s.topic, s.payload, got, s.want)
		}
	}
	for topic, want := range map[string]bool{"factory/x": false, "twinline/s/l/m/a": false, "twinline/s/l/m/b": true, "twinline/s/l/m/c": true} {
		if _, got := b.srv.Topics.Retained.Get(topic); got != want {
			t.Errorf("%s retained = %v, want %v", topic, got, want)
		}
	}

	v3 := connectV3(t, b.Addr().String(), "open-v3")
	id := v3.publishRetained(t, "factory/y", "a")
	v3.readPuback(t, id)
	if _, ok := b.srv.Topics.Retained.Get("factory/y"); ok {
		t.Error("a 3.1.1 client retained a message outside twinline/")
	}
}

// TestSubscriberCredentials shows the subscriber authenticating to a
// secured broker with SubscriberOptions.Username and Password.
func TestSubscriberCredentials(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var users []string
	deps := newFakeLog().deps(t, nil)
	deps.Authenticate = func(ctx context.Context, username string, password []byte, cert *x509.Certificate) (auth.Identity, error) {
		mu.Lock()
		users = append(users, username)
		mu.Unlock()
		if username != "twinline" || string(password) != "read-all" {
			return auth.Identity{}, auth.ErrInvalidToken
		}
		return testIdentities["read-all"], nil
	}
	b := startBroker(t, BrokerOptions{}, deps)
	s, err := NewSubscriber("mqtt://"+b.Addr().String(), SubscriberOptions{
		ClientID: uniq("cred"), Group: "-", Username: "twinline", Password: "read-all",
	}, newFakeLog().deps(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	runSubscriber(t, s)
	waitReady(t, s)
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(users, []string{"twinline"}); diff != "" {
		t.Errorf("user names authenticated (-got +want):\n%s", diff)
	}
}

func newReader(conn net.Conn) *bufio.Reader { return bufio.NewReader(conn) }

// publishRetained sends a retained QoS 1 PUBLISH and returns its packet id.
func (c *v3Client) publishRetained(t *testing.T, topic, payload string) uint16 {
	t.Helper()
	c.id++
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		ProtocolVersion: 4,
		TopicName:       topic,
		PacketID:        c.id,
		Payload:         []byte(payload),
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	return c.id
}
