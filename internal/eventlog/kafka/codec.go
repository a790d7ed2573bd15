package kafka

import (
	"fmt"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// AppendEvent appends ev to dst as a record value: the event's wire form,
// written by ingest.AppendEvent, which the processor reads back with
// ingest.DecodeJSON to the same event. An event the decoder would refuse
// (a non-finite value, an invalid machine id, …) is not written: the error
// wraps ErrInvalidEvent and the *ingest.EventError that says why.
func AppendEvent(dst []byte, ev *telemetry.Event) ([]byte, error) {
	b, err := ingest.AppendEvent(dst, ev)
	if err != nil {
		return dst, fmt.Errorf("encoding record value: %w: %w", ErrInvalidEvent, err)
	}
	return b, nil
}
