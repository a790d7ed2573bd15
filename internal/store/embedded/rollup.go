package embedded

// Rollups: the 1 min and 1 h tiers (docs/decisions/0031-rollups.md).
//
// A tier is a TSDB of its own (dir/rollup-1m, dir/rollup-1h) with four
// series per stored series, labelled machine, metric and stat (count, max,
// min, sum). A bucket [b, b+w) holds versions: the version v of a bucket is
// stored at time b+v, and the newest version (the latest time in the
// bucket) is the bucket. Versions make a rollup idempotent: it is
// recomputed, not added to.
//
// The tiers are computed from blocks, not from the head: a block is cut
// when the head is compacted (data about an hour old, or sooner for the
// out-of-order head), and the rollup loop then recomputes every tier bucket
// of the block's time range from the blocks already rolled up plus this
// one, reading them merged (so a sample stored twice counts once), and
// writes the buckets that changed as their next version. The set of rolled
// up blocks is kept as the set of their sources (the level-1 blocks they
// were compacted from) in dir/rollup-blocks; a block is rolled up when all
// its sources are. Compaction skips blocks not rolled up yet, so a block
// never mixes rolled and unrolled data.
//
// A query reads, for the tier-aligned middle of its range, the tier
// buckets plus the raw samples of everything not rolled up (the head, the
// out-of-order head, blocks cut since the last rollup): the block querier
// skips rolled-up blocks when its context says so. Rollup writes and the
// set's update happen under rollups.mu, which a query holds while it opens
// its queriers: it sees a block either in the tier or raw, never both.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/twinline/twinline/internal/store"
)

// labelStat names the statistic of a tier series. It sorts after machine
// and metric, so a tier's series of one stored series are neighbours.
const labelStat = "stat"

// The statistics of a tier bucket, in label order.
var statNames = [4]string{"count", "max", "min", "sum"}

// rollupFile is the file, in the store's directory, listing the sources of
// the blocks rolled up.
const rollupFile = "rollup-blocks"

// pendingFile is the file, in the store's directory, listing the blocks
// being rolled up (or whose rollup failed) with the time range of the
// tier buckets they may have written: queries read those ranges raw.
const pendingFile = "rollup-pending"

// pendingBlock is a block being rolled up and the range [Min, Max] of the
// tier buckets it may have written.
type pendingBlock struct {
	Block    ulid.ULID `json:"block"`
	Min, Max int64
}

// agg is the aggregate of the samples of one bucket.
type agg struct {
	start    int64 // bucket start
	n        float64
	sum      float64
	min, max float64
}

func (a *agg) add(v float64) {
	if a.n == 0 {
		a.min, a.max = v, v
	} else {
		a.min = min(a.min, v)
		a.max = max(a.max, v)
	}
	a.n++
	a.sum += v
}

// merge adds the aggregate o (of other samples) to a.
func (a *agg) merge(o agg) {
	if o.n == 0 {
		return
	}
	if a.n == 0 {
		a.min, a.max = o.min, o.max
	} else {
		a.min = min(a.min, o.min)
		a.max = max(a.max, o.max)
	}
	a.n += o.n
	a.sum += o.sum
}

// same reports whether a and o are the same aggregate, bit for bit.
func (a agg) same(o agg) bool {
	eq := func(x, y float64) bool { return math.Float64bits(x) == math.Float64bits(y) }
	return a.start == o.start && eq(a.n, o.n) && eq(a.sum, o.sum) && eq(a.min, o.min) && eq(a.max, o.max)
}

// tier is one rollup tier.
type tier struct {
	name  string
	width int64 // ms
	db    *tsdb.DB
}

// sourceSet is an immutable set of block ULIDs.
type sourceSet map[ulid.ULID]struct{}

// covers reports whether every source is in the set.
func (s sourceSet) covers(sources []ulid.ULID) bool {
	if len(sources) == 0 {
		return false
	}
	for _, u := range sources {
		if _, ok := s[u]; !ok {
			return false
		}
	}
	return true
}

