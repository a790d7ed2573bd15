package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The partitioned tables and the prefix of their daily partitions'
// names: samples_20250601 holds 2025-06-01 UTC.
const (
	samplesTable = "samples"
	aggsTable    = "sample_aggs"
)

// storageParams are the storage parameters of each table's partitions.
// Aggregate rows are merged (updated) by later batches of their window:
// free space on each page lets PostgreSQL make those HOT updates (no new
// index entry, the dead version pruned on the page).
var storageParams = map[string]string{
	aggsTable: " WITH (fillfactor = 70)",
}

// partitions remembers the days that have both partitions.
type partitions struct {
	mu    sync.RWMutex
	known map[int64]bool // day number since the epoch
}

func (p *partitions) has(day int64) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.known[day]
}

func (p *partitions) set(days []int64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range days {
		if ok {
			p.known[d] = true
		} else {
			delete(p.known, d)
		}
	}
}

func (p *partitions) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.known)
}

func dayOf(ms int64) int64 { return floorDiv(ms, dayMs) }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func dayTime(day int64) time.Time { return time.UnixMilli(day * dayMs).UTC() }

func partitionName(table string, day int64) string {
	return table + "_" + dayTime(day).Format("20060102")
}

// parseDay returns the day of a partition named table_YYYYMMDD.
func parseDay(table, name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, table+"_")
	if !ok || len(rest) != 8 {
		return 0, false
	}
	t, err := time.Parse("20060102", rest)
	if err != nil {
		return 0, false
	}
	return dayOf(t.UnixMilli()), true
}

// listPartitions returns the days of table's partitions, sorted.
func listPartitions(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, table string) ([]int64, error) {
	rows, err := q.Query(ctx, `
		SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = $1::regclass`, table)
	if err != nil {
		return nil, fmt.Errorf("listing partitions of %s: %w", table, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing partitions of %s: %w", table, err)
	}
	var days []int64
	for _, n := range names {
		if d, ok := parseDay(table, n); ok {
			days = append(days, d)
		}
	}
	slices.Sort(days)
	return days, nil
}

// detectLayout finds out whether the store manages partitions: not when
// samples was created as a plain table and turned into a TimescaleDB
// hypertable before the migrations ran.
func (s *Store) detectLayout(ctx context.Context) error {
	if s.packed {
		return nil
	}
	err := s.pool.QueryRow(ctx, `
		SELECT NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'samples'::regclass),
			EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')`).Scan(&s.unmanaged, &s.timescale)
	if err != nil {
		return fmt.Errorf("inspecting the samples table: %w", err)
	}
	if s.unmanaged {
		s.logger.Info("samples is not partitioned natively: partitions are not managed by the store",
			"timescaledb", s.timescale)
	}
	return nil
}

// loadPartitions fills the known days from the catalog.
func (s *Store) loadPartitions(ctx context.Context) error {
	if s.unmanaged {
		return nil
	}
	var both []int64
	for i, table := range s.tables() {
		days, err := listPartitions(ctx, s.pool, table)
		if err != nil {
			return err
		}
		if i == 0 {
			both = days
			continue
		}
		both = slices.DeleteFunc(both, func(d int64) bool {
			_, ok := slices.BinarySearch(days, d)
			return !ok
		})
	}
	s.parts.reset()
	s.parts.set(both, true)
	return nil
}

// createAhead makes sure the partitions from yesterday to PartitionsAhead
// days after now exist.
func (s *Store) createAhead(ctx context.Context, now time.Time) error {
	today := dayOf(now.UnixMilli())
	var days []int64
	for d := today - 1; d <= today+int64(s.opts.PartitionsAhead); d++ {
		if !s.parts.has(d) {
			days = append(days, d)
		}
	}
	return s.createPartitions(ctx, days)
}

// ensureDays creates the partitions of the days of rows that are not known.
func (s *Store) ensureDays(ctx context.Context, rows []row) error {
	var missing []int64
	last := int64(-1 << 62)
	for i := range rows {
		d := dayOf(rows[i].ms)
		if d == last {
			continue
		}
		last = d
		if !s.parts.has(d) && !slices.Contains(missing, d) {
			missing = append(missing, d)
		}
	}
	return s.createPartitions(ctx, missing)
}

// createPartitions creates the raw and aggregate partitions of days, in one
// transaction under an advisory lock (CREATE TABLE IF NOT EXISTS is not safe
// against a concurrent one).
func (s *Store) createPartitions(ctx context.Context, days []int64) error {
	if len(days) == 0 || s.unmanaged {
		return nil
	}
	slices.Sort(days)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "twinline.partitions."+s.schema); err != nil {
			return err
		}
		var b strings.Builder
		for _, d := range days {
			from := dayTime(d).Format(time.RFC3339)
			to := dayTime(d + 1).Format(time.RFC3339)
			for _, table := range s.tables() {
				fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s')%s;\n",
					pgx.Identifier{partitionName(table, d)}.Sanitize(), table, from, to, storageParams[table])
			}
		}
		_, err := tx.Exec(ctx, b.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("creating partitions for %d days from %s: %w", len(days), dayTime(days[0]).Format(time.DateOnly), err)
	}
	s.parts.set(days, true)
	return nil
}

