package api

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Problem is an RFC 9457 problem detail. Type is a URN naming the kind of
// problem (see docs/api.md); the extension members say exactly what was
// wrong so a client can fix and resend only that.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	// Accepted is the number of items stored despite the problem.
	Accepted *int `json:"accepted,omitempty"`
	// Duplicates is the number of items recognised as already stored.
	Duplicates *int `json:"duplicates,omitempty"`
	// Errors names each rejected item of a batch.
	Errors []ItemError `json:"errors,omitempty"`
	// InvalidParams names each bad query parameter.
	InvalidParams []InvalidParam `json:"invalidParams,omitempty"`
	// Error repeats Detail for InfluxDB 1.x clients, which read "error".
	Error string `json:"error,omitempty"`
	// Code and Message repeat the problem for InfluxDB 2.x clients.
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`

	retryAfter int // seconds; sets Retry-After when > 0
}

// ItemError names one rejected item: its array index (JSON) or line number
// (NDJSON, line protocol), the field, and the reason.
type ItemError struct {
	Index  *int   `json:"index,omitempty"`
	Line   *int   `json:"line,omitempty"`
	Field  string `json:"field,omitempty"`
	Reason string `json:"reason"`
}

// InvalidParam names one bad request parameter.
type InvalidParam struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Problem type URNs.
const (
	typeInvalidItems     = "urn:twinline:problem:invalid-items"
	typeMalformedBody    = "urn:twinline:problem:malformed-body"
	typeBodyTooLarge     = "urn:twinline:problem:body-too-large"
	typeUnsupported      = "urn:twinline:problem:unsupported-media-type"
	typeOverloaded       = "urn:twinline:problem:overloaded"
	typeStorage          = "urn:twinline:problem:storage-unavailable"
	typeInvalidParams    = "urn:twinline:problem:invalid-parameters"
	typeNotFound         = "urn:twinline:problem:not-found"
	typeMethodNotAllowed = "urn:twinline:problem:method-not-allowed"
	typeInvalidEntity    = "urn:twinline:problem:invalid-machine"
)

func writeProblem(w http.ResponseWriter, p *Problem) {
	if p.Title == "" {
		p.Title = http.StatusText(p.Status)
	}
	if p.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(p.retryAfter))
	}
	ct := "application/problem+json"
	if p.Code != "" {
		// InfluxDB client libraries read code and message only from an
		// application/json body; the document is the same problem.
		ct = "application/json"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func badParam(w http.ResponseWriter, name, reason string) {
	writeProblem(w, &Problem{
		Type: typeInvalidParams, Status: http.StatusBadRequest,
		Detail:        "invalid parameter " + name + ": " + reason,
		InvalidParams: []InvalidParam{{Name: name, Reason: reason}},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
