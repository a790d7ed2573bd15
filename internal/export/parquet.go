package export

import (
	"io"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"
)

// RowGroupRows is the number of rows of a Parquet row group: the writer
// holds one row group's columns (a few MB) before it writes them out.
const RowGroupRows = 128 << 10

// Parquet is the Parquet export format: one row group of RowGroupRows rows
// after another, columns of Row (time as a millisecond UTC timestamp with
// delta encoding, the text columns dictionary encoded), zstd compressed.
type Parquet struct {
	pw      *parquet.GenericWriter[Row]
	pending int
}

// NewParquet returns the Parquet writer of an export to w.
func NewParquet(w io.Writer) *Parquet {
	return &Parquet{pw: parquet.NewGenericWriter[Row](w,
		parquet.Compression(&zstd.Codec{Level: zstd.SpeedFastest}),
		parquet.MaxRowsPerRowGroup(RowGroupRows),
	)}
}

// Write implements Writer: a row group full goes out to w.
func (p *Parquet) Write(rows []Row) error {
	for len(rows) > 0 {
		n := min(len(rows), RowGroupRows-p.pending)
		if _, err := p.pw.Write(rows[:n]); err != nil {
			return err
		}
		rows, p.pending = rows[n:], p.pending+n
		if p.pending == RowGroupRows {
			if err := p.pw.Flush(); err != nil {
				return err
			}
			p.pending = 0
		}
	}
	return nil
}

// Close implements Writer: the last row group and the footer.
func (p *Parquet) Close() error { return p.pw.Close() }
