// Package export streams telemetry samples out as CSV or Parquet: series by
// series from the store, a batch of rows at a time, so that an export holds
// the same few megabytes whatever its range. It also holds the CSV rules
// every CSV answer of the API follows (RFC 4180, times in RFC 3339 UTC with
// milliseconds, cells that a spreadsheet would run as a formula defused).
package export

import (
	"context"
	"fmt"

	"github.com/twinline/twinline/internal/store"
)

// Row is one sample with its series' machine, metric, and the machine's
// site and line in the registry ("" for a machine not registered).
type Row struct {
	// Time is Unix milliseconds.
	Time    int64   `parquet:"time,timestamp(millisecond),delta"`
	Machine string  `parquet:"machine,dict"`
	Metric  string  `parquet:"metric,dict"`
	Value   float64 `parquet:"value"`
	Site    string  `parquet:"site,dict"`
	Line    string  `parquet:"line,dict"`
}

// Columns are the names of Row's columns, in order: the CSV header and the
// Parquet schema's fields.
var Columns = []string{"time", "machine", "metric", "value", "site", "line"}

// Series is one series to export, with its machine's site and line.
type Series struct {
	Key        store.SeriesKey
	Site, Line string
}

// Writer is an export format: rows go in, in order, a batch at a time;
// Close ends the output (Parquet writes its footer). A Writer's Write
// hands on what it has encoded only when its own buffers fill (CSV) or a
// row group is complete (Parquet): memory stays bounded either way.
type Writer interface {
	Write(rows []Row) error
	Close() error
}

// SelectFunc reads one series in [from, to] (store.Store's Select).
type SelectFunc func(ctx context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) error

// BatchRows is the number of rows Run hands a Writer at once.
const BatchRows = 4096

// Run writes the samples of every series of list in [from, to] (Unix ms,
// inclusive) to w, series after series, each in time order, and calls
// flush (if not nil) after each batch so the output leaves as it is made.
// It returns the rows written. It does not close w: a caller that got an
// error must not make the output look complete.
func Run(ctx context.Context, sel SelectFunc, list []Series, from, to int64, w Writer, flush func() error) (int64, error) {
	batch := make([]Row, 0, BatchRows)
	var n int64
	var werr error
	send := func() bool {
		if len(batch) == 0 {
			return true
		}
		if werr = w.Write(batch); werr == nil && flush != nil {
			werr = flush()
		}
		n += int64(len(batch))
		batch = batch[:0]
		return werr == nil
	}
	for _, s := range list {
		row := Row{Machine: s.Key.Machine, Metric: s.Key.Metric, Site: s.Site, Line: s.Line}
		err := sel(ctx, s.Key, from, to, func(p store.Point) bool {
			row.Time, row.Value = p.Time, p.Value
			batch = append(batch, row)
			return len(batch) < BatchRows || send()
		})
		if werr != nil {
			return n, fmt.Errorf("writing %s/%s: %w", s.Key.Machine, s.Key.Metric, werr)
		}
		if err != nil {
			return n, fmt.Errorf("reading %s/%s: %w", s.Key.Machine, s.Key.Metric, err)
		}
		if err := ctx.Err(); err != nil {
			return n, err
		}
	}
	if !send() {
		return n, fmt.Errorf("writing: %w", werr)
	}
	return n, nil
}
