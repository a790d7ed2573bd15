package api

import (
	"context"
	"crypto/subtle"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/problem"
)

func constantEqual(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// auditRecord is what a handler adds to the audit entry of its request:
// the machine and object acted on, and what changed.
type auditRecord struct {
	action  string
	machine string
	target  string
	detail  map[string]any
}

// note adds to the audit entry of r (a no-op for requests not audited).
func note(r *http.Request, machine, target string, detail map[string]any) {
	rec := info(r).rec
	if rec == nil {
		return
	}
	if machine != "" {
		rec.machine = machine
	}
	if target != "" {
		rec.target = target
	}
	if detail != nil {
		if rec.detail == nil {
			rec.detail = map[string]any{}
		}
		for k, v := range detail {
			rec.detail[k] = v
		}
	}
}

// record appends the audit entry of an operate or admin request once it
// was answered. The store's errors are logged: the action was done.
func (a *API) record(r *http.Request, ri *reqInfo, status int) {
	if a.auth == nil || a.auth.Audit == nil {
		return
	}
	rec := ri.rec
	if rec.machine == "" {
		rec.machine = machineOf(r)
	}
	outcome := "ok"
	switch {
	case status == 0 || status < 400:
	case status == http.StatusForbidden || status == http.StatusUnauthorized:
		outcome = "denied"
	default:
		outcome = "error: " + strconv.Itoa(status)
	}
	a.appendAudit(r.Context(), auth.AuditEntry{
		At: a.now().UTC(), Actor: ri.id.Name, ActorKind: ri.id.Kind, Action: rec.action,
		Machine: rec.machine, Target: rec.target, Remote: ri.remote, Outcome: outcome, Detail: rec.detail,
	})
}

// auditDenied records an operate or admin request refused for its scope.
func (a *API) auditDenied(r *http.Request, rt route, id auth.Identity, remote string) {
	if rt.audit == "" || a.auth == nil || a.auth.Audit == nil {
		return
	}
	a.appendAudit(r.Context(), auth.AuditEntry{
		At: a.now().UTC(), Actor: id.Name, ActorKind: id.Kind, Action: rt.audit,
		Machine: machineOf(r), Remote: remote, Outcome: "denied",
	})
}

func (a *API) appendAudit(ctx context.Context, e auth.AuditEntry) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := a.auth.Audit.Append(ctx, e); err != nil {
		a.logger.Error("recording an audit entry", "action", e.Action, "actor", e.Actor, "err", err)
	}
}

// handleAudit is GET /api/v1/audit?from=&to=&actor=&machine=&action=&limit=,
// newest first. A site-restricted admin sees only the entries about
// machines of its sites.
func (a *API) handleAudit(w http.ResponseWriter, r *http.Request) {
	if !csvFormat(w, r) {
		return
	}
	if a.auth == nil || a.auth.Audit == nil {
		if wantsCSV(r) {
			writeAuditCSV(w, nil)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"count": 0, "entries": []auth.AuditEntry{}})
		return
	}
	q := r.URL.Query()
	f := auth.AuditFilter{Actor: q.Get("actor"), Machine: q.Get("machine"), Action: q.Get("action"), Limit: 1000}
	now := a.now()
	if s := q.Get("from"); s != "" {
		t, err := parseTime(s, now)
		if err != nil {
			badParam(w, "from", err.Error())
			return
		}
		f.From = t
	}
	if s := q.Get("to"); s != "" {
		t, err := parseTime(s, now)
		if err != nil {
			badParam(w, "to", err.Error())
			return
		}
		f.To = t
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			badParam(w, "limit", "must be an integer from 1 to 10000")
			return
		}
		f.Limit = n
	}
	entries, err := a.auth.Audit.Query(r.Context(), f)
	if err != nil {
		a.logger.Error("querying the audit log", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "the audit log could not be read; retry"})
		return
	}
	id := identity(r)
	if id.Restricted() {
		kept := entries[:0]
		for _, e := range entries {
			if e.Machine != "" && a.machineVisible(id, e.Machine) {
				kept = append(kept, e)
			}
		}
		entries = kept
	}
	if entries == nil {
		entries = []auth.AuditEntry{}
	}
	if wantsCSV(r) {
		writeAuditCSV(w, entries)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Count   int               `json:"count"`
		Entries []auth.AuditEntry `json:"entries"`
	}{len(entries), entries})
}

// machineVisible reports whether id may see the machine (registered at
// one of its sites).
func (a *API) machineVisible(id auth.Identity, machine string) bool {
	if !id.Restricted() {
		return true
	}
	site, ok := a.registry.Site(machine)
	return ok && id.SeesSite(site)
}

// machineOf returns the machine a /machines/{id}… request is about, or "".
func machineOf(r *http.Request) string {
	if strings.Contains(r.Pattern, "/machines/{id}") {
		return r.PathValue("id")
	}
	return ""
}
