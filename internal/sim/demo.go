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
// a temperature alarm at 90 °C, 2 °C deadband, held 10 s, that the
// overheat faults cross, and the control the simulator understands (see
// Entry). Machines an operator already registered are left as they are.
func Register(r Registrar, machines []Machine) error {
	infos := make([]twin.Info, len(machines))
	for i, m := range machines {
		infos[i] = Entry(m)
	}
	_, err := r.RegisterMissing(infos)
	return err
}

// Entry is the registry entry of a simulated machine: its name, site,
// line and kind, the 90 °C temperature alarm, and the control the
// simulator carries out — a desired document of tempSetpoint (number,
// 20–250 °C) and mode (auto or manual), the commands stop, start and
// reset ({"counter": "parts"}), and OEE from the state "state" (RUNNING
// runs, PLANNED is a planned stop) and the parts counters at the kind's
// ideal cycle time.
func Entry(m Machine) twin.Info {
	high := demoAlarmAt
	lo, hi := MinSetpoint, MaxSetpoint
	no := false
	return twin.Info{
		ID: m.ID, Name: m.Name(), Site: m.Site, Line: m.Line,
		Thresholds: map[string]twin.Threshold{"temp": {High: &high, Deadband: 2, For: "10s"}},
		Attributes: map[string]any{"kind": m.Kind, "simulated": true},
		DesiredSchema: &twin.Schema{
			Type: "object",
			Properties: map[string]*twin.Schema{
				"tempSetpoint": {Type: "number", Minimum: &lo, Maximum: &hi},
				"mode":         {Type: "string", Enum: []any{ModeAuto, ModeManual}},
			},
			AdditionalProperties: &no,
		},
		Commands: map[string]twin.CommandSpec{
			cmdStop:  {Description: "Stop the machine (state STOPPED) until it is started"},
			cmdStart: {Description: "Start a job (state RUNNING); fails while the machine is DOWN"},
			cmdReset: {
				Description: "Reset a counter to 0",
				Params: &twin.Schema{
					Type:                 "object",
					Properties:           map[string]*twin.Schema{"counter": {Type: "string", Enum: []any{"parts"}}},
					Required:             []string{"counter"},
					AdditionalProperties: &no,
				},
			},
		},
		OEE: &twin.OEESpec{
			StateMetric:       StateMetric,
			RunningStates:     []string{StateRunning},
			PlannedStopStates: []string{StatePlanned},
			TotalCount:        PartsTotal,
			GoodCount:         PartsGood,
			IdealCycleSeconds: m.IdealCycleSeconds,
		},
	}
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