// rollups is the state of the tiers of a store.
type rollups struct {
	tiers []*tier // ascending width; each width divides the next
	path  string  // of rollupFile

	// mu is held for writing while the set or pending changes, for
	// reading while a query opens its queriers.
	mu sync.RWMutex
	// rolled is the set of sources rolled up (replaced, never changed).
	rolled atomic.Pointer[sourceSet]
	// pending are the blocks whose buckets are being written, or were
	// partly written by a rollup that failed (guarded by mu): a query
	// overlapping one reads raw samples only. pendingPath is its file.
	pending     map[ulid.ULID]pendingBlock
	pendingPath string
	// commitEvery is how many tier values a rollup appends before it
	// commits them (64 Ki; tests lower it), testCommitted runs after
	// such an intermediate commit.
	commitEvery   int
	testCommitted func()
	// runMu serialises rollup runs.
	runMu sync.Mutex
	// written counts the bucket versions written; tierSelects the PromQL
	// Selects answered from a tier.
	written, tierSelects atomic.Int64
	// torn counts the tier reads that fell back to raw samples.
	torn atomic.Uint64
	// failed counts the rollup runs that failed; unrolled is the number
	// of blocks not rolled up after the latest run.
	failed   atomic.Uint64
	unrolled atomic.Int64
}

// skipRolledKey is the context key under which a query asks the block
// queriers to skip the blocks a sourceSet covers.
type skipRolledKey struct{}

// blockQuerier is a block's querier that answers nothing when its context
// carries a sourceSet covering the block.
type blockQuerier struct {
	storage.Querier
	sources []ulid.ULID
}

func (q *blockQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	if set, _ := ctx.Value(skipRolledKey{}).(sourceSet); set != nil && set.covers(q.sources) {
		return storage.EmptySeriesSet()
	}
	return q.Querier.Select(ctx, sortSeries, hints, ms...)
}

func newBlockQuerier(b tsdb.BlockReader, mint, maxt int64) (storage.Querier, error) {
	q, err := tsdb.NewBlockQuerier(b, mint, maxt)
	if err != nil {
		return nil, err
	}
	if blk, ok := b.(*tsdb.Block); ok {
		return &blockQuerier{Querier: q, sources: blk.Meta().Compaction.Sources}, nil
	}
	return q, nil
}

// openRollups opens the tiers in dir.
func openRollups(dir string, opts Options) (*rollups, error) {
	r := &rollups{
		path:        filepath.Join(dir, rollupFile),
		pendingPath: filepath.Join(dir, pendingFile),
		pending:     map[ulid.ULID]pendingBlock{},
		commitEvery: 64 << 10,
	}
	switch b, err := os.ReadFile(r.pendingPath); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", r.pendingPath, err)
	default:
		var list []pendingBlock
		if err := json.Unmarshal(b, &list); err != nil {
			return nil, fmt.Errorf("reading %s: %w", r.pendingPath, err)
		}
		for _, p := range list {
			r.pending[p.Block] = p
		}
	}
	set := sourceSet{}
	switch b, err := os.ReadFile(r.path); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", r.path, err)
	default:
		var list []ulid.ULID
		if err := json.Unmarshal(b, &list); err != nil {
			return nil, fmt.Errorf("reading %s: %w", r.path, err)
		}
		for _, u := range list {
			set[u] = struct{}{}
		}
	}
	r.rolled.Store(&set)
	for _, t := range []struct {
		name      string
		width     time.Duration
		retention time.Duration
	}{{"1m", time.Minute, opts.Retention1m}, {"1h", time.Hour, opts.Retention1h}} {
		to := tsdb.DefaultOptions()
		to.RetentionDuration = t.retention.Milliseconds()
		to.MinBlockDuration = (2 * time.Hour).Milliseconds()
		to.MaxBlockDuration = min(max(t.retention/10, 2*time.Hour), 31*24*time.Hour).Milliseconds()
		to.OutOfOrderTimeWindow = t.retention.Milliseconds()
		to.WALCompression = opts.WALCompression
		db, err := tsdb.Open(filepath.Join(dir, "rollup-"+t.name), nil, nil, to, nil)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("opening the %s rollup tier: %w", t.name, err)
		}
		// The rollup compacts the tier after writing (Store.rollup): a
		// head compaction running while buckets are committed has been
		// seen to lose samples of some statistics of a bucket.
		db.DisableCompactions()
		r.tiers = append(r.tiers, &tier{name: t.name, width: t.width.Milliseconds(), db: db})
	}
	return r, nil
}

