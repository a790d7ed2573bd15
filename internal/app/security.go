package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/api"
	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/tlsconf"
)

// tokenMaintenanceInterval is how often expired sessions and tokens
// revoked long ago are deleted, and the audit log cut to its retention.
const tokenMaintenanceInterval = time.Hour

// security is what the security model is built of: the tokens, the audit
// log, the stream tickets and the TLS certificate.
type security struct {
	tokens  auth.TokenStore
	authn   *auth.Authenticator
	audit   auth.AuditStore
	tickets *auth.Tickets
	tls     *tlsconf.Reloader // nil without --tls-cert
}

// Stores whose tokens another process may change report it through
// OnChange once Run runs.
type runner interface {
	Run(ctx context.Context) error
}

// OpenTokens opens where tokens and the audit log live, as `serve` does:
// PostgreSQL with a PostgreSQL store, else files in the data directory.
// For the `token` and `privacy` commands.
func OpenTokens(ctx context.Context, pg *postgres.Store, dataDir string) (auth.TokenStore, auth.AuditStore, error) {
	if pg != nil {
		return postgres.NewTokenStore(pg, postgres.TokenStoreOptions{}), postgres.NewAuditStore(pg), nil
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("creating data directory: %w", err)
	}
	return auth.NewTokenFile(filepath.Join(dataDir, "tokens.json")), auth.NewAuditFile(filepath.Join(dataDir, "audit.jsonl")), nil
}

// openSecurity builds the tokens, audit log, tickets and TLS certificate,
// creates the bootstrap token, and refuses a configuration that would
// leave a network listener open to anyone.
func (a *App) openSecurity(ctx context.Context, rdb redis.UniversalClient, reg prometheus.Registerer) (*security, error) {
	cfg, logger := a.cfg, a.logger.With("component", "auth")
	tokens, audit, err := OpenTokens(ctx, a.pg, cfg.DataDir)
	if err != nil {
		return nil, err
	}
	a.cleanup = append(a.cleanup, func() { tokens.Close(); audit.Close() })
	if r, ok := tokens.(runner); ok {
		a.background = append(a.background, part{name: "stopping the token listener", run: r.Run})
	}
	// The authenticator and the certificate reloader name themselves
	// (auth, tls): they get the logger without this function's component.
	authn, err := auth.NewAuthenticator(tokens, auth.AuthenticatorOptions{Logger: a.logger})
	if err != nil {
		return nil, fmt.Errorf("loading tokens: %w", err)
	}
	a.background = append(a.background, part{name: "stopping the authenticator", run: authn.Run})
	if cfg.BootstrapTokenFile != "" {
		b, err := os.ReadFile(cfg.BootstrapTokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading --bootstrap-token-file: %w", err)
		}
		if err := authn.Bootstrap(ctx, strings.TrimSpace(string(b))); err != nil {
			return nil, fmt.Errorf("--bootstrap-token-file %s: %w", cfg.BootstrapTokenFile, err)
		}
	}
	if err := checkClosed(cfg, authn.Empty()); err != nil {
		return nil, err
	}
	if cfg.Auth == "off" {
		a.degraded = append(a.degraded, func() error {
			return errors.New("auth is off (--auth=off): anyone who reaches the server may read and change everything")
		})
		logger.Warn(authOffWarning)
	}
	s := &security{tokens: tokens, authn: authn, audit: audit,
		tickets: auth.NewTickets(auth.TicketOptions{Redis: rdb, KeyPrefix: cfg.RedisPrefix + "ticket:"})}
	a.background = append(a.background, part{name: "stopping token maintenance", run: func(ctx context.Context) error { return s.maintain(ctx, cfg, logger) }})
	if cfg.TLSCert != "" {
		if s.tls, err = tlsconf.New(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA, a.logger, tlsconf.WithRegisterer(reg)); err != nil {
			return nil, err
		}
		a.background = append(a.background, part{name: "stopping the certificate reloader", run: s.tls.Run})
	}
	return s, nil
}

// checkClosed refuses to start a listener open to the network without
// tokens: twinline is closed by default on a network.
func checkClosed(cfg config.Config, noTokens bool) error {
	if cfg.Auth == "off" || !noTokens {
		return nil
	}
	exposed := []string{}
	for _, l := range []struct{ flag, addr string }{{"--listen", cfg.Listen}, {"--mqtt-listen", cfg.MQTTListen}, {"--mqtt-tls-listen", cfg.MQTTTLSListen}} {
		if l.addr != "" && !config.Loopback(l.addr) {
			exposed = append(exposed, l.flag+" "+l.addr)
		}
	}
	if len(exposed) == 0 && cfg.Auth != "on" {
		return nil
	}
	where := "--auth=on"
	if len(exposed) > 0 {
		where = strings.Join(exposed, ", ") + " is reachable from the network"
	}
	return fmt.Errorf(`refusing to start: %s and no API token exists yet.
Create an admin token, then start again:
  twinline token create --data-dir %s --name admin --scopes admin,read,operate,ingest
(with --store postgres: twinline token create --postgres-url URL …), or give one with
--bootstrap-token-file FILE (a secret of 32 characters or more, e.g. openssl rand -base64 48).
To run open to anyone who reaches it (not advised), pass --auth=off`, where, cfg.DataDir)
}

