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
