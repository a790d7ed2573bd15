//go:build !linux

package bench

import (
	"errors"
	"time"
)

var errNoProc = errors.New("process statistics need Linux /proc")

// RSS returns the resident set size of the process (Linux only).
func (p Process) RSS() (int64, error) { return 0, errNoProc }

// CPU returns the user + system CPU time the process has used (Linux only).
func (p Process) CPU() (time.Duration, error) { return 0, errNoProc }

// RaiseOpenFiles is a no-op outside Linux; it reports want as the limit.
func RaiseOpenFiles(want uint64) (uint64, error) { return want, nil }
