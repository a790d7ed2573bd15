package sim

import (
	"errors"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/twin"
)

func TestMachineName(t *testing.T) {
	for _, tt := range []struct {
		m    Machine
		want string
	}{
		{Machine{ID: "cnc-03", Kind: "cnc"}, "CNC mill 03"},
		{Machine{ID: "demo-press-12", Kind: "press"}, "Hydraulic press 12"},
		{Machine{ID: "lathe", Kind: "lathe"}, "lathe lathe"},
	} {
		if got := tt.m.Name(); got != tt.want {
			t.Errorf("Name(%+v) = %q, want %q", tt.m, got, tt.want)
		}
	}
}

// registrar records what it is asked to register.
type registrar struct {
	got []twin.Info
	err error
}

func (r *registrar) RegisterMissing(infos []twin.Info) (int, error) {
	r.got = infos
	return len(infos), r.err
}

// TestRegister: every simulated machine is offered to the registry with
// its name, site, line, kind and the temperature alarm its faults cross;
// the registry's error is returned.
func TestRegister(t *testing.T) {
	ms := New(Config{Machines: 3, Seed: 1}, nil, nil).Machines()
	var r registrar
	if err := Register(&r, ms); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(IDs(ms), []string{ms[0].ID, ms[1].ID, ms[2].ID}); diff != "" {
		t.Errorf("IDs (-got +want):\n%s", diff)
	}
	if len(r.got) != 3 {
		t.Fatalf("registered %d machines, want 3", len(r.got))
	}
	for i, in := range r.got {
		m := ms[i]
		th := in.Thresholds["temp"]
		if in.ID != m.ID || in.Name != m.Name() || in.Site != m.Site || in.Line != m.Line || in.Attributes["kind"] != m.Kind ||
			th.High == nil || *th.High != 90 || th.For != "10s" {
			t.Errorf("entry %d = %+v, want %+v with a 90 °C alarm", i, in, m)
		}
	}
	r.err = errors.New("refused")
	if err := Register(&r, ms); !errors.Is(err, r.err) {
		t.Errorf("Register with a failing registry = %v, want its error", err)
	}
}

// TestEntryControl: the demo entries declare the control the simulator
// carries out, and a real registry accepts them (it validates schemas,
// commands and OEE specs).
func TestEntryControl(t *testing.T) {
	ms := New(Config{Machines: 5, Seed: 1}, nil, nil).Machines()
	reg, err := twin.OpenRegistryFile(filepath.Join(t.TempDir(), "registry.json"), time.Now, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := Register(reg, ms); err != nil {
		t.Fatalf("Register into a real registry: %v", err)
	}
	wantCycle := map[string]float64{"press": 2.5, "oven": 600, "cnc": 75, "pump": 30, "compressor": 50}
	for _, m := range ms {
		in := Entry(m)
		if got := in.OEE.IdealCycleSeconds; got != wantCycle[m.Kind] || got != m.IdealCycleSeconds {
			t.Errorf("%s ideal cycle = %v, want %v", m.ID, got, wantCycle[m.Kind])
		}
		got := twin.OEESpec{StateMetric: "state", RunningStates: []string{"RUNNING"}, PlannedStopStates: []string{"PLANNED"},
			TotalCount: "parts_total", GoodCount: "parts_good", IdealCycleSeconds: m.IdealCycleSeconds}
		if diff := cmp.Diff(*in.OEE, got); diff != "" {
			t.Errorf("%s oee (-got +want):\n%s", m.ID, diff)
		}
	}
	in := Entry(ms[0])
	for _, tt := range []struct {
		doc        any
		wantFields []string
	}{
		{map[string]any{"tempSetpoint": 180.0, "mode": "manual"}, nil},
		{map[string]any{"tempSetpoint": 251.0}, []string{"tempSetpoint"}},
		{map[string]any{"tempSetpoint": 19.0, "mode": "fast"}, []string{"mode", "tempSetpoint"}},
		{map[string]any{"tempSetpoint": "hot"}, []string{"tempSetpoint"}},
	} {
		var fields []string
		for _, fe := range in.DesiredSchema.Validate(tt.doc) {
			fields = append(fields, fe.Field)
		}
		slices.Sort(fields)
		if diff := cmp.Diff(fields, tt.wantFields); diff != "" {
			t.Errorf("desired %v: refused fields (-got +want):\n%s", tt.doc, diff)
		}
	}
	if got := slices.Sorted(maps.Keys(in.Commands)); !slices.Equal(got, []string{"reset", "start", "stop"}) {
		t.Errorf("commands = %v, want reset, start, stop", got)
	}
	reset := in.Commands["reset"].Params
	if errs := reset.Validate(map[string]any{"counter": "parts"}); len(errs) != 0 {
		t.Errorf("reset {counter: parts} refused: %v", errs)
	}
	if errs := reset.Validate(map[string]any{"counter": "cycles"}); len(errs) != 1 || errs[0].Field != "counter" {
		t.Errorf("reset {counter: cycles}: %v, want refused on counter", errs)
	}
}
