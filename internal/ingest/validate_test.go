package ingest

import (
	"strings"
	"testing"
	"unicode"
)

// TestMachineIDProblemFormatCharacters checks the rule the MQTT topic, the
// registry API and every decoder share refuses every Unicode format
// character (category Cf): zero-width, bidirectional and byte-order marks.
func TestMachineIDProblemFormatCharacters(t *testing.T) {
	for _, rt := range unicode.Cf.R16 {
		for r := rune(rt.Lo); r <= rune(rt.Hi); r += rune(rt.Stride) {
			if got := MachineIDProblem("a"+string(r)+"b", 128); got == "" {
				t.Errorf("MachineIDProblem(a U+%04X b) = \"\", want a problem", r)
			}
		}
	}
	for _, rt := range unicode.Cf.R32 {
		for r := rune(rt.Lo); r <= rune(rt.Hi); r += rune(rt.Stride) {
			if got := MachineIDProblem("a"+string(r)+"b", 128); got == "" {
				t.Errorf("MachineIDProblem(a U+%04X b) = \"\", want a problem", r)
			}
		}
	}
	for _, id := range []string{"press-07", "Presse-Ü1", "机器-1", `a\ud800`} {
		if got := MachineIDProblem(id, 128); got != "" {
			t.Errorf("MachineIDProblem(%q) = %q, want none", id, got)
		}
	}
	if got := MachineIDProblem("a\xed\xa0\x80", 128); !strings.Contains(got, "UTF-8") {
		t.Errorf("MachineIDProblem(encoded surrogate) = %q, want not valid UTF-8", got)
	}
}

func TestEscapeProblem(t *testing.T) {
	tests := []struct {
		raw, field, reason string
	}{
		{`{"a":"x\\u00e9\"\/\b\f\n\r\t\ud83d\ude00"}`, "", ""},
		{`{"machineId":"\ud800"}`, "machineId", `has the escape \ud800 of a lone UTF-16 surrogate, which is not a character`},
		{`{"a":1,"tags":{"b":"\\","c":"\udbff\udbff"}}`, "tags.c", `has the escape \udbff of a lone UTF-16 surrogate, which is not a character`},
		{`{"metrics":{"x":1},"y\q":1}`, `y\q`, `has the invalid escape \q`},
		{`{"tags":{"a":{"b":"\u00zz"}}}`, "tags.a", `has the invalid escape \u`},
		{`{"a":[{"b":"\ud800"}]}`, "a", `has the escape …`},
		{`"\`, "", "has an invalid escape"},
	}
	for _, tt := range tests {
		field, reason := escapeProblem([]byte(tt.raw))
		if field != tt.field || reason != tt.reason && !(strings.HasSuffix(tt.reason, "…") && strings.HasPrefix(reason, strings.TrimSuffix(tt.reason, "…"))) {
			t.Errorf("escapeProblem(%s) = %q, %q; want %q, %q", tt.raw, field, reason, tt.field, tt.reason)
		}
		if got, want := hasBadEscape([]byte(tt.raw)), tt.reason != ""; got != want {
			t.Errorf("hasBadEscape(%s) = %v, want %v", tt.raw, got, want)
		}
	}
}
