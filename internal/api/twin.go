package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/twin"
)

// twinDocs are the machines' desired and reported documents
// (control.Twins).
type twinDocs interface {
	Get(ctx context.Context, machine string) (control.Twin, error)
	PatchDesired(ctx context.Context, machine string, patch []byte, ifMatch *uint64, by string) (control.Twin, error)
	PatchReported(ctx context.Context, machine string, patch []byte, by string) (control.Twin, error)
	Wait(ctx context.Context, machine string, after uint64) (control.Twin, error)
}

// maxTwinWait bounds a long-poll of the desired document.
const maxTwinWait = 60 * time.Second

// twinETag is a twin's entity tag: "<version>.<reportedVersion>".
func twinETag(tw control.Twin) string {
	return `"` + strconv.FormatUint(tw.Version, 10) + "." + strconv.FormatUint(tw.ReportedVersion, 10) + `"`
}

// parseIfMatch reads If-Match for a desired patch: "7", "7.12" (only the
// desired version counts), W/ forms, or * (nil: unconditional, as
// without the header). ok is false when it is malformed.
func parseIfMatch(h string) (v *uint64, ok bool) {
	h = strings.TrimSpace(h)
	if h == "" || h == "*" {
		return nil, true
	}
	h = strings.TrimPrefix(h, "W/")
	if len(h) < 2 || h[0] != '"' || h[len(h)-1] != '"' {
		return nil, false
	}
	h = h[1 : len(h)-1]
	if i := strings.IndexByte(h, '.'); i >= 0 {
		if _, err := strconv.ParseUint(h[i+1:], 10, 64); err != nil {
			return nil, false
		}
		h = h[:i]
	}
	n, err := strconv.ParseUint(h, 10, 64)
	if err != nil {
		return nil, false
	}
	return &n, true
}

// twinMachine checks that the request's identity may touch machine id's
// twin: a device certificate its own machine only (403), anyone else a
// machine of its sites (another site's, or an unknown one: 404). It
// answers the refusal.
func (a *API) twinMachine(w http.ResponseWriter, r *http.Request, id string) bool {
	if a.twins == nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound,
			Detail: "twin documents are not served by this server"})
		return false
	}
	if ident := identity(r); ident.Machine != "" && ident.Machine != id {
		problem.Write(w, &problem.Problem{Type: problem.TypeForbidden, Status: http.StatusForbidden,
			Detail: "this certificate acts for machine " + ident.Machine + " only"})
		return false
	}
	if _, err := a.getMachine(r, id); err != nil {
		a.twinError(w, err)
		return false
	}
	return true
}

// handleTwinGet is GET /api/v1/machines/{id}/twin.
func (a *API) handleTwinGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !a.twinMachine(w, r, id) {
		return
	}
	tw, err := a.twins.Get(r.Context(), id)
	if err != nil {
		a.twinDocError(w, err)
		return
	}
	w.Header().Set("ETag", twinETag(tw))
	writeJSON(w, http.StatusOK, tw)
}

// handleTwinDesiredPatch is PATCH /api/v1/machines/{id}/twin/desired: a
// JSON merge patch of the desired document, checked against the machine's
// desired schema, conditional on If-Match.
func (a *API) handleTwinDesiredPatch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !a.twinMachine(w, r, id) {
		return
	}
	ifMatch, ok := parseIfMatch(r.Header.Get("If-Match"))
	if !ok {
		badParam(w, "If-Match", `must be an entity tag "<version>" or "<version>.<reportedVersion>" (W/ allowed), or *`)
		return
	}
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	before, err := a.twins.Get(r.Context(), id)
	if err != nil {
		a.twinDocError(w, err)
		return
	}
	tw, err := a.twins.PatchDesired(r.Context(), id, body, ifMatch, identity(r).Name)
	if err != nil {
		if errors.Is(err, control.ErrVersionMismatch) {
			w.Header().Set("ETag", twinETag(tw))
		}
		a.twinDocError(w, err)
		return
	}
	note(r, id, "", map[string]any{"before": before.Desired, "after": tw.Desired, "version": tw.Version})
	w.Header().Set("ETag", twinETag(tw))
	writeJSON(w, http.StatusOK, tw)
}

// handleTwinReportedPatch is PATCH /api/v1/machines/{id}/twin/reported:
// the device's merge patch of what it has.
func (a *API) handleTwinReportedPatch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !a.twinMachine(w, r, id) {
		return
	}
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	tw, err := a.twins.PatchReported(r.Context(), id, body, identity(r).Name)
	if err != nil {
		a.twinDocError(w, err)
		return
	}
	w.Header().Set("ETag", twinETag(tw))
	writeJSON(w, http.StatusOK, tw)
}

// desiredDoc is the answer of the desired long-poll.
type desiredDoc struct {
	Machine string         `json:"machine"`
	Version uint64         `json:"version"`
	Desired map[string]any `json:"desired"`
}

// handleTwinDesiredGet is GET /api/v1/machines/{id}/twin/desired
// [?version=N&wait=30s]: the desired document once its version is above
// N, waiting up to wait (at most 60 s); when the wait ends first, the
// current document (200; the client compares versions).
func (a *API) handleTwinDesiredGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !a.twinMachine(w, r, id) {
		return
	}
	q := r.URL.Query()
	var after uint64
	if s := q.Get("version"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			badParam(w, "version", "must be a non-negative integer")
			return
		}
		after = n
	}
	var wait time.Duration
	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > maxTwinWait {
			badParam(w, "wait", "must be a duration from 0s to "+maxTwinWait.String())
			return
		}
		wait = d
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	tw, err := a.twins.Wait(ctx, id, after)
	if err != nil {
		a.twinDocError(w, err)
		return
	}
	w.Header().Set("ETag", twinETag(tw))
	writeJSON(w, http.StatusOK, desiredDoc{Machine: id, Version: tw.Version, Desired: tw.Desired})
}

// twinDocError answers an error of control.Twins.
func (a *API) twinDocError(w http.ResponseWriter, err error) {
	var ve *control.ValidationError
	switch {
	case errors.As(err, &ve):
		params := make([]problem.InvalidParam, len(ve.Fields))
		for i, f := range ve.Fields {
			params[i] = problem.InvalidParam{Name: f.Field, Reason: f.Reason}
		}
		problem.Write(w, &problem.Problem{Type: problem.TypeInvalidDocument, Status: http.StatusUnprocessableEntity,
			Detail: err.Error(), InvalidParams: params})
	case errors.Is(err, control.ErrMalformed):
		problem.Write(w, &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest,
			Detail: err.Error() + `; send a JSON merge patch object (RFC 7396), e.g. {"tempSetpoint":180}`})
	case errors.Is(err, control.ErrVersionMismatch):
		problem.Write(w, &problem.Problem{Type: problem.TypePreconditionFailed, Status: http.StatusPreconditionFailed,
			Detail: err.Error() + "; read the twin again (its ETag) and retry"})
	case errors.Is(err, twin.ErrNotFound):
		a.twinError(w, err)
	default:
		a.logger.Error("twin documents", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "the twin store did not answer; retry"})
	}
}