// EnforceRetention detaches and drops the partitions whose day ended
// Retention or more before now, and returns how many it dropped (raw and
// aggregate partitions counted separately). It never deletes rows.
func (s *Store) EnforceRetention(ctx context.Context, now time.Time) (int, error) {
	if err := s.acquire(); err != nil {
		return 0, fmt.Errorf("enforcing retention: %w", err)
	}
	defer s.life.RUnlock()
	return s.enforceRetention(ctx, now)
}

func (s *Store) enforceRetention(ctx context.Context, now time.Time) (int, error) {
	if s.opts.Retention < 0 {
		return 0, nil
	}
	if s.unmanaged {
		return s.dropChunks(ctx, dayTime(s.minDay(now)))
	}
	dropped := 0
	for _, table := range s.tables() {
		minDay, ok := s.tableMinDay(table, now)
		if !ok {
			continue
		}
		days, err := listPartitions(ctx, s.pool, table)
		if err != nil {
			return dropped, fmt.Errorf("enforcing retention: %w", err)
		}
		n, err := s.dropOrphans(ctx, table, minDay)
		dropped += n
		if err != nil {
			return dropped, fmt.Errorf("enforcing retention: %w", err)
		}
		for _, d := range days {
			if d >= minDay {
				break
			}
			s.parts.set([]int64{d}, false)
			if err := s.dropPartition(ctx, table, d); err != nil {
				return dropped, fmt.Errorf("enforcing retention: %w", err)
			}
			dropped++
		}
	}
	return dropped, nil
}

// minDay is the first day retention keeps at now: the day holding
// now - Retention (its partition ends after the cut-off).
func (s *Store) minDay(now time.Time) int64 {
	return dayOf(now.Add(-s.opts.Retention).UnixMilli())
}

// dropPartition detaches one partition (CONCURRENTLY: writers and readers of
// the parent are not blocked) and drops it.
func (s *Store) dropPartition(ctx context.Context, table string, day int64) error {
	name := pgx.Identifier{partitionName(table, day)}.Sanitize()
	_, err := s.pool.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DETACH PARTITION %s CONCURRENTLY", table, name))
	if err != nil {
		// An interrupted concurrent detach leaves the partition pending:
		// finish it.
		if _, ferr := s.pool.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DETACH PARTITION %s FINALIZE", table, name)); ferr != nil {
			return fmt.Errorf("detaching %s: %w", name, err)
		}
	}
	if _, err := s.pool.Exec(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
		return fmt.Errorf("dropping %s: %w", name, err)
	}
	return nil
}

// dropOrphans drops the day tables of table before minDay that are
// attached to nothing: what a detach that succeeded before its DROP failed
// (dropPartition) leaves, which listPartitions no longer lists.
func (s *Store) dropOrphans(ctx context.Context, table string, minDay int64) (int, error) {
	res, err := s.pool.Query(ctx, `
		SELECT c.relname FROM pg_class c
		WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
			AND c.relkind = 'r' AND c.relname LIKE $2
			AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)`, s.schema, table+`\_%`)
	if err != nil {
		return 0, fmt.Errorf("listing detached tables of %s: %w", table, err)
	}
	names, err := pgx.CollectRows(res, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("listing detached tables of %s: %w", table, err)
	}
	dropped := 0
	for _, n := range names {
		if d, ok := parseDay(table, n); !ok || d >= minDay {
			continue
		}
		if _, err := s.pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{n}.Sanitize()); err != nil {
			return dropped, fmt.Errorf("dropping %s: %w", n, err)
		}
		dropped++
	}
	return dropped, nil
}

// dropChunks is retention on TimescaleDB hypertables: drop_chunks drops the
// chunks that end before cutoff. Without TimescaleDB there is nothing the
// store can drop (the tables are not partitioned): it does nothing.
func (s *Store) dropChunks(ctx context.Context, cutoff time.Time) (int, error) {
	if !s.timescale {
		return 0, nil
	}
	dropped := 0
	for _, table := range []string{samplesTable, aggsTable} {
		rows, err := s.pool.Query(ctx, "SELECT drop_chunks($1::regclass, older_than => $2::timestamptz)",
			pgx.Identifier{s.schema, table}.Sanitize(), cutoff)
		if err != nil {
			return dropped, fmt.Errorf("enforcing retention: dropping chunks of %s: %w", table, err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return dropped, fmt.Errorf("enforcing retention: dropping chunks of %s: %w", table, err)
		}
		dropped += len(names)
	}
	return dropped, nil
}
