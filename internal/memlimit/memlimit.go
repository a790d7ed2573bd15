// Package memlimit fits the Go memory limit to a container's: it reads the
// cgroup memory limit (v2 memory.max, v1 memory.limit_in_bytes) and, when
// GOMEMLIMIT is not given, sets the Go limit to a share of it, so the
// garbage collector works harder before the kernel kills the process.
package memlimit

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// DefaultRoot is where a container's cgroup file system is mounted.
const DefaultRoot = "/sys/fs/cgroup"

// DefaultShare is the part of the cgroup limit the Go limit is set to: the
// rest is for memory the Go runtime does not count (stacks in flight, the
// binary, C libraries) and for slack.
const DefaultShare = 0.9

// Cgroup returns the memory limit of the cgroup mounted at root, in bytes,
// and false when there is none (no cgroup files, or "max").
func Cgroup(root string) (int64, bool, error) {
	for _, name := range []string{"memory.max", "memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(filepath.Join(root, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("reading cgroup memory limit: %w", err)
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0, false, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("parsing cgroup memory limit %s: %w", name, err)
		}
		// cgroup v1 says "no limit" with a huge number (a page-rounded
		// MaxInt64).
		if n <= 0 || n >= math.MaxInt64/2 {
			return 0, false, nil
		}
		return n, true, nil
	}
	return 0, false, nil
}

// Result says what Apply did.
type Result struct {
	// Limit is the Go memory limit in force, 0 when there is none.
	Limit int64
	// Cgroup is the cgroup limit found, 0 when there is none.
	Cgroup int64
	// Source says where Limit comes from: "GOMEMLIMIT", "cgroup" or
	// "none".
	Source string
}

// Apply sets the Go memory limit to share of the cgroup limit found under
// root, unless gomemlimit (the GOMEMLIMIT environment variable, which the
// runtime has already applied) is set.
func Apply(root, gomemlimit string, share float64) (Result, error) {
	var res Result
	cg, ok, err := Cgroup(root)
	if ok {
		res.Cgroup = cg
	}
	switch {
	case gomemlimit != "" && gomemlimit != "off":
		res.Source = "GOMEMLIMIT"
	case ok:
		debug.SetMemoryLimit(int64(float64(cg) * share))
		res.Source = "cgroup"
	default:
		res.Source = "none"
	}
	res.Limit = Current()
	return res, err
}

// Current returns the Go memory limit in force, 0 when there is none.
func Current() int64 {
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		return l
	}
	return 0
}

// DefaultIngestBudget is the ingest memory budget without a memory limit.
// Without a limit the heap may grow to twice what is live (GOGC=100), so
// this keeps ingest's share of the RSS under about 400 MiB.
const DefaultIngestBudget = 192 << 20

// IngestBudget returns the bytes ingest may hold in flight: configured
// when positive, else a quarter of the Go memory limit, else
// DefaultIngestBudget.
func IngestBudget(configured int64) int64 {
	switch {
	case configured > 0:
		return configured
	case Current() > 0:
		return max(Current()/4, 16<<20)
	}
	return DefaultIngestBudget
}