const authOffWarning = "auth is off (--auth=off): anyone who reaches this server may read, write and delete everything"

// maintain deletes sessions and tokens expired or revoked more than a day
// ago, and audit entries older than --audit-retention, every hour; with
// --auth=off it says so in the log every hour too.
func (s *security) maintain(ctx context.Context, cfg config.Config, logger interface{ Warn(string, ...any) }) error {
	t := time.NewTicker(tokenMaintenanceInterval)
	defer t.Stop()
	for first := true; ; first = false {
		if cfg.Auth == "off" && !first {
			logger.Warn(authOffWarning)
		}
		now := time.Now()
		if err := s.tokens.Delete(ctx, now.Add(-24*time.Hour)); err != nil && ctx.Err() == nil {
			logger.Warn("deleting expired sessions and revoked tokens", "err", err)
		}
		if _, err := s.audit.DeleteBefore(ctx, now.Add(-cfg.AuditRetention)); err != nil && ctx.Err() == nil {
			logger.Warn("deleting audit entries past --audit-retention", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// open reports whether requests without credentials act as anonymous on a
// listener at addr: auth off, or auto with no token yet on loopback.
func (s *security) open(cfg config.Config, addr string) bool {
	switch cfg.Auth {
	case "off":
		return true
	case "on":
		return false
	}
	return config.Loopback(addr) && s.authn.Empty()
}

// apiAuth is the API's view of the security model.
func (s *security) apiAuth(cfg config.Config) *api.Auth {
	return &api.Auth{
		Open:   func() bool { return s.open(cfg, cfg.Listen) },
		Verify: s.authn.Verify,
		Certificate: func(cs *tls.ConnectionState) (auth.Identity, bool) {
			return tlsconf.FromConnectionState(cs)
		},
		NewSession: func(ctx context.Context, id auth.Identity, ttl time.Duration) (string, string, time.Time, error) {
			secret, csrf, tok, err := s.authn.NewSession(ctx, id, ttl)
			return secret, csrf, tok.Expires, err
		},
		CSRF:         auth.CSRFToken,
		EndSession:   s.authn.EndSession,
		IssueTicket:  s.tickets.Issue,
		RedeemTicket: s.tickets.Redeem,
		Tokens:       s.authn,
		Audit:        s.audit,
	}
}

// mqttAuthenticate verifies an MQTT client: its device certificate, or the
// token in its CONNECT password; without either, anonymous where the
// broker's listener is open.
func (s *security) mqttAuthenticate(cfg config.Config) func(ctx context.Context, username string, password []byte, cert *x509.Certificate) (auth.Identity, error) {
	return func(_ context.Context, _ string, password []byte, cert *x509.Certificate) (auth.Identity, error) {
		if len(password) > 0 {
			return s.authn.Verify(string(password))
		}
		if cert != nil {
			return tlsconf.DeviceIdentity(cert)
		}
		// The plain listener decides: MQTTS clients without a certificate
		// or a token are never anonymous unless auth is off.
		if s.open(cfg, cfg.MQTTListen) {
			return auth.Anonymous, nil
		}
		return auth.Identity{}, auth.ErrNoCredentials
	}
}

// allowedHosts is --allowed-hosts, or by default the loopback names, the
// listen host and this machine's host name (IP addresses always pass).
func allowedHosts(cfg config.Config) []string {
	if len(cfg.AllowedHosts) > 0 {
		return cfg.AllowedHosts
	}
	hosts := []string{"localhost"}
	if h, _, err := net.SplitHostPort(cfg.Listen); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	return hosts
}

// trustedProxies parses --trusted-proxies (validated by config).
func trustedProxies(cfg config.Config) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range cfg.TrustedProxies {
		if pfx, err := netip.ParsePrefix(p); err == nil {
			out = append(out, pfx.Masked())
		} else if ip, err := netip.ParseAddr(p); err == nil {
			out = append(out, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
		}
	}
	return out
}

// metricsAuth reports whether /metrics needs the read scope.
func metricsAuth(cfg config.Config) bool {
	switch cfg.MetricsAuth {
	case "on":
		return true
	case "off":
		return false
	}
	return !config.Loopback(cfg.Listen) && cfg.Auth != "off"
}

// authHeaderScopes parses --auth-header-scopes (validated by config).
func authHeaderScopes(cfg config.Config) auth.Scope {
	s, _ := auth.ParseScopes(cfg.AuthHeaderScopes)
	return s
}