func (r *rollups) close() error {
	var errs []error
	for _, t := range r.tiers {
		if err := t.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the %s rollup tier: %w", t.name, err))
		}
	}
	return errors.Join(errs...)
}

func (r *rollups) set() sourceSet { return *r.rolled.Load() }

// countUnrolled records how many blocks of db are not rolled up.
func (r *rollups) countUnrolled(db *tsdb.DB) {
	set, n := r.set(), int64(0)
	for _, b := range db.Blocks() {
		if !set.covers(b.Meta().Compaction.Sources) {
			n++
		}
	}
	r.unrolled.Store(n)
}

// save writes the set of rolled sources, keeping only those of blocks that
// still exist.
func (r *rollups) save(set sourceSet, blocks []*tsdb.Block) error {
	live := map[ulid.ULID]bool{}
	for _, b := range blocks {
		for _, u := range b.Meta().Compaction.Sources {
			live[u] = true
		}
	}
	list := make([]ulid.ULID, 0, len(set))
	for u := range set {
		if live[u] {
			list = append(list, u)
		}
	}
	slices.SortFunc(list, func(a, b ulid.ULID) int { return a.Compare(b) })
	return writeJSON(r.path, list)
}

// savePending writes the pending blocks. The caller holds mu.
func (r *rollups) savePending() error {
	list := make([]pendingBlock, 0, len(r.pending))
	for _, p := range r.pending {
		list = append(list, p)
	}
	slices.SortFunc(list, func(a, b pendingBlock) int { return a.Block.Compare(b.Block) })
	return writeJSON(r.pendingPath, list)
}

// pendingOverlaps reports whether a pending block may have written tier
// buckets in [mint, maxt]. The caller holds mu.
func (r *rollups) pendingOverlaps(mint, maxt int64) bool {
	for _, p := range r.pending {
		if p.Min <= maxt && mint <= p.Max {
			return true
		}
	}
	return false
}

// writeJSON replaces the file at path with v in JSON, atomically and
// durably.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}

// rollup rolls up every block not rolled up yet. It runs from the rollup
// loop, and from tests.
func (s *Store) rollup(ctx context.Context) error {
	r := s.roll
	r.runMu.Lock()
	defer r.runMu.Unlock()
	defer r.countUnrolled(s.db)
	blocks := s.db.Blocks()
	done := 0
	for _, b := range blocks {
		if r.set().covers(b.Meta().Compaction.Sources) {
			continue
		}
		if err := s.rollupBlock(ctx, b, blocks); err != nil {
			return fmt.Errorf("rolling up block %s: %w", b.Meta().ULID, err)
		}
		done++
	}
	if done > 0 {
		// A crash before this leaves the buckets written: the next run
		// recomputes the same buckets and writes no new version.
		if err := r.save(r.set(), s.db.Blocks()); err != nil {
			return err
		}
	}
	// Only once the set is saved are its blocks no longer pending (a
	// pending block deleted by retention is forgotten too).
	if err := s.prunePending(); err != nil {
		return err
	}
	for _, t := range r.tiers {
		if err := t.db.Compact(ctx); err != nil {
			return fmt.Errorf("compacting the %s tier: %w", t.name, err)
		}
	}
	return nil
}

