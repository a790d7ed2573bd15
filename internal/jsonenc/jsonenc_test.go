package jsonenc

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAppendString(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"press-07", `"press-07"`},
		{"", `""`},
		{`a"b\c`, `"a\"b\\c"`},
		{"line\nbreak\r\ttab", `"line\nbreak\r\ttab"`},
		{"\b\f", `"\b\f"`},
		{"\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"del\x7f", "\"del\x7f\""},
		{"<&>", `"<&>"`},
		{"/", `"/"`},
		{"température °C 東京 ☃", `"température °C 東京 ☃"`},
		{"js\u2028\u2029end", `"js\u2028\u2029end"`},
		{"\u2027\u202a", "\"\u2027\u202a\""},
		{"bad\xffutf8", `"bad\ufffdutf8"`},
		{"\xc3", `"\ufffd"`},                               // a truncated two-byte sequence
		{"\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},           // a UTF-16 surrogate, encoded: not UTF-8
		{"\xf4\x90\x80\x80", `"\ufffd\ufffd\ufffd\ufffd"`}, // beyond U+10FFFF
		{"ok\uFFFD", "\"ok\uFFFD\""},                       // a real U+FFFD is text
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := string(AppendString(nil, tt.in)); got != tt.want {
				t.Errorf("AppendString(%q) = %s, want %s", tt.in, got, tt.want)
			}
			if got := string(AppendString([]byte("prefix"), tt.in)); got != "prefix"+tt.want {
				t.Errorf("AppendString after a prefix = %s, want prefix%s", got, tt.want)
			}
		})
	}
}

// stdString is what encoding/json writes for s with HTML escaping off.
func stdString(t testing.TB, s string) string {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// FuzzAppendString checks that AppendString writes, byte for byte, what
// encoding/json writes (valid UTF-8 or not), that the text decodes back to
// s when s is valid UTF-8, and that it never holds a raw line break or
// U+2028/U+2029.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a", "\"\\\n", "\xff\xfe", "\u2028", "é", "\x7f", "\x00\b\f", "<script>", "\xe2\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := AppendString(nil, s)
		if got, want := string(enc), stdString(t, s); got != want {
			t.Fatalf("AppendString(%q) = %s, encoding/json writes %s", s, got, want)
		}
		var back string
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("decoding %s: %v", enc, err)
		}
		if utf8.ValidString(s) && back != s {
			t.Errorf("AppendString(%q) decodes to %q", s, back)
		}
		if !utf8.Valid(enc) {
			t.Errorf("AppendString(%q) = %q is not UTF-8", s, enc)
		}
		if strings.ContainsAny(string(enc), "\n\r\u2028\u2029") {
			t.Errorf("AppendString(%q) = %q holds a line break", s, enc)
		}
	})
}

func TestAppendFloat(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"},
		{math.Copysign(0, -1), "-0"},
		{71.3, "71.3"},
		{-0.5, "-0.5"},
		{12000, "12000"},
		{1e20, "100000000000000000000"},
		{1e21, "1e+21"},
		{2e-7, "2e-7"},
		{1e-6, "0.000001"},
		{math.MaxFloat64, "1.7976931348623157e+308"},
		{math.SmallestNonzeroFloat64, "5e-324"},
		{math.NaN(), "null"},
		{math.Inf(1), "null"},
		{math.Inf(-1), "null"},
	}
	for _, tt := range tests {
		if got := string(AppendFloat(nil, tt.in)); got != tt.want {
			t.Errorf("AppendFloat(%v) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// FuzzAppendFloat checks that AppendFloat writes what encoding/json does.
func FuzzAppendFloat(f *testing.F) {
	for _, v := range []float64{0, 1, -1, 71.3, 1e-7, 1e21, 123456789.125, math.SmallestNonzeroFloat64} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v float64) {
		got := string(AppendFloat(nil, v))
		if math.IsNaN(v) || math.IsInf(v, 0) {
			if got != "null" {
				t.Errorf("AppendFloat(%v) = %s, want null", v, got)
			}
			return
		}
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("AppendFloat(%v) = %s, want %s", v, got, want)
		}
	})
}

func TestAppendAllocs(t *testing.T) {
	buf := make([]byte, 0, 256)
	s := "température\u2028\"x\"\xff"
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendString(buf[:0], s)
		buf = AppendFloat(buf, 71.3)
	}); n != 0 {
		t.Errorf("AppendString and AppendFloat into a large enough buffer: %v allocations, want 0", n)
	}
}

func BenchmarkAppendString(b *testing.B) {
	for _, bc := range []struct{ name, s string }{
		{"ascii", "press-0007"},
		{"escapes", `say "hi"\n`},
		{"unicode", "température-東京"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 64)
			for b.Loop() {
				buf = AppendString(buf[:0], bc.s)
			}
			b.SetBytes(int64(len(bc.s)))
		})
	}
}
