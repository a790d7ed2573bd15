package export

import (
	"bufio"
	"encoding/csv"
	"io"
	"strconv"
	"strings"
	"time"
)

// TimeLayout is how CSV cells show a time: RFC 3339 in UTC with
// milliseconds, the precision of the store (2026-12-07T18:00:00.250Z).
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// FormatTime formats a Unix-millisecond time as TimeLayout, in UTC.
func FormatTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format(TimeLayout)
}

// FormatValue formats a sample value in the shortest form that reads back
// exactly; NaN and ±Inf as NaN, +Inf and -Inf (which pandas, DuckDB and
// Python's float() read).
func FormatValue(v float64) string {
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// Cell defuses a text cell a spreadsheet would take for a formula
// (OWASP "CSV injection"): a value starting with =, +, -, @, a tab or a
// carriage return gets a leading apostrophe, which Excel and LibreOffice
// show as text and do not evaluate. Only text that comes from users
// (machine ids and names, metrics, sites, notes, actors) goes through Cell;
// numbers and times are written as they are, so -3.5 stays a number.
//
// A spreadsheet whose list separator is ';' (Excel in many European
// locales) or that splits on tabs starts a new cell after each one, which
// encoding/csv does not quote: a formula character after such a separator
// (spaces between allowed) gets the apostrophe too.
func Cell(s string) string {
	if s == "" {
		return s
	}
	if formulaStart(s[0]) {
		s = "'" + s
	}
	if !strings.ContainsAny(s, ";\t") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteByte(s[i])
		if s[i] != ';' && s[i] != '\t' {
			continue
		}
		j := i + 1
		for j < len(s) && s[j] == ' ' {
			j++
		}
		if j < len(s) && formulaStart(s[j]) {
			b.WriteString(s[i+1 : j])
			b.WriteByte('\'')
			i = j - 1
		}
	}
	return b.String()
}

// formulaStart reports whether a cell starting with c is taken for a
// formula.
func formulaStart(c byte) bool {
	switch c {
	case '=', '+', '-', '@', '\t', '\r':
		return true
	}
	return false
}

// Table writes CSV records: RFC 4180 quoting (encoding/csv), CRLF line
// ends as the RFC says, through a buffer of its own; Flush hands on what
// is buffered.
type Table struct {
	cw *csv.Writer
}

// NewTable returns a Table writing to w, header first.
func NewTable(w io.Writer, header ...string) (*Table, error) {
	// csv.Writer buffers through w as is when w is a large enough
	// bufio.Writer: one 64 KiB buffer, not csv's 4 KiB one.
	t := &Table{cw: csv.NewWriter(bufio.NewWriterSize(w, 64<<10))}
	t.cw.UseCRLF = true
	if err := t.cw.Write(header); err != nil {
		return nil, err
	}
	return t, nil
}

// Write writes one record; text cells must have been through Cell.
func (t *Table) Write(record []string) error { return t.cw.Write(record) }

// Flush writes what is buffered and reports any error of a Write.
func (t *Table) Flush() error {
	t.cw.Flush()
	return t.cw.Error()
}

// CSV is the CSV export format: a header row of Columns, then one row per
// sample.
type CSV struct {
	t   *Table
	rec []string
}

// NewCSV returns the CSV writer of an export to w.
func NewCSV(w io.Writer) (*CSV, error) {
	t, err := NewTable(w, Columns...)
	if err != nil {
		return nil, err
	}
	return &CSV{t: t, rec: make([]string, len(Columns))}, nil
}

// Write implements Writer: the batch is encoded and handed on.
func (c *CSV) Write(rows []Row) error {
	for i := range rows {
		r := &rows[i]
		// Within a batch, rows mostly share their series: reuse its
		// defused cells.
		if i == 0 || r.Machine != rows[i-1].Machine || r.Metric != rows[i-1].Metric ||
			r.Site != rows[i-1].Site || r.Line != rows[i-1].Line {
			c.rec[1], c.rec[2], c.rec[4], c.rec[5] = Cell(r.Machine), Cell(r.Metric), Cell(r.Site), Cell(r.Line)
		}
		c.rec[0], c.rec[3] = FormatTime(r.Time), FormatValue(r.Value)
		if err := c.t.Write(c.rec); err != nil {
			return err
		}
	}
	return c.t.Flush()
}

// Close implements Writer (CSV has no footer).
func (c *CSV) Close() error { return c.t.Flush() }
