package control

import (
	"errors"
	"strings"

	"github.com/twinline/twinline/internal/twin"
)

// The errors of the package, checked with errors.Is; the API maps them to
// HTTP status codes.
var (
	// ErrNotFound: no such command (or twin).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the change contradicts the current state, like a
	// device's answer to a command already finished.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the request is malformed or violates a schema; a
	// ValidationError tells which fields and why.
	ErrInvalid = errors.New("invalid")
	// ErrMalformed: the input is not JSON, not an object, or nests too
	// deep (400).
	ErrMalformed = errors.New("malformed input")
	// ErrVersionMismatch: the If-Match version is not the current one
	// (412).
	ErrVersionMismatch = errors.New("version mismatch")
	// ErrConcurrentUpdate is a TwinStore's answer to a Put whose previous
	// versions are not the stored ones: another writer came first. Twins
	// reads again and retries.
	ErrConcurrentUpdate = errors.New("concurrent update")
)

// ValidationError lists the fields a request got wrong; it matches
// ErrInvalid.
type ValidationError struct {
	Fields []twin.FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Error()
	}
	return "invalid: " + strings.Join(parts, "; ")
}

// Is makes a ValidationError match ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }
