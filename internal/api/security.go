package api

import (
	"context"
	"crypto/tls"
	"errors"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/problem"
)

// SessionCookie is the name of the dashboard's session cookie.
const SessionCookie = "twinline_session"

// CSRFHeader is the header a cookie-authenticated state-changing request
// must carry, with the value GET /api/v1/session answered.
const CSRFHeader = "X-CSRF-Token"

// Security are the HTTP-level security settings (docs/security.md).
type Security struct {
	// AllowedHosts are the accepted Host names, with or without a port
	// (IP addresses are always accepted); empty accepts any (tests only:
	// app always sets it).
	AllowedHosts []string
	// TrustedProxies are the peers whose X-Forwarded-For and
	// X-Forwarded-Proto are believed.
	TrustedProxies []netip.Prefix
	// AuthHeader names a header carrying a user set by a trusted proxy
	// (""); the user gets AuthHeaderScopes.
	AuthHeader       string
	AuthHeaderScopes auth.Scope
	// MetricsAuth puts /metrics behind the read scope.
	MetricsAuth bool
	// SessionTTL is how long a dashboard sign-in lasts.
	SessionTTL time.Duration
}

// Auth are the identity operations the API uses, as functions so that the
// composition root can plug in the authenticator, the sessions, the
// tickets and the token store. A nil Auth serves everything openly
// (tests of other concerns).
type Auth struct {
	// Open reports whether requests without credentials act as
	// auth.Anonymous: auth is off, or no token exists yet on a loopback
	// listener. It is asked per request, so that the first token closes
	// the server.
	Open func() bool
	// Verify checks a token secret (API token or session).
	Verify func(secret string) (auth.Identity, error)
	// Certificate maps a verified TLS client certificate to a device
	// identity; nil without mutual TLS.
	Certificate func(cs *tls.ConnectionState) (auth.Identity, bool)
	// NewSession makes a dashboard session for id: its secret (the
	// cookie), its CSRF token and its expiry.
	NewSession func(ctx context.Context, id auth.Identity, ttl time.Duration) (secret, csrf string, expires time.Time, err error)
	// CSRF returns the CSRF token of a session secret.
	CSRF func(secret string) string
	// EndSession revokes a session.
	EndSession func(ctx context.Context, secret string) error
	// IssueTicket and RedeemTicket are the single-use stream tickets.
	IssueTicket  func(ctx context.Context, id auth.Identity) (string, time.Time, error)
	RedeemTicket func(ctx context.Context, ticket string) (auth.Identity, error)
	// Tokens manages API tokens (admin).
	Tokens TokenAdmin
	// Audit records operate and admin actions; nil records nothing.
	Audit auth.AuditStore
}

// TokenAdmin is the token management the API offers to admins.
type TokenAdmin interface {
	Create(ctx context.Context, name string, scopes auth.Scope, sites []string, expires time.Time, createdBy string) (auth.Token, string, error)
	List() []auth.Token
	Revoke(ctx context.Context, name string) error
}

// request state the security layer attaches to a request's context.
type reqInfo struct {
	id auth.Identity
	// remote is the client address after --trusted-proxies; https says
	// whether the client connected over TLS (to us or to the proxy).
	remote string
	https  bool
	// rec is the audit record of an operate or admin request.
	rec *auditRecord
}

type reqInfoKey struct{}