// rollupBlock recomputes the tier buckets of b's time range from the
// blocks rolled up and b, writes those that changed, and adds b's sources
// to the set.
func (s *Store) rollupBlock(ctx context.Context, b *tsdb.Block, blocks []*tsdb.Block) error {
	r := s.roll
	meta := b.Meta()
	next := sourceSet{}
	for u := range r.set() {
		next[u] = struct{}{}
	}
	for _, u := range meta.Compaction.Sources {
		next[u] = struct{}{}
	}
	wide := r.tiers[len(r.tiers)-1].width
	mint := floorDiv(meta.MinTime, wide) * wide
	maxt := floorDiv(meta.MaxTime-1, wide)*wide + wide - 1

	// From here until the block is in the set, queries read its range raw
	// (even after a failure or a crash in between): the tiers may hold
	// some of its buckets, raw blocks all of it.
	r.mu.Lock()
	if _, ok := r.pending[meta.ULID]; !ok {
		r.pending[meta.ULID] = pendingBlock{Block: meta.ULID, Min: mint, Max: maxt}
		if err := r.savePending(); err != nil {
			delete(r.pending, meta.ULID)
			r.mu.Unlock()
			return err
		}
	}
	r.mu.Unlock()

	var qs []storage.Querier
	closeAll := func() {
		for _, q := range qs {
			_ = q.Close()
		}
	}
	defer closeAll()
	for _, bb := range blocks {
		if bb.MinTime() > maxt || bb.MaxTime() <= mint || !next.covers(bb.Meta().Compaction.Sources) {
			continue
		}
		q, err := tsdb.NewBlockQuerier(bb, mint, maxt)
		if err != nil {
			return err
		}
		qs = append(qs, q)
	}
	raw := storage.NewMergeQuerier(qs, nil, storage.ChainedSeriesMerge)

	// Not under mu: queries of the range read raw (pending), and runs are
	// serialised by runMu.
	tqs := make([]storage.Querier, len(r.tiers))
	for i, t := range r.tiers {
		q, err := t.db.Querier(mint, maxt)
		if err != nil {
			return err
		}
		qs = append(qs, q)
		tqs[i] = q
	}
	apps := make([]storage.Appender, len(r.tiers))
	defer func() { // on an error: an open appender would hold the tier's head
		for _, app := range apps {
			if app != nil {
				_ = app.Rollback()
			}
		}
	}()
	pending := 0
	commit := func() error {
		for i, t := range r.tiers {
			if apps[i] == nil {
				continue
			}
			if err := apps[i].Commit(); err != nil {
				return fmt.Errorf("committing the %s tier: %w", t.name, err)
			}
			apps[i] = nil
		}
		pending = 0
		if r.testCommitted != nil {
			r.testCommitted()
		}
		return nil
	}
	ss := raw.Select(ctx, true, &storage.SelectHints{Start: mint, End: maxt},
		labels.MustNewMatcher(labels.MatchNotEqual, LabelMetric, ""))
	var it chunkenc.Iterator
	buckets := make([][]agg, len(r.tiers))
	for ss.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		sr := ss.At()
		for i := range buckets {
			buckets[i] = buckets[i][:0]
		}
		it = sr.Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			if vt != chunkenc.ValFloat {
				continue
			}
			t, v := it.At()
			for i, tr := range r.tiers {
				start := floorDiv(t, tr.width) * tr.width
				bs := buckets[i]
				if len(bs) == 0 || bs[len(bs)-1].start != start {
					bs = append(bs, agg{start: start})
				}
				bs[len(bs)-1].add(v)
				buckets[i] = bs
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		lset := sr.Labels()
		machine, metric := lset.Get(LabelMachine), lset.Get(LabelMetric)
		for i, tr := range r.tiers {
			old, err := readTierMode(ctx, tqs[i], machine, metric, mint, maxt, tr.width, true)
			if err != nil {
				return fmt.Errorf("reading the %s tier: %w", tr.name, err)
			}
			for _, a := range buckets[i] {
				version := int64(0)
				if j, found := slices.BinarySearchFunc(old, a.start, func(o tierBucket, t int64) int { return cmp.Compare(o.start, t) }); found {
					if !old[j].torn && old[j].same(a) {
						continue
					}
					version = old[j].version + 1
				}
				if version >= tr.width {
					return fmt.Errorf("bucket %d of %s/%s in the %s tier: too many versions", a.start, machine, metric, tr.name)
				}
				if apps[i] == nil {
					apps[i] = tr.db.Appender(ctx)
				}
				at := a.start + version
				for k, name := range statNames {
					v := [4]float64{a.n, a.max, a.min, a.sum}[k]
					if _, err := apps[i].Append(0, labels.FromStrings(LabelMachine, machine, LabelMetric, metric, labelStat, name), at, v); err != nil {
						return fmt.Errorf("writing bucket %d of %s/%s in the %s tier: %w", a.start, machine, metric, tr.name, err)
					}
				}
				pending += 4
				r.written.Add(1)
			}
		}
		if pending >= r.commitEvery {
			if err := commit(); err != nil {
				return err
			}
		}
	}
	if err := ss.Err(); err != nil {
		return err
	}
	if err := commit(); err != nil {
		return err
	}
	r.mu.Lock()
	r.rolled.Store(&next)
	delete(r.pending, meta.ULID) // in memory; the file once the set is saved
	r.mu.Unlock()
	return nil
}

