package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Compact packs the head rows of every day that ended CompactAfter or more
// before now (packed layout; the rows layout has nothing to pack), and
// returns how many samples it moved. Maintenance runs it; a day is packed
// again when late samples arrived after its first compaction, and only the
// series and hours they touch are rewritten.
func (s *Store) Compact(ctx context.Context, now time.Time) (int64, error) {
	if err := s.acquire(); err != nil {
		return 0, fmt.Errorf("compacting: %w", err)
	}
	defer s.life.RUnlock()
	return s.compact(ctx, now, false)
}

// compactQuiet is how long maintenance leaves a closed day alone after
// this process last wrote head rows into it: an import of a closed day is
// packed once it pauses, rather than every maintenance run holding the
// day's lock (and rewriting the chunks) while the import goes on. Per
// process: the writes other replicas take are not seen.
const compactQuiet = 10 * time.Minute

// noteHeadWrite records that head rows of days were written now.
func (s *Store) noteHeadWrite(days []int32) {
	now := s.opts.Now()
	s.headWritesMu.Lock()
	defer s.headWritesMu.Unlock()
	if s.headWrites == nil {
		s.headWrites = map[int64]time.Time{}
	}
	for _, d := range days {
		if t, ok := s.headWrites[int64(d)]; !ok || now.After(t) {
			s.headWrites[int64(d)] = now
		}
	}
}

// busyDay reports whether head rows of day d were written less than
// compactQuiet before now; it forgets the days written longer ago.
func (s *Store) busyDay(d int64, now time.Time) bool {
	s.headWritesMu.Lock()
	defer s.headWritesMu.Unlock()
	t, ok := s.headWrites[d]
	if ok && now.Sub(t) >= compactQuiet {
		delete(s.headWrites, d)
		return false
	}
	return ok
}

// compact packs the closed days; with quiet (maintenance), it skips those
// written to less than compactQuiet ago.
func (s *Store) compact(ctx context.Context, now time.Time, quiet bool) (int64, error) {
	if !s.packed {
		return 0, nil
	}
	if err := s.repairHead(ctx); err != nil {
		return 0, fmt.Errorf("compacting: %w", err)
	}
	days, err := listPartitions(ctx, s.pool, headTable)
	if err != nil {
		return 0, fmt.Errorf("compacting: %w", err)
	}
	var moved int64
	for _, d := range days {
		if dayTime(d + 1).Add(s.opts.CompactAfter).After(now) {
			break
		}
		var any bool
		part := pgx.Identifier{partitionName(headTable, d)}.Sanitize()
		if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+part+")").Scan(&any); err != nil {
			return moved, fmt.Errorf("compacting %s: %w", dayTime(d).Format(time.DateOnly), err)
		}
		if !any {
			continue
		}
		if quiet && s.busyDay(d, now) {
			s.logger.Debug("not compacting a day still written to", "day", dayTime(d).Format(time.DateOnly))
			continue
		}
		n, err := s.compactDay(ctx, d)
		if err != nil {
			return moved, fmt.Errorf("compacting %s: %w", dayTime(d).Format(time.DateOnly), err)
		}
		moved += n
		s.metrics.compactedRows.Add(float64(n))
		if err := s.dropHead(ctx, d); err != nil {
			return moved, fmt.Errorf("compacting %s: %w", dayTime(d).Format(time.DateOnly), err)
		}
	}
	return moved, nil
}

// dropHead drops the head partition of day d once compaction emptied it:
// the deleted rows' heap is truncated by VACUUM, but not their index, which
// would stay the size of a day's samples. One transaction holds the day's
// lock exclusively, checks the partition is still empty and drops it (a
// write for the day then finds no partition and creates it again,
// writeTx): atomic, so an interruption leaves the partition attached, never
// detach-pending nor an orphan table. Dropping a partition locks
// sample_head exclusively for a moment, and writes and reads queue behind
// that lock while it waits for long readers: lock_timeout (500 ms) bounds
// the stall, and the next maintenance tries again.
func (s *Store) dropHead(ctx context.Context, d int64) error {
	name := pgx.Identifier{partitionName(headTable, d)}.Sanitize()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1), $2)", s.dayLockClass(), int32(d)); err != nil {
			return err
		}
		var any bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+name+")").Scan(&any); err != nil || any {
			return err // rows came in since: the next compaction packs them
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '500ms'"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "DROP TABLE "+name)
		return err
	})
	if err == nil {
		s.parts.set([]int64{d}, false)
	}
	return err
}

