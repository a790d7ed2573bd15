// Package tlsconf is twinline's TLS: the server certificate of the HTTPS and
// MQTTS listeners, reloaded from its files when they change (certificate
// rotation without a restart), mutual TLS for devices whose client
// certificate names the machine they write for, and the client config of
// outgoing connections (Kafka).
//
// A Reloader holds the current certificate and client CA pool; the
// tls.Config values it hands out ask it for them on every handshake, so a
// reload takes effect for the next connection while open ones keep theirs.
// A file that cannot be loaded never replaces a good certificate: the
// previous one stays, a warning is logged and
// twinline_tls_reload_errors_total counts it.
//
// With a client CA, servers ask for a certificate but do not require one
// (tls.VerifyClientCertIfGiven): browsers and token clients connect as
// before, and a device that presents a certificate has it verified against
// the CA, failing the handshake if it does not verify. DeviceIdentity and
// FromRequest turn a verified certificate into an auth.Identity.
package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Option configures a Reloader.
type Option func(*options)

type options struct {
	poll time.Duration
	reg  prometheus.Registerer
}

// WithPollInterval sets how often Run looks at the files' modification time
// and size. Default one second.
func WithPollInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.poll = d
		}
	}
}

// WithRegisterer registers the reloader's metrics with reg:
// twinline_tls_reload_errors_total and
// twinline_tls_certificate_expiry_seconds.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(o *options) { o.reg = reg }
}

// Reloader holds a server certificate and client CA pool loaded from files,
// and reloads them when the files change. It is safe for concurrent use.
type Reloader struct {
	certFile, keyFile, caFile string
	logger                    *slog.Logger
	poll                      time.Duration

	cur atomic.Pointer[loaded]

	mu     sync.Mutex // serialises reloads; guards stamps
	stamps []stamp

	reloadErrors prometheus.Counter
	expiry       prometheus.Gauge
}

// loaded is one generation of the files' contents.
type loaded struct {
	cert      *tls.Certificate
	clientCAs *x509.CertPool // nil without a client CA
}

// stamp is what Run compares to notice a changed file.
type stamp struct {
	modTime time.Time
	size    int64
	missing bool
}

// New loads the certificate and key (PEM) and, if clientCAFile is not "",
// the CA certificates (PEM) that verify client certificates. logger may be
// nil.
func New(certFile, keyFile, clientCAFile string, logger *slog.Logger, opts ...Option) (*Reloader, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("loading tls certificate: both a certificate and a key file are needed")
	}
	o := options{poll: time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{
		certFile: certFile,
		keyFile:  keyFile,
		caFile:   clientCAFile,
		logger:   logger.With("component", "tls"),
		poll:     o.poll,
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_tls_reload_errors_total",
			Help: "Reloads of the TLS certificate, key or client CA that failed; the previous ones stay in use.",
		}),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "twinline_tls_certificate_expiry_seconds",
			Help: "When the served TLS certificate expires (its NotAfter), in seconds since the Unix epoch.",
		}),
	}
	r.stamps = r.stat()
	l, err := r.load()
	if err != nil {
		return nil, err
	}
	r.set(l)
	if o.reg != nil {
		for _, c := range []prometheus.Collector{r.reloadErrors, r.expiry} {
			if err := o.reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering tls metrics: %w", err)
			}
		}
	}
	return r, nil
}

// Certificate returns the current certificate. Its Leaf is set.
func (r *Reloader) Certificate() *tls.Certificate { return r.cur.Load().cert }

// ServerConfig returns a config for an HTTPS server (net/http): TLS 1.2 or
// later, the current certificate on every handshake, ALPN h2 and http/1.1,
// and with a client CA, client certificates verified if given. The config
// may be changed before it is used (for example a higher MinVersion); each
// call returns a new one.
func (r *Reloader) ServerConfig() *tls.Config {
	return r.config([]string{"h2", "http/1.1"})
}

// ListenerConfig is ServerConfig without ALPN protocols, for TLS listeners
// that do not speak HTTP (MQTTS): a client that offers a protocol of its own
// ("mqtt") would otherwise fail the handshake, since a Go server refuses a
// client none of whose protocols it knows.
func (r *Reloader) ListenerConfig() *tls.Config {
	return r.config(nil)
}

