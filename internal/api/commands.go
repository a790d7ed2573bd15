package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/twin"
)

const (
	maxCommandsListed = 1000
	// maxCommandWait bounds a device's long-poll for commands.
	maxCommandWait = 60 * time.Second
)

// commandMachine checks that the request's identity may act on machine
// id's commands: the machine exists and is at one of its sites, and a
// device identity is that machine's. It answers the refusal (404: another
// site's machine, or another device's, is not revealed).
func (a *API) commandMachine(w http.ResponseWriter, r *http.Request, id string) bool {
	if _, err := a.getMachine(r, id); err != nil {
		a.twinError(w, err)
		return false
	}
	if dev := identity(r).Machine; dev != "" && dev != id {
		a.twinError(w, fmt.Errorf("%w: machine %q", twin.ErrNotFound, id))
		return false
	}
	if a.commands == nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound,
			Detail: "commands are not enabled on this server"})
		return false
	}
	return true
}

// commandError answers an error of package control.
func (a *API) commandError(w http.ResponseWriter, err error) {
	var ve *control.ValidationError
	switch {
	case errors.As(err, &ve):
		p := &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusUnprocessableEntity, Detail: ve.Error()}
		for _, f := range ve.Fields {
			p.InvalidParams = append(p.InvalidParams, problem.InvalidParam{Name: f.Field, Reason: f.Reason})
		}
		problem.Write(w, p)
	case errors.Is(err, control.ErrNotFound):
		problem.Write(w, &problem.Problem{Type: problem.TypeNotFound, Status: http.StatusNotFound, Detail: err.Error()})
	case errors.Is(err, control.ErrConflict):
		problem.Write(w, &problem.Problem{Type: problem.TypeConflict, Status: http.StatusConflict, Detail: err.Error()})
	case errors.Is(err, control.ErrInvalid):
		problem.Write(w, &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusBadRequest, Detail: err.Error()})
	default:
		a.logger.Error("handling a command", "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: "the command store did not answer; retry"})
	}
}

// decodeStrict decodes a JSON object body into v, refusing unknown fields
// and trailing data; it answers 400 naming the expected shape.
func decodeStrict(w http.ResponseWriter, body []byte, v any, shape string) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("data after the object")
	}
	if err != nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest,
			Detail: "the body must be a JSON object " + shape + ": " + err.Error()})
		return false
	}
	return true
}

// handleCommandCreate is POST /api/v1/machines/{id}/commands with
// {"name":"reset","params":{…},"timeout":"30s"} and an optional
// Idempotency-Key header: 202 with the new pending command and its
// Location, or 200 with the command created earlier under that key.
func (a *API) handleCommandCreate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !a.commandMachine(w, r, id) {
		return
	}
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	var in struct {
		Name    string         `json:"name"`
		Params  map[string]any `json:"params"`
		Timeout string         `json:"timeout"`
	}
	if !decodeStrict(w, body, &in, `{"name":"…","params":{…},"timeout":"30s"}`) {
		return
	}
	var timeout time.Duration
	if in.Timeout != "" {
		d, err := time.ParseDuration(in.Timeout)
		if err != nil || d <= 0 {
			badParam(w, "timeout", fmt.Sprintf("%q is not a duration like 30s or 5m", in.Timeout))
			return
		}
		timeout = d
	}
	cmd, created, err := a.commands.Create(r.Context(), id, control.CreateRequest{
		Name: in.Name, Params: in.Params, Timeout: timeout,
		IdempotencyKey: r.Header.Get("Idempotency-Key"), By: identity(r).Name,
	})
	if err != nil {
		a.commandError(w, err)
		return
	}
	note(r, id, cmd.ID, map[string]any{"name": cmd.Name, "params": cmd.Params, "timeoutMs": cmd.TimeoutMs, "created": created})
	w.Header().Set("Location", "/api/v1/machines/"+url.PathEscape(id)+"/commands/"+url.PathEscape(cmd.ID))
	status := http.StatusAccepted
	if !created {
		status = http.StatusOK
	}
	writeJSON(w, status, cmd)
}

// handleCommandsGet is GET /api/v1/machines/{id}/commands?state=&name=
// &limit=&wait=: the machine's commands, newest first. With state=pending
// and wait, an identity with the ingest scope (a device) fetches: it gets
// the pending commands, oldest first, each marked delivered, waiting up to
// wait (≤ 60 s) for one; any other identity just lists.
func (a *API) handleCommandsGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !a.commandMachine(w, r, id) {
		return
	}
	q := r.URL.Query()
	f := control.Filter{State: control.State(q.Get("state")), Name: q.Get("name"), Limit: 100}
	if f.State != "" && !f.State.Valid() {
		badParam(w, "state", "must be one of pending, delivered, accepted, rejected, succeeded, failed, expired")
		return
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxCommandsListed {
			badParam(w, "limit", "must be an integer from 1 to "+strconv.Itoa(maxCommandsListed))
			return
		}
		f.Limit = n
	}
	var wait time.Duration
	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > maxCommandWait {
			badParam(w, "wait", "must be a duration from 0s to "+maxCommandWait.String())
			return
		}
		wait = d
	}
	var (
		cmds []control.Command
		err  error
	)
	if f.State == control.StatePending && q.Has("wait") && identity(r).Scopes&auth.ScopeIngest != 0 {
		cmds, err = a.commands.Fetch(r.Context(), id, wait)
		if r.Context().Err() != nil {
			return // the device went away
		}
	} else {
		cmds, err = a.commands.List(r.Context(), id, f)
	}
	if err != nil {
		a.commandError(w, err)
		return
	}
	if cmds == nil {
		cmds = []control.Command{}
	}
	writeJSON(w, http.StatusOK, struct {
		Machine  string            `json:"machine"`
		Commands []control.Command `json:"commands"`
	}{id, cmds})
}

// handleCommandGet is GET /api/v1/machines/{id}/commands/{cmdId}.
func (a *API) handleCommandGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !a.commandMachine(w, r, id) {
		return
	}
	cmd, err := a.commands.Get(r.Context(), id, r.PathValue("cmdId"))
	if err != nil {
		a.commandError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, cmd)
}

// handleCommandResponse is POST /api/v1/machines/{id}/commands/{cmdId}/response
// with {"state":"accepted|rejected|succeeded|failed","result":{…},
// "reason":"…"}: a device's answer. An answer to a finished command is 409.
func (a *API) handleCommandResponse(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !a.commandMachine(w, r, id) {
		return
	}
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	var in struct {
		State  control.State   `json:"state"`
		Result json.RawMessage `json:"result"`
		Reason string          `json:"reason"`
	}
	if !decodeStrict(w, body, &in, `{"state":"accepted|rejected|succeeded|failed","result":{…},"reason":"…"}`) {
		return
	}
	resp := control.Response{State: in.State, Reason: in.Reason, By: identity(r).Name, Via: "http"}
	if len(in.Result) > 0 && string(in.Result) != "null" {
		resp.Result = in.Result
	}
	note(r, id, r.PathValue("cmdId"), map[string]any{"state": string(in.State)})
	cmd, err := a.commands.Respond(r.Context(), id, r.PathValue("cmdId"), resp)
	if err != nil {
		a.commandError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, cmd)
}
