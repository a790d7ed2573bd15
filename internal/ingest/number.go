package ingest

import (
	"math"
	"strconv"
	"unsafe"

	"github.com/valyala/fastjson"
)

// float converts a JSON number to the float64 nearest to it, as
// strconv.ParseFloat does. fastjson's own conversion is exact only for
// short decimals: it divides the digits by a power of ten, and multiplies
// by another for an exponent, rounding twice (1.44e+23 becomes
// 1.4399999999999998e+23), and a mantissa of 16 digits may already be
// rounded. Its result is kept when it is exact (fastFloatExact), and any
// other number is parsed again with strconv. The error is fastjson's: a
// number it refuses stays refused.
func (d *decoder) float(v *fastjson.Value) (float64, error) {
	f, err := v.Float64()
	if err != nil {
		return f, err
	}
	d.numScratch = v.MarshalTo(d.numScratch[:0])
	if fastFloatExact(d.numScratch) {
		return f, nil
	}
	text := unsafe.String(unsafe.SliceData(d.numScratch), len(d.numScratch))
	if g, err := strconv.ParseFloat(text, 64); err == nil || math.IsInf(g, 0) {
		return g, nil
	}
	return f, nil
}

// fastFloatExact reports whether fastjson converts the number text b to
// the nearest float64: without an exponent and with at most 15 digits it
// divides an integer below 2^53, exact, by an exact power of ten: one
// rounding, the right one.
func fastFloatExact(b []byte) bool {
	digits := 0
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == 'e' || c == 'E':
			return false
		}
	}
	return digits <= 15
}
