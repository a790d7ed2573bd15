package pipeline

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/twinline/twinline/"

// TestLayers checks with go list that data flows one way, log → engine →
// sinks: the engine (internal/stream) imports no log and no store (only
// telemetry of this module, directly or not); nothing under internal/store
// or internal/eventlog imports the engine or this package; and no package
// the engine or this package builds on imports this package back.
//
// (store/postgres reaches internal/stream through internal/twin, whose
// registry stores it implements and whose live state keeps the engine's
// median and rate: an import of twin, not of the engine.)
func TestLayers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}} |{{range .Imports}} {{.}}{{end}}`, "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// Package → its module dependencies (all, and its own imports),
	// without the module prefix.
	deps, imports := map[string][]string{}, map[string][]string{}
	for line := range strings.Lines(string(out)) {
		all, direct, _ := strings.Cut(line, "|")
		f := strings.Fields(all)
		if len(f) == 0 || !strings.HasPrefix(f[0], module) {
			continue
		}
		pkg := strings.TrimPrefix(f[0], module)
		deps[pkg] = ours(f[1:])
		imports[pkg] = ours(strings.Fields(direct))
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
	for pkg, ds := range imports {
		if !under(pkg, "internal/store") && !under(pkg, "internal/eventlog") {
			continue
		}
		for _, d := range ds {
			if under(d, "internal/stream") || under(d, "internal/pipeline") {
				t.Errorf("%s imports %s: the log and the store must not depend on the engine or the processor", pkg, d)
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
