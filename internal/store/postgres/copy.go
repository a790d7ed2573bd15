package postgres

import (
	"context"
	"encoding/binary"
	"io"
	"math"

	"github.com/jackc/pgx/v5"
)

// copyRows streams rows to table with COPY … FROM STDIN (FORMAT binary),
// encoding them here: a row costs a few appends instead of four interface
// values through pgx's type map (CopyFrom), which on a loaded machine is
// the difference between keeping up with a bare COPY and not. With seq the
// row's 1-based index comes first (the staging table's seq column).
func copyRows(ctx context.Context, tx pgx.Tx, table string, rows []row, seq bool) (int64, error) {
	cols := "(time, machine, metric, value)"
	if seq {
		cols = "(seq, time, machine, metric, value)"
	}
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, &copyReader{rows: rows, seq: seq},
		"COPY "+pgx.Identifier{table}.Sanitize()+" "+cols+" FROM STDIN (FORMAT binary)")
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// pgEpochMicros is 2000-01-01 UTC, PostgreSQL's timestamp epoch, in Unix
// microseconds.
const pgEpochMicros = 946_684_800 * 1_000_000

// copyHeader is the binary COPY signature, flags and header extension length.
var copyHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// copyReader encodes rows in PostgreSQL's binary COPY format, 32 KiB at a
// time: as samples rows (time, machine, metric, value), or with head as
// sample_head rows (series id, time, value); with seq, each preceded by
// its 1-based position (the staging tables' seq column).
type copyReader struct {
	rows    []row
	seq     bool
	head    bool
	i       int
	buf     []byte
	off     int
	started bool
	done    bool
}

func (r *copyReader) Read(p []byte) (int, error) {
	for r.off == len(r.buf) {
		if r.done {
			return 0, io.EOF
		}
		r.buf, r.off = r.buf[:0], 0
		if !r.started {
			r.buf = append(r.buf, copyHeader...)
			r.started = true
		}
		for r.i < len(r.rows) && len(r.buf) < 32<<10 {
			r.buf = r.appendRow(r.buf, r.i)
			r.i++
		}
		if r.i == len(r.rows) {
			r.buf = binary.BigEndian.AppendUint16(r.buf, 0xffff) // trailer
			r.done = true
		}
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}

func (r *copyReader) appendRow(b []byte, i int) []byte {
	x := &r.rows[i]
	cols := uint16(4)
	if r.head {
		cols = 3
	}
	if r.seq {
		b = binary.BigEndian.AppendUint16(b, cols+1)
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(i+1))
	} else {
		b = binary.BigEndian.AppendUint16(b, cols)
	}
	if r.head {
		b = binary.BigEndian.AppendUint32(b, 4)
		b = binary.BigEndian.AppendUint32(b, uint32(x.sid))
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(x.ms*1000-pgEpochMicros))
		b = binary.BigEndian.AppendUint32(b, 8)
		return binary.BigEndian.AppendUint64(b, math.Float64bits(x.value))
	}
	b = binary.BigEndian.AppendUint32(b, 8)
	b = binary.BigEndian.AppendUint64(b, uint64(x.ms*1000-pgEpochMicros))
	b = binary.BigEndian.AppendUint32(b, uint32(len(x.machine)))
	b = append(b, x.machine...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(x.metric)))
	b = append(b, x.metric...)
	b = binary.BigEndian.AppendUint32(b, 8)
	return binary.BigEndian.AppendUint64(b, math.Float64bits(x.value))
}
