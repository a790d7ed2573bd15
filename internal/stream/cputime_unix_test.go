//go:build unix

package stream

import (
	"syscall"
	"time"
)

// processCPUTime returns the user and system CPU time the process used,
// which, unlike wall time, does not count time other processes ran: the
// figure to compare on a shared machine.
func processCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
