package sim

import (
	"errors"
	"testing"

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
