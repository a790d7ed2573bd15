package ingest

import (
	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"testing"

	"github.com/twinline/twinline/internal/telemetry"
)

// TestAdmitMachineAskedPerCall: AdmitMachine answers for one request's
// identity, so a machine admitted in one call is asked about again in the
// next (pooled decoders must not remember the answer), for JSON and line
// protocol alike.
func TestAdmitMachineAskedPerCall(t *testing.T) {
	decoders := map[string]func(allow bool) ([]telemetry.Event, []Reject){
		"json": func(allow bool) ([]telemetry.Event, []Reject) {
			ev, rj, err := DecodeJSON([]byte(`[{"machineId":"m1","temp":1},{"machineId":"m1","temp":2}]`), admitOpts(allow), nil)
			if err != nil {
				t.Fatal(err)
			}
			return ev, rj
		},
		"lineprotocol": func(allow bool) ([]telemetry.Event, []Reject) {
			ev, rj, err := DecodeLineProtocol([]byte("cpu,machineId=m1 temp=1 1\ncpu,machineId=m1 temp=2 2\n"), lineprotocol.Nanosecond, admitOpts(allow), nil)
			if err != nil {
				t.Fatal(err)
			}
			return ev, rj
		},
	}
	for name, decode := range decoders {
		t.Run(name, func(t *testing.T) {
			for i, allow := range []bool{true, false, true, false} {
				ev, rj := decode(allow)
				if allow && (len(ev) != 2 || len(rj) != 0) || !allow && (len(ev) != 0 || len(rj) != 2) {
					t.Fatalf("call %d (allow %v): got %d events, %d rejects", i, allow, len(ev), len(rj))
				}
			}
		})
	}
}

func admitOpts(allow bool) Options {
	return Options{
		Limits:      telemetry.DefaultLimits(),
		MachineTags: []string{"machineId"},
		MinTime:     0, MaxTime: 1 << 62,
		AdmitMachine: func(string) string {
			if allow {
				return ""
			}
			return "not yours"
		},
	}
}