func (r *Reloader) config(nextProtos []string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     nextProtos,
		GetCertificate: r.getCertificate,
	}
	if r.caFile == "" {
		return cfg
	}
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	cfg.ClientCAs = r.cur.Load().clientCAs
	// The client CA pool is not asked for per handshake as the certificate
	// is: a reloaded pool reaches a handshake through a copy of cfg made
	// once per pool, which keeps session tickets working between reloads.
	type derived struct {
		pool *x509.CertPool
		cfg  *tls.Config
	}
	var last atomic.Pointer[derived]
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		pool := r.cur.Load().clientCAs
		if d := last.Load(); d != nil && d.pool == pool {
			return d.cfg, nil
		}
		c := cfg.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = pool
		last.Store(&derived{pool: pool, cfg: c})
		return c, nil
	}
	return cfg
}

func (r *Reloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load().cert, nil
}

// Reload loads the files now. On error the previous certificate and client
// CA pool stay in use, and the error is counted in
// twinline_tls_reload_errors_total.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reload()
}

// reload is Reload with r.mu held.
func (r *Reloader) reload() error {
	// Stat before reading: a file changed in between is read again at the
	// next poll.
	r.stamps = r.stat()
	l, err := r.load()
	if err != nil {
		r.reloadErrors.Inc()
		return fmt.Errorf("reloading tls certificate: %w", err)
	}
	r.set(l)
	r.logger.Info("tls certificate loaded", "subject", l.cert.Leaf.Subject.String(), "not_after", l.cert.Leaf.NotAfter)
	return nil
}

// Run reloads the files whenever their modification time or size changes,
// looking every poll interval, until ctx ends. A failed reload is logged as
// a warning and the previous certificate is kept.
func (r *Reloader) Run(ctx context.Context) error {
	t := time.NewTicker(r.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := r.reloadIfChanged(); err != nil {
			r.logger.Warn("keeping the previous tls certificate", "err", err)
		}
	}
}

// reloadIfChanged reloads when a file's stamp differs from the last one
// seen. A file that changes while it is broken is tried once per change.
func (r *Reloader) reloadIfChanged() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.stat()
	changed := false
	for i := range now {
		if now[i] != r.stamps[i] {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return r.reload()
}

func (r *Reloader) files() []string {
	if r.caFile == "" {
		return []string{r.certFile, r.keyFile}
	}
	return []string{r.certFile, r.keyFile, r.caFile}
}

// stat returns the stamps of the files; os.Stat follows symbolic links, so
// a Kubernetes Secret volume, which swaps a link, is seen to change.
func (r *Reloader) stat() []stamp {
	files := r.files()
	out := make([]stamp, len(files))
	for i, name := range files {
		fi, err := os.Stat(name)
		if err != nil {
			out[i] = stamp{missing: true}
			continue
		}
		out[i] = stamp{modTime: fi.ModTime(), size: fi.Size()}
	}
	return out
}

// load reads the files.
func (r *Reloader) load() (*loaded, error) {
	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return nil, fmt.Errorf("reading tls certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading tls key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading tls key pair %s and %s: %w", r.certFile, r.keyFile, err)
	}
	if cert.Leaf == nil { // GODEBUG=x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parsing tls certificate %s: %w", r.certFile, err)
		}
	}
	l := &loaded{cert: &cert}
	if r.caFile != "" {
		if l.clientCAs, err = LoadPool(r.caFile); err != nil {
			return nil, fmt.Errorf("loading tls client CA: %w", err)
		}
	}
	return l, nil
}

func (r *Reloader) set(l *loaded) {
	r.cur.Store(l)
	r.expiry.Set(float64(l.cert.Leaf.NotAfter.Unix()))
}

// LoadPool returns a pool of the PEM certificates in file.
func LoadPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificates: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("reading CA certificates: no PEM certificate in %s", file)
	}
	return pool, nil
}

// ClientConfig returns the config of an outgoing TLS connection (Kafka):
// TLS 1.2 or later, servers verified against the PEM CA certificates in
// caFile, or the system roots when caFile is "".
func ClientConfig(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	pool, err := LoadPool(caFile)
	if err != nil {
		return nil, err
	}
	cfg.RootCAs = pool
	return cfg, nil
}
