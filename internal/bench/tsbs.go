package bench

import (
	"strconv"
	"strings"
	"time"
)

// LP shapes of the ingest-lp scenario (Options.LPShape).
const (
	// ShapeSimple is one line per event: measurement "bench", tag
	// machineId, --metrics fields.
	ShapeSimple = "simple"
	// ShapeTSBSIoT is the shape of TSBS's iot use case (github.com/timescale/tsbs,
	// tsbs_generate_data --use-case=iot --format=influx): per truck and
	// 10 s interval a "readings" line of 7 fields and a "diagnostics" line
	// of 3, each with the truck's 8 tags (name, the machine id, and 7
	// descriptive ones), nanosecond timestamps.
	ShapeTSBSIoT = "tsbs-iot"
)

// LPShapes are the valid Options.LPShape values.
var LPShapes = []string{ShapeSimple, ShapeTSBSIoT}

// tsbsInterval is the event-time step of one truck, as TSBS's default
// --log-interval.
const tsbsInterval = 10_000 // ms

// tsbsBacklog is how far back the TSBS shape's event times start: at
// 10 s per truck and interval, 1 000 trucks fill it with 14.4 M lines (a
// longer run goes into the future, where the server refuses lines).
const tsbsBacklog = 20 * time.Hour

// formatTSBS posts TSBS iot lines as tsbs_load_influx does.
var formatTSBS = format{path: "/write?db=benchmark", contentType: "text/plain; charset=utf-8"}

// tsbsFieldsPerLine is the mean number of fields of a TSBS iot line: 7
// readings and 3 diagnostics, always in pairs.
const tsbsFieldsPerLine = 5

// The tag values of TSBS iot trucks (its generator's lists).
var (
	tsbsFleets   = []string{"East", "West", "North", "South"}
	tsbsDrivers  = []string{"Albert", "Andy", "Seth", "Trish", "Derek", "Rodney"}
	tsbsModels   = []string{"F-150", "G-2000", "H-2"}
	tsbsVersions = []string{"v1.0", "v1.5", "v2.0", "v2.3"}
	tsbsLoads    = []string{"1500", "2000", "5000"}
	tsbsFuels    = []string{"150", "200", "300"}
	tsbsNominal  = []string{"5", "10", "15", "20", "25"}

	tsbsReadings    = []string{"latitude", "longitude", "elevation", "velocity", "heading", "grade", "fuel_consumption"}
	tsbsDiagnostics = []string{"fuel_state", "current_load", "status"}
)

// tsbsTags returns the tag section (",name=…,fleet=…" up to the space) of
// truck i named machine.
func tsbsTags(machine string, i int) string {
	var b strings.Builder
	pick := func(key string, vals []string, salt int) {
		b.WriteByte(',')
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(vals[(i*7+salt*13+i/len(vals))%len(vals)])
	}
	b.WriteString(",name=")
	b.WriteString(strings.ReplaceAll(machine, ",", `\,`))
	pick("fleet", tsbsFleets, 1)
	pick("driver", tsbsDrivers, 2)
	pick("model", tsbsModels, 3)
	pick("device_version", tsbsVersions, 4)
	pick("load_capacity", tsbsLoads, 5)
	pick("fuel_capacity", tsbsFuels, 6)
	pick("nominal_fuel_consumption", tsbsNominal, 7)
	return b.String()
}

// tsbsBody builds one request body of n TSBS iot lines (n rounded up to
// pairs): ev(j) gives the j-th pair's truck (its index in tags), event
// time (ms) and event index.
func tsbsBody(b []byte, n int, tags []string, ev func(j int) (truck int, tsMs, i int64)) []byte {
	b = b[:0]
	for j := range (n + 1) / 2 {
		truck, ts, i := ev(j)
		b = appendTSBSLine(b, "readings", tags[truck], tsbsReadings, ts, i)
		b = appendTSBSLine(b, "diagnostics", tags[truck], tsbsDiagnostics, ts, i)
	}
	return b
}

func appendTSBSLine(b []byte, measurement, tags string, fields []string, ts, i int64) []byte {
	b = append(b, measurement...)
	b = append(b, tags...)
	for k, f := range fields {
		if k == 0 {
			b = append(b, ' ')
		} else {
			b = append(b, ',')
		}
		b = append(b, f...)
		b = append(b, '=')
		b = strconv.AppendFloat(b, value(i, k), 'f', 5, 64)
	}
	b = append(b, ' ')
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, "000000\n"...) // ns
	return b
}
