package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/problem"
)

// sessionView is the answer of the session endpoints: who the dashboard
// acts as and what it may do.
type sessionView struct {
	Name         string    `json:"name"`
	Kind         auth.Kind `json:"kind"`
	Scopes       []string  `json:"scopes"`
	Sites        []string  `json:"sites,omitempty"`
	AuthRequired bool      `json:"authRequired"`
	CSRF         string    `json:"csrf"`
	Expires      string    `json:"expires,omitempty"`
	// Tracing says whether the dashboard traces its renders.
	Tracing *tracingView `json:"tracing,omitempty"`
}

func (a *API) authRequired() bool { return a.auth != nil && !a.auth.Open() }

// handleSessionGet is GET /api/v1/session: the identity of the request
// (its session cookie, token or proxy user), or 401 when a sign-in is
// needed.
func (a *API) handleSessionGet(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	v := sessionView{Name: id.Name, Kind: id.Kind, Scopes: id.Scopes.Names(), Sites: id.Sites, AuthRequired: a.authRequired(),
		Tracing: a.tracingView()}
	if c, err := r.Cookie(SessionCookie); err == nil && id.Kind == auth.KindSession && a.auth != nil {
		v.CSRF = a.auth.CSRF(c.Value)
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, v)
}

// handleSessionPost is POST /api/v1/session {"token":"…"}: signs the
// dashboard in, setting the session cookie (HttpOnly, SameSite=Strict,
// Secure on TLS) in exchange for a valid token. A trusted proxy's user
// signs in without a token.
func (a *API) handleSessionPost(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if !a.authRequired() {
		writeJSON(w, http.StatusOK, sessionView{Name: auth.Anonymous.Name, Kind: auth.KindAnonymous, Scopes: auth.AllScopes.Names(),
			Tracing: a.tracingView()})
		return
	}
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	var in struct {
		Token string `json:"token"`
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			problem.Write(w, &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest,
				Detail: `the body must be a JSON object {"token":"…"}: ` + err.Error()})
			return
		}
	}
	var id auth.Identity
	switch {
	case in.Token != "":
		v, err := a.auth.Verify(strings.TrimSpace(in.Token))
		if err != nil {
			problem.Write(w, &problem.Problem{Type: problem.TypeUnauthorized, Status: http.StatusUnauthorized,
				Detail: "this token is not valid (unknown, expired or revoked)"})
			return
		}
		id = v
	default:
		// Signed in some other way (proxy user, or a session already).
		cur, p := a.authenticate(r, route{scope: auth.AllScopes})
		if p != nil || cur.Kind == auth.KindAnonymous {
			problem.Write(w, &problem.Problem{Type: problem.TypeUnauthorized, Status: http.StatusUnauthorized,
				Detail: `send {"token":"…"}: a token made with twinline token create`})
			return
		}
		id = cur
	}
	if id.Kind == auth.KindCertificate {
		problem.Write(w, &problem.Problem{Type: problem.TypeForbidden, Status: http.StatusForbidden,
			Detail: "a device certificate cannot sign in to the dashboard"})
		return
	}
	secret, csrf, expires, err := a.auth.NewSession(r.Context(), id, a.sec.SessionTTL)
	if err != nil {
		a.logger.Error("creating a session", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "the session could not be stored; retry"})
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: secret, Path: "/", Expires: expires,
		HttpOnly: true, Secure: info(r).https, SameSite: http.SameSiteStrictMode,
	})
	a.appendAudit(r.Context(), auth.AuditEntry{At: a.now().UTC(), Actor: id.Name, ActorKind: id.Kind,
		Action: "session.create", Remote: info(r).remote, Outcome: "ok"})
	writeJSON(w, http.StatusOK, sessionView{Name: id.Name, Kind: auth.KindSession, Scopes: id.Scopes.Names(), Sites: id.Sites,
		AuthRequired: true, CSRF: csrf, Expires: expires.UTC().Format(time.RFC3339), Tracing: a.tracingView()})
}

// handleSessionDelete is DELETE /api/v1/session: signs out (the session is
// revoked, on every replica) and clears the cookie.
func (a *API) handleSessionDelete(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" && a.auth != nil && a.auth.EndSession != nil {
		if err := a.auth.EndSession(r.Context(), c.Value); err != nil && !errors.Is(err, auth.ErrNotFound) {
			a.logger.Warn("ending a session", "err", err)
		}
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: info(r).https, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

// handleTicket is POST /api/v1/stream/tickets: a single-use ticket, valid
// for seconds, for a browser to open the live stream with ?ticket= (a
// browser's WebSocket cannot send an Authorization header, and a
// long-lived token must never be in a URL).
func (a *API) handleTicket(w http.ResponseWriter, r *http.Request) {
	if a.auth == nil || a.auth.IssueTicket == nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: "stream tickets are not enabled"})
		return
	}
	ticket, expires, err := a.auth.IssueTicket(r.Context(), identity(r))
	if err != nil {
		a.logger.Error("issuing a stream ticket", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "the ticket could not be issued; retry"})
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, map[string]string{"ticket": ticket, "expires": expires.UTC().Format(time.RFC3339Nano)})
}