// repairHead mends what an interrupted detach of a head partition leaves
// (the stores before the one-transaction dropHead detached CONCURRENTLY,
// then dropped): a partition pending detach (writes for its day fail, and
// CREATE TABLE IF NOT EXISTS skips it) is finalized, and a sample_head_*
// table attached to nothing is attached again; compaction then packs its
// rows, if any, and drops it. Open, compaction and a write finding no
// partition for its day run it.
func (s *Store) repairHead(ctx context.Context) error {
	if !s.packed {
		return nil
	}
	res, err := s.pool.Query(ctx, `
		SELECT c.relname, i.inhdetachpending
		FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
		WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
			AND c.relkind = 'r' AND c.relname LIKE $2
			AND (i.inhrelid IS NULL OR i.inhdetachpending)`, s.schema, headTable+`\_%`)
	if err != nil {
		return fmt.Errorf("repairing head partitions: %w", err)
	}
	type rel struct {
		name    string
		pending *bool
	}
	rels, err := pgx.CollectRows(res, func(r pgx.CollectableRow) (rel, error) {
		var x rel
		err := r.Scan(&x.name, &x.pending)
		return x, err
	})
	if err != nil {
		return fmt.Errorf("repairing head partitions: %w", err)
	}
	for _, r := range rels {
		d, ok := parseDay(headTable, r.name)
		if !ok {
			continue
		}
		name := pgx.Identifier{r.name}.Sanitize()
		if r.pending != nil {
			if _, err := s.pool.Exec(ctx, "ALTER TABLE "+headTable+" DETACH PARTITION "+name+" FINALIZE"); err != nil {
				return fmt.Errorf("repairing head partitions: finalizing the detach of %s: %w", r.name, err)
			}
		}
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "twinline.partitions."+s.schema); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')",
				headTable, name, dayTime(d).Format(time.RFC3339), dayTime(d+1).Format(time.RFC3339)))
			return err
		})
		if err != nil {
			return fmt.Errorf("repairing head partitions: attaching %s again: %w", r.name, err)
		}
		s.logger.Warn("reattached a head partition an interrupted detach left", "partition", r.name)
	}
	return nil
}

// compactDay packs the head rows of day d an hour at a time (a chunk's
// span): each hour is one transaction holding the day's lock exclusively,
// which merges the hour's head rows with the chunks they belong to,
// rewrites those series' tier rows of the hour and deletes the rows. A day
// of a large fleet is thus 24 moderate transactions, not one huge one.
func (s *Store) compactDay(ctx context.Context, d int64) (int64, error) {
	var moved int64
	for h := range int64(24) {
		from, to := dayTime(d).Add(time.Duration(h)*time.Hour), dayTime(d).Add(time.Duration(h+1)*time.Hour)
		n, err := s.compactRange(ctx, d, from, to)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// compactRange packs the head rows of [from, to), an hour of day d.
func (s *Store) compactRange(ctx context.Context, d int64, from, to time.Time) (int64, error) {
	var moved int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1), $2)", s.dayLockClass(), int32(d)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, createCompactPoints); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, collectCompactPoints, from, to)
		if err != nil || tag.RowsAffected() == 0 {
			return err // no head row in the hour
		}
		win := time.Duration(s.window) * time.Millisecond
		stmts := []struct {
			sql  string
			args []any
		}{
			{insertChunks, []any{int64(denseChunk), s.window}},
			{deleteWindowAggs, []any{from, to}},
			{aggInsert(aggWinTable, "p JOIN sample_chunks c ON c.series_id = p.series_id AND c.start = p.start AND c.has_aggs AND c.start >= $2 AND c.start < $3", false), []any{win, from, to}},
			{aggInsert(agg1mTable, "p", true), []any{time.Minute}},
			{aggInsert(agg1hTable, "p", true), []any{time.Hour}},
		}
		for _, st := range stmts {
			if _, err := tx.Exec(ctx, st.sql, st.args...); err != nil {
				return err
			}
		}
		tag, err = tx.Exec(ctx, "DELETE FROM sample_head WHERE time >= $1 AND time < $2", from, to)
		if err != nil {
			return err
		}
		moved = tag.RowsAffected()
		_, err = tx.Exec(ctx, "INSERT INTO compacted_days (day) VALUES ($1) ON CONFLICT DO NOTHING", int32(d))
		return err
	})
	return moved, err
}

