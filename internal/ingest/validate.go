package ingest

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
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
