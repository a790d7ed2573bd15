// Package jsonenc appends JSON strings and numbers to byte slices: the one
// place the hand-written encoders of twinline (the hub's live messages, the
// event codec of package ingest that Kafka records, the simulator and the
// bench share) turn a Go string or float64 into JSON text.
//
// It writes exactly what encoding/json writes with HTML escaping off
// (json.Encoder.SetEscapeHTML(false)): <, > and & are left alone, since none
// of our documents is embedded in HTML, but U+2028 and U+2029 are escaped,
// so the text is safe inside a JavaScript string literal, and no string
// holds a raw line break, so it fits line-oriented framing (SSE, NDJSON).
//
// Invalid UTF-8 is replaced, byte by byte, with U+FFFD (written \ufffd), as
// encoding/json does: JSON text is UTF-8, and a reader that meets a raw
// invalid byte may refuse the whole document. Callers that must not alter
// what they were given check their input first (ingest.AppendEvent refuses
// an event whose strings are not valid UTF-8).
//
// Nothing here allocates beyond growing the destination slice.
package jsonenc

import (
	"math"
	"slices"
	"strconv"
	"unicode/utf8"
)

const hexDigits = "0123456789abcdef"

// plain marks the ASCII bytes a JSON string carries as they are: every
// printable one but " and \.
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// AppendString appends s to b as a JSON string, with its quotes: the bytes
// encoding/json writes for s when HTML escaping is off. It escapes " and \
// with a backslash, \n, \r, \t, \b and \f as such, the other control
// characters (U+0000 to U+001F) as \u00XX, U+2028 and U+2029 as \u2028 and
// \u2029, and writes each byte of s that is not part of valid UTF-8 as
// \ufffd. Everything else, DEL and non-ASCII text included, is copied.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// AppendFloat appends v to b as a JSON number, formatted as encoding/json
// formats a float64: the shortest text that reads back to v, in plain
// decimal notation unless |v| is below 1e-6 or at least 1e21, and then with
// an exponent (1e-7, 1e+21). JSON has no NaN or infinity: those are written
// as null.
func AppendFloat(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, "null"...)
	}
	if b, ok := appendShortDecimal(b, v); ok {
		return b
	}
	abs := math.Abs(v)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, v, format, -1, 64)
	if format == 'e' {
		// Clean up e-09 to e-9, as encoding/json does.
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// pow10 are the scales appendShortDecimal tries: 10^k for k decimals.
var pow10 = [...]float64{1, 10, 100, 1e3, 1e4}

// appendShortDecimal appends v when it has a decimal form of at most four
// decimals, the usual reading of a sensor (72.25, 1500, -0.5): the text
// strconv's shortest formatting writes, without running it. It reports
// false for every other value (and for 0, whose sign matters), which the
// caller formats in full.
//
// For the smallest k with d = round(v·10^k) and d/10^k == v (an IEEE
// division of two exact numbers, so correctly rounded, as parsing the text
// "d with k decimals" is), that text reads back as v; a shorter one would
// have fewer decimals and been found at a smaller k. Below 10^9 the
// spacing of floats is under 10^-4, so at each k at most one d reads back
// as v and it is the nearest: the text is the shortest and the closest,
// the one strconv picks.
func appendShortDecimal(b []byte, v float64) ([]byte, bool) {
	if !(v > -1e9 && v < 1e9) || v == 0 {
		return b, false
	}
	for k, p := range pow10 {
		d := math.Round(v * p)
		if d/p != v {
			continue
		}
		n := int64(d)
		if n < 0 {
			b = append(b, '-')
			n = -n
		}
		if k == 0 {
			return AppendInt(b, n), true
		}
		var digits [24]byte
		t := AppendInt(digits[:0], n)
		if len(t) <= k { // 0.0k: pad to one integer digit and k decimals
			b = append(b, '0', '.')
			for range k - len(t) {
				b = append(b, '0')
			}
			return append(b, t...), true
		}
		b = append(b, t[:len(t)-k]...)
		b = append(b, '.')
		return append(b, t[len(t)-k:]...), true
	}
	return b, false
}

// digitPairs is "00010203…99": two decimal digits per index.
const digitPairs = "00010203040506070809" +
	"10111213141516171819" +
	"20212223242526272829" +
	"30313233343536373839" +
	"40414243444546474849" +
	"50515253545556575859" +
	"60616263646566676869" +
	"70717273747576777879" +
	"80818283848586878889" +
	"90919293949596979899"

// AppendInt appends the decimal text of n, as strconv.AppendInt(b, n, 10)
// does, writing the digits in place: no copy from a scratch buffer, which
// is most of strconv's time for the 13-digit millisecond times the live
// documents are full of.
func AppendInt(b []byte, n int64) []byte {
	u := uint64(n)
	if n < 0 {
		b = append(b, '-')
		u = -u
	}
	w := 1
	for x := u; x >= 10; x /= 10 {
		w++
	}
	b = slices.Grow(b, w)
	end := len(b) + w
	b = b[:end]
	i := end
	for u >= 100 {
		r := u % 100
		u /= 100
		i -= 2
		b[i], b[i+1] = digitPairs[2*r], digitPairs[2*r+1]
	}
	if u >= 10 {
		b[i-2], b[i-1] = digitPairs[2*u], digitPairs[2*u+1]
	} else {
		b[i-1] = byte('0' + u)
	}
	return b
}