func info(r *http.Request) *reqInfo {
	if ri, ok := r.Context().Value(reqInfoKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{id: auth.Anonymous, remote: r.RemoteAddr}
}

// identity returns who r acts as (auth.Anonymous when auth is open).
func identity(r *http.Request) auth.Identity { return info(r).id }

// unsafeMethod reports whether m changes state.
func unsafeMethod(m string) bool {
	return m != http.MethodGet && m != http.MethodHead && m != http.MethodOptions
}

// hostAllowed reports whether the request's Host is one of allowed, or an
// IP address: DNS rebinding needs a name (the attacker's), and a page
// loaded from an IP address is this server's own origin.
func hostAllowed(allowed []string, host string) bool {
	if len(allowed) == 0 {
		return true
	}
	h := strings.ToLower(host)
	bare := h
	if hh, _, err := net.SplitHostPort(h); err == nil {
		bare = hh
	}
	bare = strings.TrimSuffix(strings.TrimPrefix(bare, "["), "]")
	if _, err := netip.ParseAddr(bare); err == nil {
		return true
	}
	for _, a := range allowed {
		a = strings.ToLower(a)
		if a == h || a == bare {
			return true
		}
	}
	return false
}

// clientAddr returns the client's address and whether it reached us over
// TLS, believing X-Forwarded-For and X-Forwarded-Proto only from a
// trusted proxy (the right-most untrusted address of the chain).
func (a *API) clientAddr(r *http.Request) (string, bool) {
	https := r.TLS != nil
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if !a.trusted(host) {
		return host, https
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p != "" {
		https = strings.EqualFold(strings.TrimSpace(strings.Split(p, ",")[0]), "https")
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		for part := range strings.SplitSeq(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				hops = append(hops, part)
			}
		}
	}
	for i := len(hops) - 1; i >= 0; i-- {
		if _, err := netip.ParseAddr(hops[i]); err != nil {
			break // garbage: stop believing the chain here
		}
		host = hops[i]
		if !a.trusted(host) {
			break
		}
	}
	return host, https
}

func (a *API) trusted(host string) bool {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, p := range a.sec.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// sameOrigin reports whether a browser's Origin header names this server
// as the request reached it (scheme, host and port).
func sameOrigin(origin, host string, https bool) bool {
	scheme := "http://"
	if https {
		scheme = "https://"
	}
	return strings.EqualFold(origin, scheme+host)
}

// jsonContentType reports whether a state-changing request's body is of a
// type a browser cannot send cross-origin without a CORS preflight (which
// twinline never grants), so a foreign page cannot forge it: JSON, or
// absent (no body, or a non-browser client).
func jsonContentType(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// guard is the security layer in front of every route: Host allow-list,
// cross-origin refusal, content types, identity and scope. It answers
// 421/403/415/401 problem+json itself; what passes carries its identity.
func (a *API) guard(rt route, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		remote, https := a.clientAddr(r)
		ri := &reqInfo{id: auth.Anonymous, remote: remote, https: https}
		influx := rt.influx
		deny := func(p *problem.Problem) {
			if influx {
				influxCompat(p)
			}
			problem.Write(w, p)
		}
		// DNS rebinding: a page of evil.example resolving to this server
		// sends Host: evil.example. Health checks come from orchestrators
		// with the pod address as Host, and tell nothing.
		if !rt.anyHost && !hostAllowed(a.sec.AllowedHosts, r.Host) {
			deny(&problem.Problem{Type: problem.TypeHostNotAllowed, Status: http.StatusMisdirectedRequest,
				Detail: "Host " + r.Host + " is not served here; add it to --allowed-hosts"})
			return
		}
		// A browser says where a request comes from; a foreign page may
		// not change state nor open a stream (cookies would go along).
		if unsafeMethod(r.Method) || rt.stream {
			if origin := r.Header.Get("Origin"); origin != "" && !sameOrigin(origin, r.Host, https) {
				deny(&problem.Problem{Type: problem.TypeCrossOrigin, Status: http.StatusForbidden,
					Detail: "cross-origin request refused: Origin " + origin + " is not this server"})
				return
			}
			if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
				deny(&problem.Problem{Type: problem.TypeCrossOrigin, Status: http.StatusForbidden,
					Detail: "cross-origin request refused (Sec-Fetch-Site: " + site + ")"})
				return
			}
		}
		if unsafeMethod(r.Method) && r.ContentLength != 0 && !rt.ownContentType && !jsonContentType(r) {
			deny(&problem.Problem{Type: problem.TypeUnsupported, Status: http.StatusUnsupportedMediaType,
				Detail: "Content-Type " + r.Header.Get("Content-Type") + " is not accepted here: send application/json"})
			return
		}
		if rt.scope != 0 {
			id, p := a.authenticate(r, rt)
			if p != nil {
				if p.Status == http.StatusUnauthorized {
					w.Header().Set("WWW-Authenticate", `Bearer realm="twinline"`)
				}
				deny(p)
				return
			}
			if id.Scopes&rt.scope == 0 {
				deny(&problem.Problem{Type: problem.TypeForbidden, Status: http.StatusForbidden,
					Detail: "this needs the " + scopeWords(rt.scope) + " scope; " + id.Name + " has " + scopeWords(id.Scopes)})
				a.auditDenied(r, rt, id, remote)
				return
			}
			ri.id = id
		}
		if rt.audit != "" {
			ri.rec = &auditRecord{action: rt.audit}
		}
		r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri))
		if ri.rec == nil {
			next.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		a.record(r, ri, sw.status)
	})
}