// prunePending forgets the pending blocks rolled up (and saved in the set)
// or deleted, and saves the pending blocks if they changed.
func (s *Store) prunePending() error {
	r := s.roll
	unrolled := map[ulid.ULID]bool{} // the blocks that still exist, not rolled up
	set := r.set()
	for _, b := range s.db.Blocks() {
		unrolled[b.Meta().ULID] = !set.covers(b.Meta().Compaction.Sources)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for u, p := range r.pending {
		still, exists := unrolled[u]
		if !exists {
			// Retention (or the size cap) deleted it before it was rolled
			// up: the tiers miss (some of) its samples for good.
			s.logger.Error("a block was deleted before it was rolled up: the rollup tiers lack part of its samples",
				"block", u, "min_time", p.Min, "max_time", p.Max)
		}
		if !still {
			delete(r.pending, u)
		}
	}
	// The file may still list blocks rolled up since; rewriting it every
	// run is cheap enough only when something changed, so compare.
	b, err := os.ReadFile(r.pendingPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", r.pendingPath, err)
	}
	var onDisk []pendingBlock
	if len(b) > 0 {
		if err := json.Unmarshal(b, &onDisk); err != nil {
			return fmt.Errorf("reading %s: %w", r.pendingPath, err)
		}
	}
	if len(onDisk) == len(r.pending) {
		same := true
		for _, p := range onDisk {
			if _, ok := r.pending[p.Block]; !ok {
				same = false
			}
		}
		if same {
			return nil
		}
	}
	return r.savePending()
}

// tierBucket is the newest version of a tier bucket.
type tierBucket struct {
	agg
	version int64
	torn    bool // the newest version is not complete (joinBuckets)
}

// readTier returns the newest version of every bucket of machine/metric in
// [mint, maxt] of a tier, in time order.
func readTier(ctx context.Context, q storage.Querier, machine, metric string, mint, maxt, width int64) ([]tierBucket, error) {
	return readTierMode(ctx, q, machine, metric, mint, maxt, width, false)
}

// readTierMode is readTier; lenient, it joins the four series by time
// (joinBuckets) instead of failing when they disagree: the rollup reads
// so, and heals what it finds torn.
func readTierMode(ctx context.Context, q storage.Querier, machine, metric string, mint, maxt, width int64, lenient bool) ([]tierBucket, error) {
	ss := q.Select(ctx, true, &storage.SelectHints{Start: mint, End: maxt},
		labels.MustNewMatcher(labels.MatchEqual, LabelMachine, machine),
		labels.MustNewMatcher(labels.MatchEqual, LabelMetric, metric))
	var (
		cols [4][]store.Point
		it   chunkenc.Iterator
	)
	for ss.Next() {
		sr := ss.At()
		k := slices.Index(statNames[:], sr.Labels().Get(labelStat))
		if k < 0 {
			continue
		}
		it = sr.Iterator(it)
		for vt := it.Seek(mint); vt != chunkenc.ValNone; vt = it.Next() {
			t, v := it.At()
			if t > maxt {
				break
			}
			cols[k] = append(cols[k], store.Point{Time: t, Value: v})
		}
		if err := it.Err(); err != nil {
			return nil, err
		}
	}
	if err := ss.Err(); err != nil {
		return nil, err
	}
	if lenient {
		return joinBuckets(cols, width), nil
	}
	return tierBuckets(cols, store.SeriesKey{Machine: machine, Metric: metric}, width)
}

// errTierTorn reports a tier whose four series of a key do not hold the
// same times: a read that met the tier's compaction at a bad moment has
// been seen to (at 1 000 series, once). Queries then read raw samples; the
// rollup run fails and tries again at its next run.
var errTierTorn = errors.New("tier read torn")

// tierBuckets returns the newest version of every bucket of one key's tier
// series, read into cols (in statNames order), in time order.
func tierBuckets(cols [4][]store.Point, key store.SeriesKey, width int64) ([]tierBucket, error) {
	n := len(cols[0])
	for _, c := range cols[1:] {
		if len(c) != n {
			return nil, fmt.Errorf("%w: tier series of %s/%s disagree: %d and %d samples", errTierTorn, key.Machine, key.Metric, n, len(c))
		}
	}
	return tierBucketsEqualLen(cols, width), nil
}

// joinBuckets is tierBuckets for columns whose times may differ (a torn
// read, or a tier that lost a sample): a version counts if all four
// series hold it, and a bucket whose newest version (the latest time of
// any series in it) is not complete is marked torn, so that the rollup
// writes it again, after every version seen.
func joinBuckets(cols [4][]store.Point, width int64) []tierBucket {
	type entry struct {
		v    [4]float64
		mask uint8
	}
	byT := map[int64]*entry{}
	var times []int64
	for k, c := range cols {
		for _, p := range c {
			e := byT[p.Time]
			if e == nil {
				e = &entry{}
				byT[p.Time] = e
				times = append(times, p.Time)
			}
			e.v[k] = p.Value
			e.mask |= 1 << k
		}
	}
	slices.Sort(times)
	var out []tierBucket
	for _, t := range times {
		e := byT[t]
		start := floorDiv(t, width) * width
		if len(out) == 0 || out[len(out)-1].start != start {
			out = append(out, tierBucket{agg: agg{start: start}, torn: true})
		}
		b := &out[len(out)-1]
		b.version = t - start
		if e.mask == 0xf {
			b.agg = agg{start: start, n: e.v[0], max: e.v[1], min: e.v[2], sum: e.v[3]}
			b.torn = false
		} else {
			b.torn = true
		}
	}
	return out
}

func tierBucketsEqualLen(cols [4][]store.Point, width int64) []tierBucket {
	n := len(cols[0])
	var out []tierBucket
	for i := range n {
		t := cols[0][i].Time
		start := floorDiv(t, width) * width
		b := tierBucket{agg: agg{start: start, n: cols[0][i].Value, max: cols[1][i].Value, min: cols[2][i].Value, sum: cols[3][i].Value}, version: t - start}
		if len(out) > 0 && out[len(out)-1].start == start {
			out[len(out)-1] = b // a newer version
			continue
		}
		out = append(out, b)
	}
	return out
}

// floorDiv is a / b rounded towards negative infinity (b > 0).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// rollupLoop rolls up new blocks every interval until stop is closed.
func (s *Store) rollupLoop(every time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for first := true; ; first = false {
		if !first { // the first run at once: blocks left by the last run
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
		if err := s.rollup(ctx); err != nil && ctx.Err() == nil {
			s.roll.failed.Add(1)
			s.logger.Warn("rolling up blocks", "err", err)
		}
	}
}

// tierFor returns the widest tier whose width divides step, or nil.
func (r *rollups) tierFor(step int64) *tier {
	for i := len(r.tiers) - 1; i >= 0; i-- {
		if step%r.tiers[i].width == 0 {
			return r.tiers[i]
		}
	}
	return nil
}

// tierView is what a query reads through a tier: the tier's querier, the
// raw data not rolled up, and the blocks rolled up with their time ranges.
// The latter tell the samples not rolled up that are stored in a rolled up
// block too (the out-of-order head replays, after a restart, samples that
// were already compacted into a block), which the tier counts already.
type tierView struct {
	tier                 *tier
	tq, unrolled, rolled storage.Querier
	rolledRanges         [][2]int64 // [min, max) of the rolled up blocks
	unrolledCtx          context.Context
}

func (v *tierView) close() error {
	var errs []error
	for _, q := range []storage.Querier{v.tq, v.unrolled, v.rolled} {
		if q != nil {
			errs = append(errs, q.Close())
		}
	}
	return errors.Join(errs...)
}

// inRolled reports whether t falls in a rolled up block.
func (v *tierView) inRolled(t int64) bool {
	for _, r := range v.rolledRanges {
		if t >= r[0] && t < r[1] {
			return true
		}
	}
	return false
}

// openView opens the queriers of a read through tier t over [mint, maxt].
func (s *Store) openView(ctx context.Context, t *tier, mint, maxt int64) (*tierView, error) {
	var err error
	for range 3 { // a block may close under us (compaction): try again
		var v *tierView
		if v, err = s.tryOpenView(ctx, t, mint, maxt); err == nil {
			return v, nil
		}
	}
	return nil, err
}

func (s *Store) tryOpenView(ctx context.Context, t *tier, mint, maxt int64) (_ *tierView, err error) {
	r := s.roll
	v := &tierView{tier: t}
	defer func() {
		if err != nil {
			v.close()
		}
	}()
	r.mu.RLock()
	defer r.mu.RUnlock()
	set := r.set()
	if r.pendingOverlaps(mint, maxt) {
		// A block being rolled up: the tier may hold part of it. Read
		// everything raw (no tier, nothing skipped).
		set = sourceSet{}
		v.tq = storage.NoopQuerier()
	} else if v.tq, err = t.db.Querier(mint, maxt); err != nil {
		return nil, fmt.Errorf("opening the %s tier: %w", t.name, err)
	}
	if v.unrolled, err = s.db.Querier(mint, maxt); err != nil {
		return nil, fmt.Errorf("opening querier: %w", err)
	}
	var qs []storage.Querier
	for _, b := range s.db.Blocks() {
		if b.MinTime() > maxt || b.MaxTime() <= mint || !set.covers(b.Meta().Compaction.Sources) {
			continue
		}
		q, err := tsdb.NewBlockQuerier(b, mint, maxt)
		if err != nil {
			for _, q := range qs {
				q.Close()
			}
			return nil, fmt.Errorf("opening block querier: %w", err)
		}
		qs = append(qs, q)
		v.rolledRanges = append(v.rolledRanges, [2]int64{b.MinTime(), b.MaxTime()})
	}
	v.rolled = storage.NewMergeQuerier(qs, nil, storage.ChainedSeriesMerge)
	v.unrolledCtx = context.WithValue(ctx, skipRolledKey{}, set)
	return v, nil
}

// unrolledBuckets returns the tier buckets of the samples of sr (of key, read
// through the view's unrolled querier) in [mint, maxt], leaving out those
// a rolled up block holds too.
func (v *tierView) unrolledBuckets(sr storage.Series, key store.SeriesKey, mint, maxt int64) ([]agg, error) {
	ctx := v.unrolledCtx
	var extra []agg
	var rit chunkenc.Iterator
	w := v.tier.width
	it := sr.Iterator(nil)
	rolledOpen := false
	for vt := it.Seek(mint); vt != chunkenc.ValNone; vt = it.Next() {
		if vt != chunkenc.ValFloat {
			continue
		}
		t, val := it.At()
		if t > maxt {
			break
		}
		if v.inRolled(t) {
			if !rolledOpen {
				rolledOpen = true
				rs := v.rolled.Select(ctx, false, &storage.SelectHints{Start: mint, End: maxt},
					labels.MustNewMatcher(labels.MatchEqual, LabelMachine, key.Machine),
					labels.MustNewMatcher(labels.MatchEqual, LabelMetric, key.Metric))
				if rs.Next() {
					rit = rs.At().Iterator(nil)
				}
				if err := rs.Err(); err != nil {
					return nil, err
				}
			}
			if rit != nil && rit.Seek(t) != chunkenc.ValNone && rit.AtT() == t {
				continue // counted in the tier
			}
		}
		start := floorDiv(t, w) * w
		if len(extra) == 0 || extra[len(extra)-1].start != start {
			extra = append(extra, agg{start: start})
		}
		extra[len(extra)-1].add(val)
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	return extra, nil
}

// mergeAggs merges two time-ordered lists of buckets.
func mergeAggs(out, extra []agg) []agg {
	if len(extra) == 0 {
		return out
	}
	if len(out) == 0 || extra[0].start > out[len(out)-1].start {
		return append(out, extra...) // the head, after what is rolled up
	}
	merged := make([]agg, 0, len(out)+len(extra))
	i, j := 0, 0
	for i < len(out) || j < len(extra) {
		switch {
		case j == len(extra) || (i < len(out) && out[i].start < extra[j].start):
			merged = append(merged, out[i])
			i++
		case i == len(out) || extra[j].start < out[i].start:
			merged = append(merged, extra[j])
			j++
		default:
			a := out[i]
			a.merge(extra[j])
			merged = append(merged, a)
			i++
			j++
		}
	}
	return merged
}
