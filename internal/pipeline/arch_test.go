package pipeline

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/twinline/twinline/"

// TestLayers checks with go list that data flows one way, log → engine →
// sinks: the engine (internal/stream) depends on no log and no store (only
// telemetry of this module, directly or not); nothing under internal/store
// or internal/eventlog depends on the engine or this package, directly or
// through another (the store persists the twin's types, and the twin's
// live state keeps its medians and rates with internal/stats, not the
// engine); and no package the engine or this package builds on imports
// this package back.
func TestLayers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// Package → its module dependencies, without the module prefix.
	deps := map[string][]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], module) {
			continue
		}
		pkg := strings.TrimPrefix(f[0], module)
		deps[pkg] = ours(f[1:])
	}
	if _, ok := deps["internal/pipeline"]; !ok {
		t.Fatalf("go list did not list internal/pipeline: %s", out)
	}
	under := func(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }
	for _, d := range deps["internal/stream"] {
		if d != "internal/telemetry" {
			t.Errorf("internal/stream (the engine) imports %s; it may import only internal/telemetry", d)
		}
	}
	// The whole dependency tree, not only direct imports: the store reaches
	// twin (it persists its types), which must not reach the engine.
	for pkg, ds := range deps {
		if !under(pkg, "internal/store") && !under(pkg, "internal/eventlog") {
			continue
		}
		for _, d := range ds {
			if under(d, "internal/stream") || under(d, "internal/pipeline") {
				t.Errorf("%s depends on %s: the log and the store must not depend on the engine or the processor", pkg, d)
			}
		}
	}
	// Below the processor: what it and the engine are built on.
	for _, pkg := range append(deps["internal/pipeline"], deps["internal/stream"]...) {
		for _, d := range deps[pkg] {
			if under(d, "internal/pipeline") {
				t.Errorf("%s, below the processor, imports %s", pkg, d)
			}
		}
	}
}

// ours returns the packages of this module among pkgs, without the module
// prefix.
func ours(pkgs []string) []string {
	var out []string
	for _, p := range pkgs {
		if strings.HasPrefix(p, module) {
			out = append(out, strings.TrimPrefix(p, module))
		}
	}
	return out
}
