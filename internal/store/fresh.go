package store

import (
	"context"

	"github.com/twinline/twinline/internal/telemetry"
)

// FreshAppender is implemented by stores that report which samples an
// append actually stored. The event-time engine then leaves the
// deduplication of samples to the store's own (machine, metric, time) key
// — at any age and across restarts — instead of remembering sample keys
// itself (stream.EngineConfig.StoreDedups).
type FreshAppender interface {
	// AppendFresh is Append, and sets fresh[i] (len(fresh) must equal
	// len(samples)) to whether samples[i] was stored by this call: false
	// when the store already held a sample of its machine, metric and
	// time (also from earlier in samples), or when it was not stored (out
	// of bounds, invalid). On an error other than ErrOutOfBounds the flags
	// mean nothing.
	AppendFresh(ctx context.Context, samples []telemetry.Sample, fresh []bool) error
}
