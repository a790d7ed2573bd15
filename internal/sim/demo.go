package sim

import (
	"strings"

	"github.com/twinline/twinline/internal/twin"
)

// demoAlarmAt is the equipment temperature (°C) of the demo fleet's alarm
// threshold: the simulator's overheat faults cross it.
const demoAlarmAt = 90.0

// Registrar is the machine registry a demo fleet registers into.
type Registrar interface {
	// RegisterMissing adds the entries whose machines are not registered
	// yet and returns how many it added.
	RegisterMissing(infos []twin.Info) (int, error)
}

// Register registers the simulated machines that are not registered yet
// (`twinline serve --demo`): with a name for people, their site and line,
// and a temperature alarm at 90 °C, 2 °C deadband, held 10 s, that the
// overheat faults cross. Machines an operator already registered are left
// as they are.
func Register(r Registrar, machines []Machine) error {
	high := demoAlarmAt
	infos := make([]twin.Info, len(machines))
	for i, m := range machines {
		infos[i] = twin.Info{
			ID: m.ID, Name: m.Name(), Site: m.Site, Line: m.Line,
			Thresholds: map[string]twin.Threshold{"temp": {High: &high, Deadband: 2, For: "10s"}},
			Attributes: map[string]any{"kind": m.Kind, "simulated": true},
		}
	}
	_, err := r.RegisterMissing(infos)
	return err
}

// Name names a simulated machine for people: "Hydraulic press 07".
func (m Machine) Name() string {
	kinds := map[string]string{"press": "Hydraulic press", "oven": "Curing oven", "cnc": "CNC mill", "pump": "Pump", "compressor": "Compressor"}
	kind, ok := kinds[m.Kind]
	if !ok {
		kind = m.Kind
	}
	num := m.ID[strings.LastIndexByte(m.ID, '-')+1:]
	return kind + " " + num
}

// IDs returns the ids of machines, in their order.
func IDs(machines []Machine) []string {
	ids := make([]string, len(machines))
	for i, m := range machines {
		ids[i] = m.ID
	}
	return ids
}