// tokenView is a token as the API lists it: never its secret or hash.
type tokenView struct {
	Name     string   `json:"name"`
	Scopes   []string `json:"scopes"`
	Sites    []string `json:"sites,omitempty"`
	Created  string   `json:"created"`
	Expires  string   `json:"expires,omitempty"`
	LastUsed string   `json:"lastUsed,omitempty"`
	Revoked  string   `json:"revoked,omitempty"`
	// Secret is set only in the answer that created the token.
	Secret string `json:"token,omitempty"`
}

func viewToken(t auth.Token) tokenView {
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	return tokenView{Name: t.Name, Scopes: t.Scopes.Names(), Sites: t.Sites, Created: ts(t.Created),
		Expires: ts(t.Expires), LastUsed: ts(t.LastUsed), Revoked: ts(t.Revoked)}
}

// handleTokens is GET /api/v1/tokens: the API tokens (not sessions).
func (a *API) handleTokens(w http.ResponseWriter, r *http.Request) {
	out := []tokenView{}
	if a.auth != nil && a.auth.Tokens != nil {
		id := identity(r)
		for _, t := range a.auth.Tokens.List() {
			if t.Parent != "" || id.Restricted() && !subset(t.Sites, id.Sites) {
				continue
			}
			out = append(out, viewToken(t))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": len(out), "tokens": out})
}

// subset reports whether sites (nil: every site) lies within of.
func subset(sites, of []string) bool {
	if len(sites) == 0 {
		return false
	}
	for _, s := range sites {
		if !slices.Contains(of, s) {
			return false
		}
	}
	return true
}

// handleTokenCreate is POST /api/v1/tokens {"name","scopes":[…],
// "sites":[…],"expires":"90d"|RFC 3339}: the answer holds the secret, the
// only time it is shown. An identity cannot give more than it has: scopes
// it lacks, or sites beyond its own.
func (a *API) handleTokenCreate(w http.ResponseWriter, r *http.Request) {
	if a.auth == nil || a.auth.Tokens == nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: "tokens are not enabled"})
		return
	}
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	var in struct {
		Name    string   `json:"name"`
		Scopes  []string `json:"scopes"`
		Sites   []string `json:"sites"`
		Expires string   `json:"expires"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest,
			Detail: `the body must be a JSON object {"name":"…","scopes":["read"],"sites":["lyon"],"expires":"90d"}: ` + err.Error()})
		return
	}
	scopes, err := auth.ParseScopes(strings.Join(in.Scopes, ","))
	if err != nil {
		badParam(w, "scopes", err.Error())
		return
	}
	var expires time.Time
	if in.Expires != "" {
		if expires, err = ParseExpiry(in.Expires, a.now()); err != nil {
			badParam(w, "expires", err.Error())
			return
		}
	}
	id := identity(r)
	if !id.Scopes.Has(scopes) {
		problem.Write(w, &problem.Problem{Type: problem.TypeForbidden, Status: http.StatusForbidden,
			Detail: "a token cannot have scopes its creator lacks (" + scopes.String() + " asked, " + id.Scopes.String() + " held)"})
		return
	}
	if id.Restricted() && !subset(in.Sites, id.Sites) {
		problem.Write(w, &problem.Problem{Type: problem.TypeForbidden, Status: http.StatusForbidden,
			Detail: "a site-restricted admin creates tokens for some of its own sites only: " + strings.Join(id.Sites, ",")})
		return
	}
	t, secret, err := a.auth.Tokens.Create(r.Context(), in.Name, scopes, in.Sites, expires, id.Name)
	switch {
	case errors.Is(err, auth.ErrExists):
		problem.Write(w, &problem.Problem{Type: problem.TypeConflict, Status: http.StatusConflict, Detail: "a token named " + in.Name + " exists"})
		return
	case err != nil:
		badParam(w, "name", err.Error())
		return
	}
	note(r, "", t.Name, map[string]any{"scopes": t.Scopes.Names(), "sites": t.Sites})
	v := viewToken(t)
	v.Secret = secret
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, v)
}

// handleTokenRevoke is DELETE /api/v1/tokens/{name}: in force on every
// replica within 2 s.
func (a *API) handleTokenRevoke(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	note(r, "", name, nil)
	if a.auth == nil || a.auth.Tokens == nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: "no token named " + name})
		return
	}
	id := identity(r)
	if id.Restricted() {
		i := slices.IndexFunc(a.auth.Tokens.List(), func(t auth.Token) bool { return t.Name == name })
		if i < 0 || !subset(a.auth.Tokens.List()[i].Sites, id.Sites) {
			problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: "no token named " + name})
			return
		}
	}
	err := a.auth.Tokens.Revoke(r.Context(), name)
	if errors.Is(err, auth.ErrNotFound) {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: "no token named " + name})
		return
	}
	if err != nil {
		a.logger.Error("revoking a token", "name", name, "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1, Detail: "the revocation could not be stored; retry"})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ParseExpiry parses a token expiry: a duration from now ("90d", "12h")
// or an RFC 3339 time, which must be in the future.
func ParseExpiry(s string, now time.Time) (time.Time, error) {
	if d, err := parseDays(s); err == nil {
		if d <= 0 {
			return time.Time{}, errors.New("must be positive")
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, errors.New("must be a duration like 90d or 12h, or an RFC 3339 time")
	}
	if !t.After(now) {
		return time.Time{}, errors.New("must be in the future")
	}
	return t, nil
}

func parseDays(s string) (time.Duration, error) {
	d, err := model.ParseDuration(s)
	return time.Duration(d), err
}
