// Command enginebench measures, on this machine, the two candidate engines
// for twinline's embedded store (docs/decisions/0001-embedded-store.md):
//
//   - tsdb: Prometheus TSDB, one head appender and one Commit (a WAL write)
//     per batch, cached series refs;
//   - pebble: Pebble v2 with a compressed-chunk layout, one key per
//     (machine, metric, batch) holding the batch's points of that series
//     (delta times, XOR values, snappy), one pebble.Batch per append batch,
//     committed with Sync (fsync per batch) or NoSync (write(2) only, the
//     durability TSDB gives).
//
// For each it reports durable append throughput, the bytes on disk per
// sample right after writing (WAL and write buffers) and once compacted
// (TSDB block, Pebble SSTs with zstd), and the time to read one series'
// whole range back.
//
//	go run . -n 2000000
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/golang/snappy"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/compression"
)

var base = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

type config struct {
	n, batch, machines, metrics int
	dir                         string
}

type result struct {
	engine         string
	samples        int
	elapsed        time.Duration
	bytesWritten   int64 // right after the last append
	bytesCompacted int64 // data files after compaction
	read           time.Duration
	readPoints     int
}

func main() {
	var c config
	engines := flag.String("engines", "tsdb,pebble-nosync,pebble-sync", "engines to run, comma-separated")
	flag.IntVar(&c.n, "n", 2_000_000, "samples to write per engine")
	flag.IntVar(&c.batch, "batch", 1000, "samples per append batch")
	flag.IntVar(&c.machines, "machines", 100, "machines")
	flag.IntVar(&c.metrics, "metrics", 5, "metrics per machine")
	flag.StringVar(&c.dir, "dir", "", "scratch directory (default: a new temporary directory)")
	flag.Parse()
	if err := run(c, strings.Split(*engines, ",")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(c config, engines []string) error {
	if c.dir == "" {
		d, err := os.MkdirTemp("", "enginebench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		c.dir = d
	}
	fmt.Printf("%d samples, batches of %d, %d machines × %d metrics\n\n", c.n, c.batch, c.machines, c.metrics)
	fmt.Printf("%-15s %12s %14s %14s %12s\n", "engine", "samples/s", "B/sample after", "B/sample comp.", "read 1 series")
	for _, e := range engines {
		dir := filepath.Join(c.dir, e)
		var (
			r   result
			err error
		)
		switch e {
		case "tsdb":
			r, err = runTSDB(c, dir)
		case "pebble-sync":
			r, err = runPebble(c, dir, pebble.Sync)
		case "pebble-nosync":
			r, err = runPebble(c, dir, pebble.NoSync)
		default:
			err = fmt.Errorf("unknown engine %q", e)
		}
		if err != nil {
			return fmt.Errorf("running %s: %w", e, err)
		}
		r.engine = e
		fmt.Printf("%-15s %12.0f %14.2f %14.2f %9.2f ms (%d points)\n", r.engine,
			float64(r.samples)/r.elapsed.Seconds(),
			float64(r.bytesWritten)/float64(r.samples),
			float64(r.bytesCompacted)/float64(r.samples),
			float64(r.read.Microseconds())/1000, r.readPoints)
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	return nil
}

// source produces the samples: every series gets one sample per second,
// a slow sine plus noise, quantised to 0.01 as sensors report.
type source struct {
	c      config
	rng    *rand.Rand
	phase  []float64
	step   int // seconds since base
	series int // next series within the step
}

func newSource(c config) *source {
	s := &source{c: c, rng: rand.New(rand.NewPCG(1, 2)), phase: make([]float64, c.machines*c.metrics)}
	for i := range s.phase {
		s.phase[i] = s.rng.Float64() * 2 * math.Pi
	}
	return s
}

type sample struct {
	series int
	t      int64
	v      float64
}

func (s *source) fill(batch []sample) {
	for i := range batch {
		v := 20 + 5*math.Sin(float64(s.step)/300+s.phase[s.series]) + s.rng.NormFloat64()*0.05
		batch[i] = sample{series: s.series, t: base + int64(s.step)*1000, v: math.Round(v*100) / 100}
		s.series++
		if s.series == len(s.phase) {
			s.series = 0
			s.step++
		}
	}
}

func (c config) name(series int) (machine, metric string) {
	return fmt.Sprintf("machine-%03d", series/c.metrics), fmt.Sprintf("metric-%d", series%c.metrics)
}

func runTSDB(c config, dir string) (result, error) {
	opts := tsdb.DefaultOptions()
	opts.WALCompression = compression.Snappy
	db, err := tsdb.Open(dir, nil, nil, opts, nil)
	if err != nil {
		return result{}, err
	}
	defer db.Close()
	nseries := c.machines * c.metrics
	lsets := make([]labels.Labels, nseries)
	refs := make([]storage.SeriesRef, nseries)
	for i := range lsets {
		m, k := c.name(i)
		lsets[i] = labels.FromStrings("machine", m, "metric", k)
	}
	src := newSource(c)
	batch := make([]sample, c.batch)
	var elapsed time.Duration
	ctx := context.Background()
	for n := 0; n < c.n; n += c.batch {
		src.fill(batch)
		start := time.Now()
		app := db.Appender(ctx)
		for _, s := range batch {
			ref, err := app.Append(refs[s.series], lsets[s.series], s.t, s.v)
			if err != nil {
				return result{}, err
			}
			refs[s.series] = ref
		}
		if err := app.Commit(); err != nil {
			return result{}, err
		}
		elapsed += time.Since(start)
	}
	r := result{samples: c.n, elapsed: elapsed}
	if r.bytesWritten, err = dirSize(dir); err != nil {
		return r, err
	}
	h := db.Head()
	if err := db.CompactHead(tsdb.NewRangeHead(h, h.MinTime(), h.MaxTime())); err != nil {
		return r, fmt.Errorf("compacting head: %w", err)
	}
	for _, b := range db.Blocks() {
		r.bytesCompacted += b.Size()
	}
	m, k := c.name(0)
	r.read, r.readPoints, err = timeRead(func() (int, error) {
		q, err := db.Querier(math.MinInt64, math.MaxInt64)
		if err != nil {
			return 0, err
		}
		defer q.Close()
		ss := q.Select(ctx, false, nil, labels.MustNewMatcher(labels.MatchEqual, "machine", m), labels.MustNewMatcher(labels.MatchEqual, "metric", k))
		n := 0
		var sum float64
		for ss.Next() {
			it := ss.At().Iterator(nil)
			for it.Next() == chunkenc.ValFloat {
				_, v := it.At()
				sum += v
				n++
			}
		}
		return n, ss.Err()
	})
	return r, err
}

// encodeChunk appends points (time-sorted, one series) as: count, first
// time, first value bits, then per point the time delta and the XOR of the
// value bits with the previous value's, all varints; snappy-compressed.
func encodeChunk(dst, scratch []byte, pts []sample) ([]byte, []byte) {
	scratch = binary.AppendUvarint(scratch[:0], uint64(len(pts)))
	scratch = binary.AppendVarint(scratch, pts[0].t)
	prev := math.Float64bits(pts[0].v)
	scratch = binary.AppendUvarint(scratch, prev)
	for i := 1; i < len(pts); i++ {
		scratch = binary.AppendUvarint(scratch, uint64(pts[i].t-pts[i-1].t))
		bits := math.Float64bits(pts[i].v)
		scratch = binary.AppendUvarint(scratch, bits^prev)
		prev = bits
	}
	return snappy.Encode(dst[:cap(dst)], scratch), scratch
}

func decodeChunk(buf []byte, src []byte, fn func(t int64, v float64)) ([]byte, error) {
	b, err := snappy.Decode(buf[:cap(buf)], src)
	if err != nil {
		return buf, err
	}
	n, k := binary.Uvarint(b)
	b = b[k:]
	t, k := binary.Varint(b)
	b = b[k:]
	bits, k := binary.Uvarint(b)
	b = b[k:]
	fn(t, math.Float64frombits(bits))
	for range n - 1 {
		dt, k := binary.Uvarint(b)
		b = b[k:]
		x, k := binary.Uvarint(b)
		b = b[k:]
		t += int64(dt)
		bits ^= x
		fn(t, math.Float64frombits(bits))
	}
	return buf, nil
}

func pebbleKey(dst []byte, machine, metric string, t int64) []byte {
	dst = append(dst[:0], machine...)
	dst = append(dst, 0)
	dst = append(dst, metric...)
	dst = append(dst, 0)
	return binary.BigEndian.AppendUint64(dst, uint64(t))
}

func runPebble(c config, dir string, wo *pebble.WriteOptions) (result, error) {
	opts := &pebble.Options{Logger: quietLogger{}}
	opts.ApplyCompressionSettings(func() pebble.DBCompressionSettings {
		return pebble.UniformDBCompressionSettings(sstable.ZstdCompression)
	})
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return result{}, err
	}
	defer db.Close()
	nseries := c.machines * c.metrics
	machines := make([]string, nseries)
	metrics := make([]string, nseries)
	for i := range machines {
		machines[i], metrics[i] = c.name(i)
	}
	src := newSource(c)
	batch := make([]sample, c.batch)
	bySeries := make([][]sample, nseries)
	var key, val, scratch []byte
	var elapsed time.Duration
	for n := 0; n < c.n; n += c.batch {
		src.fill(batch)
		start := time.Now()
		for i := range bySeries {
			bySeries[i] = bySeries[i][:0]
		}
		for _, s := range batch {
			bySeries[s.series] = append(bySeries[s.series], s)
		}
		b := db.NewBatch()
		for i, pts := range bySeries {
			if len(pts) == 0 {
				continue
			}
			key = pebbleKey(key, machines[i], metrics[i], pts[0].t)
			val, scratch = encodeChunk(val, scratch, pts)
			if err := b.Set(key, val, nil); err != nil {
				return result{}, err
			}
		}
		if err := b.Commit(wo); err != nil {
			return result{}, err
		}
		if err := b.Close(); err != nil {
			return result{}, err
		}
		elapsed += time.Since(start)
	}
	r := result{samples: c.n, elapsed: elapsed}
	if r.bytesWritten, err = dirSize(dir); err != nil {
		return r, err
	}
	if err := db.Flush(); err != nil {
		return r, err
	}
	if err := db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
		return r, err
	}
	total := db.Metrics().Total()
	r.bytesCompacted = total.AggregateSize()
	lo := pebbleKey(nil, machines[0], metrics[0], 0)
	hi := pebbleKey(nil, machines[0], metrics[0], math.MaxInt64)
	r.read, r.readPoints, err = timeRead(func() (int, error) {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return 0, err
		}
		n := 0
		var sum float64
		var buf []byte
		for it.First(); it.Valid(); it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				return n, errors.Join(err, it.Close())
			}
			if buf, err = decodeChunk(buf, v, func(_ int64, v float64) { sum += v; n++ }); err != nil {
				return n, errors.Join(err, it.Close())
			}
		}
		return n, it.Close()
	})
	return r, err
}

// timeRead runs read five times and returns the median duration.
func timeRead(read func() (int, error)) (time.Duration, int, error) {
	var ds []time.Duration
	n := 0
	for range 5 {
		start := time.Now()
		var err error
		if n, err = read(); err != nil {
			return 0, 0, err
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return ds[len(ds)/2], n, nil
}

func dirSize(dir string) (int64, error) { return filesSize(dir, "") }

// filesSize sums the disk usage of the files under dir whose name ends in suffix.
func filesSize(dir, suffix string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(d.Name(), suffix) {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		// Allocated blocks, not the apparent size: TSDB and Pebble
		// preallocate some files.
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

// quietLogger drops Pebble's informational messages.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}
func (quietLogger) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble: "+format+"\n", args...)
}
func (quietLogger) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble: "+format+"\n", args...)
	os.Exit(1)
}
