package ingest

import (
	"math"
	"strconv"
	"testing"

	"github.com/twinline/twinline/internal/jsonenc"
)

// decodeValue decodes the metric value text with DecodeJSON.
func decodeValue(t testing.TB, text string) (float64, bool) {
	t.Helper()
	body := `{"machineId":"m","timestamp":1,"v":` + text + `}`
	events, rejects, err := DecodeJSON([]byte(body), testOptions(), nil)
	if err != nil {
		t.Fatalf("DecodeJSON(%s): %v", body, err)
	}
	if len(rejects) > 0 || len(events) != 1 {
		return 0, false
	}
	return events[0].Metrics[0].Value, true
}

// TestDecodeJSONNumbersExact checks that metric values decode to the
// nearest float64, as strconv.ParseFloat reads them, where fastjson's own
// conversion rounds twice.
func TestDecodeJSONNumbersExact(t *testing.T) {
	for _, text := range []string{
		"71.3", "0", "-0", "1480", "0.000001", "1e-7", "1.44e+23", "1.44E23", "144e21",
		"9.123456789012345", "9123456789012345.5", "0.1234567890123456789",
		"1.7976931348623157e+308", "5e-324", "2.2250738585072014e-308", "123456789012345678901234567890",
	} {
		got, ok := decodeValue(t, text)
		want, err := strconv.ParseFloat(text, 64)
		if !ok || err != nil || math.Float64bits(got) != math.Float64bits(want) {
			t.Errorf("DecodeJSON of %s = %v (%v), want %v", text, got, ok, want)
		}
	}
	for _, text := range []string{"1-2", "1e400", "NaN", "--1"} {
		if got, ok := decodeValue(t, text); ok {
			t.Errorf("DecodeJSON of %s = %v, want a reject", text, got)
		}
	}
}

// FuzzDecodeFloat checks that every finite float64, written in any of the
// shortest forms (plain, exponent, and as encoding/json writes it),
// decodes to itself.
func FuzzDecodeFloat(f *testing.F) {
	for _, v := range []float64{0, 71.3, 1.44e23, 9.123456789012345, 1e-7, 5e-324, math.MaxFloat64, 1.0 / 3} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return
		}
		for _, text := range []string{
			string(jsonenc.AppendFloat(nil, v)),
			strconv.FormatFloat(v, 'e', -1, 64),
			strconv.FormatFloat(v, 'g', -1, 64),
			strconv.FormatFloat(v, 'f', -1, 64),
		} {
			got, ok := decodeValue(t, text)
			if !ok || got != v {
				t.Errorf("DecodeJSON of %s = %v (%v), want %v", text, got, ok, v)
			}
		}
	})
}
