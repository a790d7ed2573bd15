package ingest

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// metricNameChars marks the bytes a metric name may contain: [A-Za-z0-9_.:-].
var metricNameChars = func() (t [256]bool) {
	for c := 'A'; c <= 'Z'; c++ {
		t[c], t[c+'a'-'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_.:-" {
		t[c] = true
	}
	return t
}()

// metricNameProblem says why b is not a valid metric name, or "" when it is.
func metricNameProblem(b []byte, maxLen int) string {
	if len(b) == 0 {
		return "metric name must not be empty"
	}
	if len(b) > maxLen {
		return fmt.Sprintf("metric name is longer than %d bytes", maxLen)
	}
	for i, c := range b {
		if !metricNameChars[c] {
			r, _ := utf8.DecodeRune(b[i:])
			return fmt.Sprintf("metric name may contain only A-Z a-z 0-9 _ . : - (found %q)", r)
		}
	}
	return ""
}

// MachineIDProblem says why id is not a valid machine id, or "" when it is:
// the rule every ingest path and the registry apply.
func MachineIDProblem(id string, maxLen int) string {
	return machineIDProblem([]byte(id), maxLen)
}

// machineIDProblem says why b is not a valid machine id, or "" when it is.
// A machine id becomes a URL path segment and an MQTT topic level.
func machineIDProblem(b []byte, maxLen int) string {
	if len(b) == 0 {
		return "must not be empty"
	}
	if len(b) > maxLen {
		return fmt.Sprintf("is longer than %d bytes", maxLen)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c <= ' ' || c == 0x7f:
			return "must not contain whitespace or control characters"
		case c == '/' || c == '+' || c == '#' || c == '?':
			return fmt.Sprintf("must not contain %q (it is used in URLs and MQTT topics)", c)
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return "is not valid UTF-8"
			}
			if unicode.IsSpace(r) || unicode.IsControl(r) {
				return "must not contain whitespace or control characters"
			}
			if unicode.Is(unicode.Cf, r) {
				// Zero-width and bidirectional marks make two ids look alike.
				return fmt.Sprintf("must not contain invisible format characters (found U+%04X)", r)
			}
			i += size - 1
		}
	}
	return ""
}

// textProblem says why b may not be kept as a label (event id, tag key or
// value), or "" when it may: it must be valid UTF-8 without control
// characters, so every store and client can hold it.
func textProblem(b []byte) string {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c < utf8.RuneSelf {
			if c < ' ' || c == 0x7f {
				return "must not contain control characters"
			}
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return "is not valid UTF-8"
		}
		if unicode.IsControl(r) {
			return "must not contain control characters"
		}
		i += size - 1
	}
	return ""
}

// MaxStateValueLen bounds the length of a state value, in bytes.
const MaxStateValueLen = 256

// stateValueProblem says why b cannot be a state value, or "" when it can.
func stateValueProblem(b []byte) string {
	switch {
	case len(b) == 0:
		return "state value must not be empty"
	case len(b) > MaxStateValueLen:
		return fmt.Sprintf("state value is longer than %d bytes", MaxStateValueLen)
	}
	if p := textProblem(b); p != "" {
		return "state value " + p
	}
	return ""
}

// quoteTrunc quotes b for a reject reason, cut to a readable length.
func quoteTrunc(b []byte) string {
	const maxShown = 64
	if len(b) <= maxShown {
		return strconv.Quote(string(b))
	}
	return strconv.Quote(string(b[:maxShown])) + "…"
}

// joinTags lists machine tag names for a reject reason.
func joinTags(tags []string) string { return strings.Join(tags, ", ") }

// hasBadEscape reports whether the JSON text b holds an escape sequence
// escapeLen refuses. JSON allows a backslash only inside strings, so every
// backslash of a document that parsed starts an escape.
func hasBadEscape(b []byte) bool {
	for {
		i := bytes.IndexByte(b, '\\')
		if i < 0 {
			return false
		}
		n, ok := escapeLen(b[i:])
		if !ok {
			return true
		}
		b = b[i+n:]
	}
}

// escapeLen returns the length of the JSON escape sequence b starts with
// (b[0] == '\\') and whether it stands for text: \" \\ \/ \b \f \n \r \t,
// \uXXXX of a character, or a UTF-16 surrogate pair \uD8XX\uDCXX. fastjson
// keeps what it cannot decode as literal backslash text and turns a high
// surrogate followed by anything but a low one into U+FFFD, so these are
// refused rather than stored as something the sender did not write.
func escapeLen(b []byte) (int, bool) {
	if len(b) < 2 {
		return len(b), false
	}
	switch b[1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2, true
	case 'u':
	default:
		return 2, false
	}
	r, ok := hex4(b[2:])
	switch {
	case !ok:
		return 2, false
	case !utf16.IsSurrogate(r):
		return 6, true
	case r >= 0xDC00: // a low surrogate without a high one
		return 6, false
	}
	if len(b) >= 12 && b[6] == '\\' && b[7] == 'u' {
		if r2, ok := hex4(b[8:]); ok && r2 >= 0xDC00 && r2 <= 0xDFFF {
			return 12, true
		}
	}
	return 6, false
}

// hex4 decodes the four hex digits b starts with.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// escapeProblem finds the first escape escapeLen refuses in raw, the JSON
// text of one event object, and returns the field it is in ("tags.k" or
// "metrics.k" one level down; the key itself when the escape is in a key)
// and the reason; the reason is "" when every escape is valid.
func escapeProblem(raw []byte) (field, reason string) {
	const maxDepth = 2 // field names go two objects deep
	var (
		depth     int
		isObject  [maxDepth + 1]bool
		keys      [maxDepth + 1][]byte
		expectKey bool
	)
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; c {
		case '{', '[':
			depth++
			if depth <= maxDepth {
				isObject[depth], keys[depth] = c == '{', nil
			}
			expectKey = c == '{'
		case '}', ']':
			depth--
			expectKey = false
		case ',':
			expectKey = depth >= 1 && depth <= maxDepth && isObject[depth]
		case ':':
			expectKey = false
		case '"':
			end := i + 1
			for end < len(raw) && raw[end] != '"' {
				if raw[end] == '\\' {
					end++
				}
				end++
			}
			s := raw[i+1 : min(end, len(raw))]
			if expectKey && depth >= 1 && depth <= maxDepth {
				keys[depth] = s
			}
			if p := stringEscapeProblem(s); p != "" {
				var path []string
				for d := 1; d <= min(depth, maxDepth) && keys[d] != nil; d++ {
					path = append(path, string(keys[d]))
				}
				return strings.Join(path, "."), p
			}
			i = end
		}
	}
	return "", ""
}

// stringEscapeProblem says why an escape in the raw JSON string s (without
// its quotes) is refused, or "" when none is.
func stringEscapeProblem(s []byte) string {
	for {
		i := bytes.IndexByte(s, '\\')
		if i < 0 {
			return ""
		}
		n, ok := escapeLen(s[i:])
		if !ok {
			esc := s[i : i+n]
			if n == 6 {
				return fmt.Sprintf("has the escape %s of a lone UTF-16 surrogate, which is not a character", esc)
			}
			if n == 2 && esc[1] > ' ' && esc[1] < utf8.RuneSelf {
				return fmt.Sprintf("has the invalid escape %s", esc)
			}
			return "has an invalid escape"
		}
		s = s[i+n:]
	}
}
