//go:build !unix

package stream

import "time"

// processCPUTime is not measured here: 0.
func processCPUTime() time.Duration { return 0 }
