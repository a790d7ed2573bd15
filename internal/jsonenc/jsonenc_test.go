package jsonenc

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
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
	for _, v := range []float64{0, 1, -1, 71.3, 1e-7, 1e21, 123456789.125, math.SmallestNonzeroFloat64, 0.1 + 0.2, 999999999.9999, -0.0005} {
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

// TestAppendFloatShortDecimals compares the short-decimal path with
// encoding/json on sensor-like readings (up to four decimals, every
// magnitude below 10^9, both signs), their neighbours one ulp away (which
// must take the full path) and random bit patterns.
func TestAppendFloatShortDecimals(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(v float64) {
		t.Helper()
		want, err := json.Marshal(v)
		if err != nil {
			return // NaN, ±Inf: TestAppendFloat
		}
		if got := string(AppendFloat(nil, v)); got != string(want) {
			t.Fatalf("AppendFloat(%v) = %s, want %s", v, got, want)
		}
	}
	for _, v := range []float64{0.0001, 0.001, 0.01, 0.1, 0.3, 0.1 + 0.2, 1.005, 999999999.9999, 999999999.99999, 1e9, 1e9 - 0.5, 123456789.125, 5e-5, 9007199254740993} {
		check(v)
		check(-v)
	}
	for range 200_000 {
		k := rng.IntN(5)
		d := rng.Int64N(int64(1e9) * int64(pow10[k]))
		v := float64(d) / pow10[k]
		if rng.IntN(2) == 0 {
			v = -v
		}
		check(v)
		check(math.Nextafter(v, math.Inf(1)))
		check(math.Nextafter(v, math.Inf(-1)))
		check(math.Float64frombits(rng.Uint64()))
		check(rng.Float64() * math.Pow(10, float64(rng.IntN(12)-3)))
	}
}

// FuzzAppendInt checks AppendInt against strconv.
func FuzzAppendInt(f *testing.F) {
	for _, n := range []int64{0, 9, 10, 99, 100, -1, -10, 1_765_000_000_000, math.MaxInt64, math.MinInt64} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		if got, want := string(AppendInt([]byte("x"), n)), "x"+strconv.FormatInt(n, 10); got != want {
			t.Errorf("AppendInt(%d) = %s, want %s", n, got, want)
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

// BenchmarkAppendFloat is the cost of one number: a sensor reading with
// few decimals (the short path) and a rate with 17 digits (strconv).
func BenchmarkAppendFloat(b *testing.B) {
	for _, bc := range []struct {
		name string
		v    float64
	}{{"reading", 72.25}, {"integer", 1500}, {"rate", 10.0 / 3}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 32)
			for b.Loop() {
				buf = AppendFloat(buf[:0], bc.v)
			}
		})
	}
}
