package ingest

import (
	"testing"
	"time"
)

func TestParseRFC3339(t *testing.T) {
	tests := []struct {
		in   string
		want string // RFC 3339 in UTC, or "" when in must be rejected
	}{
		{"2026-11-30T06:00:00Z", "2026-11-30T06:00:00Z"},
		{"2026-11-30T06:00:00.1Z", "2026-11-30T06:00:00.1Z"},
		{"2026-11-30T06:00:00.123Z", "2026-11-30T06:00:00.123Z"},
		{"2026-11-30T06:00:00.123999999999Z", "2026-11-30T06:00:00.123Z"},
		{"2026-11-30T07:00:00+01:00", "2026-11-30T06:00:00Z"},
		{"2026-11-30T00:00:00-06:00", "2026-11-30T06:00:00Z"},
		{"2026-11-30T06:00:00.5+23:59", "2026-11-29T06:01:00.5Z"},
		{"2026-11-30t06:00:00z", "2026-11-30T06:00:00Z"},
		{"2026-11-30 06:00:00Z", "2026-11-30T06:00:00Z"},
		{"1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"},
		{"1969-12-31T23:59:59.999Z", "1969-12-31T23:59:59.999Z"},
		{"0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"},
		{"9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"},
		{"2000-02-29T00:00:00Z", "2000-02-29T00:00:00Z"},
		{"2100-02-29T00:00:00Z", ""},
		{"2026-02-29T00:00:00Z", ""},
		{"2026-04-31T00:00:00Z", ""},
		{"2026-13-01T00:00:00Z", ""},
		{"2026-00-01T00:00:00Z", ""},
		{"2026-01-00T00:00:00Z", ""},
		{"2026-01-01T24:00:00Z", ""},
		{"2026-01-01T00:60:00Z", ""},
		{"2026-01-01T00:00:60Z", ""},
		{"2026-01-01T00:00:00", ""},
		{"2026-01-01T00:00:00.Z", ""},
		{"2026-01-01T00:00:00,5Z", ""},
		{"2026-01-01T00:00:00+0100", ""},
		{"2026-01-01T00:00:00+24:00", ""},
		{"2026-01-01T00:00:00+01:60", ""},
		{"2026-01-01T00:00:00ZZ", ""},
		{"2026-1-01T00:00:00Z", ""},
		{"2026-01-01X00:00:00Z", ""},
		{"+026-01-01T00:00:00Z", ""},
		{"2026-01-01", ""},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseRFC3339([]byte(tt.in))
			if tt.want == "" {
				if ok {
					t.Errorf("parseRFC3339(%q) = %d, want rejected", tt.in, got)
				}
				return
			}
			want := msOf(t, tt.want)
			if !ok || got != want {
				t.Errorf("parseRFC3339(%q) = %d, %v, want %d", tt.in, got, ok, want)
			}
		})
	}
}

// FuzzParseRFC3339 checks parseRFC3339 against time.Parse.
func FuzzParseRFC3339(f *testing.F) {
	for _, s := range []string{
		"2026-11-30T06:00:00Z", "2026-11-30T06:00:00.123456789+01:00", "2000-02-29T23:59:59.9-23:59",
		"2026-11-30t06:00:00z", "0000-01-01T00:00:00Z", "2026-02-30T00:00:00Z",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseRFC3339([]byte(s))
		// Normalise the forms RFC 3339 allows and time.Parse does not.
		norm := []byte(s)
		if len(norm) > 10 && (norm[10] == 't' || norm[10] == ' ') {
			norm[10] = 'T'
		}
		if n := len(norm); n > 0 && norm[n-1] == 'z' {
			norm[n-1] = 'Z'
		}
		tm, err := time.Parse(time.RFC3339Nano, string(norm))
		if ok {
			if err != nil {
				t.Fatalf("parseRFC3339(%q) = %d, but time.Parse: %v", s, got, err)
			}
			if want := tm.UnixMilli(); got != want {
				t.Fatalf("parseRFC3339(%q) = %d, time.Parse gives %d", s, got, want)
			}
			return
		}
		// time.Parse is laxer than RFC 3339 (one-digit hours, ',' before the
		// fraction): only its strict fast path must agree.
		if err == nil && strictShape(norm) {
			t.Fatalf("parseRFC3339(%q) rejected, time.Parse accepts it as %v", s, tm)
		}
	})
}

// strictShape reports whether b has the exact shape of an RFC 3339 time.
func strictShape(b []byte) bool {
	const shape = "dddd-dd-ddTdd:dd:dd"
	if len(b) < len(shape)+1 {
		return false
	}
	for i := range len(shape) {
		if shape[i] == 'd' {
			if b[i] < '0' || b[i] > '9' {
				return false
			}
		} else if b[i] != shape[i] {
			return false
		}
	}
	rest := b[len(shape):]
	if rest[0] == '.' {
		n := 1
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			n++
		}
		if n == 1 {
			return false
		}
		rest = rest[n:]
	}
	if len(rest) == 1 {
		return rest[0] == 'Z'
	}
	if len(rest) != 6 || rest[0] != '+' && rest[0] != '-' || rest[3] != ':' {
		return false
	}
	// time.Parse does not check the offset's range; RFC 3339 does.
	h, okh := digits(rest[1:3])
	m, okm := digits(rest[4:6])
	return okh && okm && h <= 23 && m <= 59
}
