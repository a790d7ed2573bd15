package memlimit

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestCgroup(t *testing.T) {
	tests := []struct {
		root   string
		want   int64
		wantOK bool
	}{
		{"testdata/v2", 1 << 30, true},
		{"testdata/v2max", 0, false},
		{"testdata/v1", 512 << 20, true},
		{"testdata/v1none", 0, false},
		{"testdata/none", 0, false},
		{"testdata/missing", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.root, func(t *testing.T) {
			got, ok, err := Cgroup(tt.root)
			if err != nil || got != tt.want || ok != tt.wantOK {
				t.Fatalf("Cgroup(%s) = %d, %t, %v; want %d, %t, nil", tt.root, got, ok, err, tt.want, tt.wantOK)
			}
		})
	}
}

func TestApply(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	tests := []struct {
		name, root, gomemlimit string
		preset                 int64 // the limit the runtime set from GOMEMLIMIT
		want                   Result
	}{
		{"cgroup v2", "testdata/v2", "", math.MaxInt64, Result{Limit: 966367641, Cgroup: 1 << 30, Source: "cgroup"}},
		{"cgroup v1", "testdata/v1", "off", math.MaxInt64, Result{Limit: 483183820, Cgroup: 512 << 20, Source: "cgroup"}},
		{"GOMEMLIMIT wins", "testdata/v2", "900MiB", 900 << 20, Result{Limit: 900 << 20, Cgroup: 1 << 30, Source: "GOMEMLIMIT"}},
		{"no limit", "testdata/v2max", "", math.MaxInt64, Result{Source: "none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			debug.SetMemoryLimit(tt.preset)
			got, err := Apply(tt.root, tt.gomemlimit, DefaultShare)
			if err != nil || got != tt.want {
				t.Fatalf("Apply = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestIngestBudget(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	debug.SetMemoryLimit(math.MaxInt64)
	if got := IngestBudget(0); got != DefaultIngestBudget {
		t.Errorf("without a limit: got %d, want %d", got, DefaultIngestBudget)
	}
	if got := IngestBudget(1 << 20); got != 1<<20 {
		t.Errorf("configured: got %d, want %d", got, 1<<20)
	}
	debug.SetMemoryLimit(900 << 20)
	if got := IngestBudget(0); got != 225<<20 {
		t.Errorf("GOMEMLIMIT 900MiB: got %d, want %d", got, 225<<20)
	}
}
