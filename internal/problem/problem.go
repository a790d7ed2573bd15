// Package problem writes RFC 9457 problem details, the body of every error
// answer twinline sends, with the problem type URNs documented in
// docs/api.md.
package problem

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Problem type URNs.
const (
	TypeInvalidItems     = "urn:twinline:problem:invalid-items"
	TypeMalformedBody    = "urn:twinline:problem:malformed-body"
	TypeBodyTooLarge     = "urn:twinline:problem:body-too-large"
	TypeUnsupported      = "urn:twinline:problem:unsupported-media-type"
	TypeOverloaded       = "urn:twinline:problem:overloaded"
	TypeStorage          = "urn:twinline:problem:storage-unavailable"
	TypeInvalidParams    = "urn:twinline:problem:invalid-parameters"
	TypeNotFound         = "urn:twinline:problem:not-found"
	TypeMethodNotAllowed = "urn:twinline:problem:method-not-allowed"
	TypeUpgradeRequired  = "urn:twinline:problem:upgrade-required"
	TypeInvalidMachine   = "urn:twinline:problem:invalid-machine"
	TypeConflict         = "urn:twinline:problem:conflict"
	TypeRateLimited      = "urn:twinline:problem:rate-limited"
	TypeUnauthorized     = "urn:twinline:problem:unauthorized"
	TypeForbidden        = "urn:twinline:problem:forbidden"
	TypeHostNotAllowed   = "urn:twinline:problem:host-not-allowed"
	TypeCrossOrigin      = "urn:twinline:problem:cross-origin"
	TypeUpstream         = "urn:twinline:problem:upstream-unavailable"
	// TypeInvalidDocument: a document (twin desired) violates its schema
	// or a limit (422); InvalidParams names the fields.
	TypeInvalidDocument = "urn:twinline:problem:invalid-document"
	// TypePreconditionFailed: If-Match names a version that is not the
	// current one (412).
	TypePreconditionFailed = "urn:twinline:problem:precondition-failed"
)

// Problem is an RFC 9457 problem detail. The extension members say exactly
// what was wrong, so a client can fix and resend only that.
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
	// InvalidParams names each bad request parameter.
	InvalidParams []InvalidParam `json:"invalidParams,omitempty"`
	// Error repeats Detail for InfluxDB 1.x clients, which read "error".
	Error string `json:"error,omitempty"`
	// Code and Message repeat the problem for InfluxDB 2.x clients; with
	// Code set the body goes out as application/json, the only media type
	// those clients parse.
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`

	// RetryAfter, in seconds, sets the Retry-After header when positive.
	RetryAfter int `json:"-"`
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

// Write sends p, filling the title from the status when it is empty.
func Write(w http.ResponseWriter, p *Problem) {
	if p.Title == "" {
		p.Title = http.StatusText(p.Status)
	}
	if p.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(p.RetryAfter))
	}
	ct := "application/problem+json"
	if p.Code != "" {
		ct = "application/json"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}
