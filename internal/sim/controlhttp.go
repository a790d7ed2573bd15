package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxControlBody bounds a control response the device reads.
const maxControlBody = 1 << 20

// controlSlack is how much longer than its long-poll wait a request may
// take before the device gives up on it.
const controlSlack = 15 * time.Second

// HTTPControl is the Control of `twinline simulate`: the twin and command
// routes of a twinline server, long-polled.
//
//	GET   /api/v1/machines/{id}/twin/desired?version=N&wait=30s
//	PATCH /api/v1/machines/{id}/twin/reported
//	GET   /api/v1/machines/{id}/commands?state=pending&wait=30s
//	POST  /api/v1/machines/{id}/commands/{cmdId}/response
//
// Its client needs no timeout of its own (each request gets its wait plus
// 15s) and should carry a token with the ingest scope.
type HTTPControl struct {
	base   string
	client *http.Client
	wait   time.Duration
}

// NewHTTPControl returns the Control of the server at target; desired
// long-polls wait up to wait (0: DefaultControlWait). A nil client is
// http.DefaultClient.
func NewHTTPControl(target string, client *http.Client, wait time.Duration) *HTTPControl {
	if client == nil {
		client = http.DefaultClient
	}
	if wait <= 0 {
		wait = DefaultControlWait
	}
	return &HTTPControl{base: strings.TrimRight(target, "/"), client: client, wait: wait}
}

func (h *HTTPControl) machineURL(machine string, rest ...string) string {
	u := h.base + "/api/v1/machines/" + url.PathEscape(machine)
	for _, r := range rest {
		u += "/" + url.PathEscape(r)
	}
	return u
}

// waitParam formats a long-poll wait as whole seconds ("30s"), the form
// the API documents.
func waitParam(d time.Duration) string {
	return strconv.FormatInt(int64(max(d, 0)/time.Second), 10) + "s"
}

// Desired long-polls the machine's desired document. A 304 answer (no
// change within the wait) returns after and a nil document.
func (h *HTTPControl) Desired(ctx context.Context, machine string, after uint64) (uint64, map[string]any, error) {
	q := url.Values{"version": {strconv.FormatUint(after, 10)}, "wait": {waitParam(h.wait)}}
	var out struct {
		Version uint64         `json:"version"`
		Desired map[string]any `json:"desired"`
	}
	status, err := h.do(ctx, h.wait, http.MethodGet, h.machineURL(machine, "twin", "desired")+"?"+q.Encode(), nil, &out)
	if err != nil {
		return 0, nil, fmt.Errorf("polling the desired twin of %s: %w", machine, err)
	}
	if status == http.StatusNotModified {
		return after, nil, nil
	}
	if out.Desired == nil {
		out.Desired = map[string]any{}
	}
	return out.Version, out.Desired, nil
}

// Report sends patch as a JSON merge patch of the reported document.
func (h *HTTPControl) Report(ctx context.Context, machine string, patch map[string]any) error {
	body, err := json.Marshal(patch)
	if err != nil {
		return fmt.Errorf("encoding the reported patch of %s: %w", machine, err)
	}
	if _, err := h.do(ctx, 0, http.MethodPatch, h.machineURL(machine, "twin", "reported"), body, nil); err != nil {
		return fmt.Errorf("reporting the twin of %s: %w", machine, err)
	}
	return nil
}

// wireCommand is a command as the API sends it.
type wireCommand struct {
	ID     string         `json:"id"`
	Name   string         `json:"name"`
	Params map[string]any `json:"params"`
}

// Commands long-polls the machine's pending commands (the server marks
// them delivered). The answer may be a JSON array of commands or an object
// holding one as "commands".
func (h *HTTPControl) Commands(ctx context.Context, machine string, wait time.Duration) ([]Cmd, error) {
	q := url.Values{"state": {"pending"}, "wait": {waitParam(wait)}}
	var raw json.RawMessage
	if _, err := h.do(ctx, wait, http.MethodGet, h.machineURL(machine, "commands")+"?"+q.Encode(), nil, &raw); err != nil {
		return nil, fmt.Errorf("polling the commands of %s: %w", machine, err)
	}
	var list []wireCommand
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		var obj struct {
			Commands []wireCommand `json:"commands"`
		}
		if err := json.Unmarshal(t, &obj); err != nil {
			return nil, fmt.Errorf("decoding the commands of %s: %w", machine, err)
		}
		list = obj.Commands
	} else if len(t) > 0 {
		if err := json.Unmarshal(t, &list); err != nil {
			return nil, fmt.Errorf("decoding the commands of %s: %w", machine, err)
		}
	}
	out := make([]Cmd, 0, len(list))
	for _, c := range list {
		if c.ID == "" {
			return nil, fmt.Errorf("decoding the commands of %s: a command without an id", machine)
		}
		out = append(out, Cmd(c))
	}
	return out, nil
}

// Respond posts the device's answer to a command.
func (h *HTTPControl) Respond(ctx context.Context, machine, id, state string, result any, reason string) error {
	body, err := json.Marshal(struct {
		State  string `json:"state"`
		Result any    `json:"result,omitempty"`
		Reason string `json:"reason,omitempty"`
	}{state, result, reason})
	if err != nil {
		return fmt.Errorf("encoding the answer to command %s: %w", id, err)
	}
	if _, err := h.do(ctx, 0, http.MethodPost, h.machineURL(machine, "commands", id, "response"), body, nil); err != nil {
		return fmt.Errorf("answering command %s of %s: %w", id, machine, err)
	}
	return nil
}

// do makes one request, bounded by wait plus controlSlack, and decodes a
// 200 answer into out (when not nil). It returns the status: 2xx or 304;
// any other is a *StatusError.
func (h *HTTPControl) do(ctx context.Context, wait time.Duration, method, u string, body []byte, out any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+controlSlack)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("User-Agent", "twinline-simulate")
	if body != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return resp.StatusCode, nil
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return resp.StatusCode, readProblem(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxControlBody+1))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("reading the answer: %w", err)
	}
	if len(b) > maxControlBody {
		return resp.StatusCode, errors.New("reading the answer: longer than 1 MiB")
	}
	if out != nil && resp.StatusCode != http.StatusNoContent && len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decoding the answer: %w", err)
		}
	}
	return resp.StatusCode, nil
}
