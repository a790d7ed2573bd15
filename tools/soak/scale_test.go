package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParseScaleFlags(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		processors []int
		bench      []string
		err        string
	}{
		{name: "defaults", processors: []int{2}, bench: defaultScaleBench},
		{name: "sweep and bench flags", args: []string{"--processors", "1, 2,4", "--", "--scenario", "ingest-json", "--duration", "20s"},
			processors: []int{1, 2, 4}, bench: []string{"--scenario", "ingest-json", "--duration", "20s"}},
		{name: "drain runs its own bench", args: []string{"--drain", "20s"}, processors: []int{2}},
		{name: "drain with fill flags", args: []string{"--drain", "20s", "--", "--workers", "1"}, processors: []int{2}, bench: []string{"--workers", "1"}},
		{name: "drain with a scenario", args: []string{"--drain", "20s", "--", "--scenario", "latency"}, err: "--drain"},
		{name: "no processors", args: []string{"--processors", "0"}, err: "--processors"},
		{name: "stream clients need an api", args: []string{"--apis", "0", "--", "--scenario=dashboard"}, err: "--apis 0"},
		{name: "ingest needs no api", args: []string{"--apis", "0", "--", "--scenario", "ingest-json"}, processors: []int{2}, bench: []string{"--scenario", "ingest-json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseScaleFlags(tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one naming %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.processors, tt.processors); diff != "" {
				t.Errorf("processors (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(c.benchArgs, tt.bench, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("bench flags (-got +want):\n%s", diff)
			}
		})
	}
}

func TestScaleSummary(t *testing.T) {
	var b bytes.Buffer
	writeScaleSummary(&b, []scaleOutcome{
		{Processors: 1, StoredSamplesPerS: 100_000, CPU: []roleCPU{{Name: "processor-1", Cores: 0.9}, {Name: "postgres (all)", Cores: 0.5}}},
		{Processors: 2, StoredSamplesPerS: 180_000, CPU: []roleCPU{{Name: "processor-1", Cores: 0.8}, {Name: "processor-2", Cores: 0.7}, {Name: "postgres (all)", Cores: 0.9}}},
	})
	out := b.String()
	for _, want := range []string{"180 000", "1.80×", "1.50", "0.90"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}