func scopeWords(s auth.Scope) string {
	if s == 0 {
		return "no"
	}
	return strings.Join(s.Names(), " or ")
}

// authenticate establishes who r acts as: a device certificate, a token
// (Authorization, InfluxDB's u/p), a stream ticket, the session cookie, or
// a trusted proxy's user; anonymous when auth is open and r brings none.
func (a *API) authenticate(r *http.Request, rt route) (auth.Identity, *problem.Problem) {
	if a.auth == nil {
		return auth.Anonymous, nil
	}
	unauthorized := func(detail string) (auth.Identity, *problem.Problem) {
		return auth.Identity{}, &problem.Problem{Type: problem.TypeUnauthorized, Status: http.StatusUnauthorized, Detail: detail}
	}
	if a.auth.Certificate != nil && r.TLS != nil {
		if id, ok := a.auth.Certificate(r.TLS); ok {
			return id, nil
		}
	}
	open := a.auth.Open()
	secret, err := auth.Credentials(r)
	switch {
	case err == nil:
		id, err := a.auth.Verify(secret)
		switch {
		case err == nil:
			return id, nil
		case open:
			// An open server takes anyone: a client configured with a
			// placeholder token (Telegraf, InfluxDB clients) still works.
			return auth.Anonymous, nil
		}
		return unauthorized("the token is not valid (unknown, expired or revoked)")
	case !errors.Is(err, auth.ErrNoCredentials) && !open:
		return unauthorized("malformed credentials: " + err.Error())
	}
	if rt.stream && a.auth.RedeemTicket != nil {
		if t := r.URL.Query().Get("ticket"); t != "" {
			id, err := a.auth.RedeemTicket(r.Context(), t)
			if err != nil {
				return unauthorized("the stream ticket is not valid (unknown, used or expired): get a new one from POST /api/v1/stream/tickets")
			}
			return id, nil
		}
	}
	if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" {
		id, err := a.auth.Verify(c.Value)
		if err != nil {
			return unauthorized("the session has ended: sign in again")
		}
		if unsafeMethod(r.Method) && !constantEqual(r.Header.Get(CSRFHeader), a.auth.CSRF(c.Value)) {
			return auth.Identity{}, &problem.Problem{Type: problem.TypeForbidden, Status: http.StatusForbidden,
				Detail: "a signed-in request that changes state needs the " + CSRFHeader + " header from GET /api/v1/session"}
		}
		return id, nil
	}
	if a.sec.AuthHeader != "" {
		if user := strings.TrimSpace(r.Header.Get(a.sec.AuthHeader)); user != "" && a.fromTrustedProxy(r) {
			return auth.Identity{Name: user, Kind: auth.KindProxy, Scopes: a.sec.AuthHeaderScopes}, nil
		}
	}
	if open {
		return auth.Anonymous, nil
	}
	return unauthorized("this needs a token: send Authorization: Bearer <token> (twinline token create), or sign in")
}

// fromTrustedProxy reports whether r's peer is one of --trusted-proxies.
func (a *API) fromTrustedProxy(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return a.trusted(host)
}

// statusWriter remembers the status code a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// visible reports whether the request's identity may see a machine of
// site.
func visible(r *http.Request, site string) bool { return identity(r).SeesSite(site) }

// ClientKey names the client of a request that went through the security
// layer, for rate limits and quotas: its verified identity, or "ip:" and
// its address (after --trusted-proxies) when it has none.
func ClientKey(r *http.Request) string {
	ri := info(r)
	if k := ri.id.Key(); k != "" {
		return k
	}
	host := ri.remote
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return "ip:" + host
}