const createCompactPoints = `
CREATE TEMP TABLE IF NOT EXISTS compact_points (
	series_id integer          NOT NULL,
	start     timestamptz      NOT NULL,
	o         integer          NOT NULL,
	t         timestamptz      NOT NULL,
	v         double precision NOT NULL
) ON COMMIT DELETE ROWS`

// collectCompactPoints gathers every sample of the series and hours the
// day's head rows touch: the head rows and the samples of the chunks they
// go into, whose rows it deletes.
const collectCompactPoints = `
WITH touched AS (
	SELECT DISTINCT series_id, date_bin('1 hour', time, timestamptz 'epoch') AS start
	FROM sample_head WHERE time >= $1 AND time < $2
), old AS (
	DELETE FROM sample_chunks c USING touched t
	WHERE c.series_id = t.series_id AND c.start = t.start AND c.start >= $1 AND c.start < $2
	RETURNING c.series_id, c.start, c.offsets, c.vals
)
INSERT INTO compact_points
SELECT o.series_id, o.start, u.o, o.start + u.o * interval '1 millisecond', u.v
FROM old o CROSS JOIN LATERAL unnest(o.offsets, o.vals) AS u(o, v)
UNION ALL
SELECT series_id, b, (extract(epoch FROM time - b) * 1000)::integer, time, value
FROM (SELECT series_id, date_bin('1 hour', time, timestamptz 'epoch') AS b, time, value
	FROM sample_head WHERE time >= $1 AND time < $2) h`

// insertChunks packs the gathered samples, one row per series and hour;
// has_aggs when there are denseChunk ($1) samples or more per window ($2 ms)
// on average.
const insertChunks = `
INSERT INTO sample_chunks (series_id, start, has_aggs, offsets, vals)
SELECT series_id, start, count(*) >= $1::bigint * count(DISTINCT o / $2::bigint),
	array_agg(o ORDER BY o), array_agg(v ORDER BY o)
FROM compact_points GROUP BY series_id, start`

// deleteWindowAggs removes the window aggregates of the touched hours:
// they are written again from all their samples (or not, when the chunk is
// no longer dense).
const deleteWindowAggs = `
DELETE FROM agg_window a USING (SELECT DISTINCT series_id, start FROM compact_points) t
WHERE a.series_id = t.series_id AND a.bucket >= t.start AND a.bucket < t.start + interval '1 hour'
	AND a.bucket >= $1 AND a.bucket < $2`

// aggInsert returns the statement writing the aggregates of table ($1:
// its bucket width) from compact_points (aliased p in from). Every touched
// bucket gets all its samples (buckets nest in hours): upsert replaces.
func aggInsert(table, from string, upsert bool) string {
	sql := `
INSERT INTO ` + table + ` AS a (series_id, bucket, count, sum, min, max, min_time, max_time)
SELECT p.series_id, date_bin($1::interval, p.t, timestamptz 'epoch'), count(*), sum(p.v), min(p.v), max(p.v),
	(array_agg(p.t ORDER BY p.v, p.t))[1], (array_agg(p.t ORDER BY p.v DESC, p.t))[1]
FROM compact_points ` + from + `
GROUP BY 1, 2`
	if upsert {
		sql += `
ON CONFLICT (series_id, bucket) DO UPDATE SET count = EXCLUDED.count, sum = EXCLUDED.sum,
	min = EXCLUDED.min, max = EXCLUDED.max, min_time = EXCLUDED.min_time, max_time = EXCLUDED.max_time`
	}
	return sql
}
