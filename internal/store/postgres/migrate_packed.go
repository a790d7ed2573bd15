package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// MigratePacked moves a store from the rows layout to the packed one, in
// the schema of url (or opts.Schema), and returns how many samples it
// moved. It is what `twinline migrate --packed` runs.
//
// Online: it first switches the store's layout setting to packed; a server
// (re)started from then on opens the store packed and reads the rows not
// moved yet from the legacy table alongside the packed ones, and checks
// them for first-write-wins. (A server still running in the rows layout
// keeps writing to the legacy table: restart the servers after the
// switch; the rows it wrote are moved all the same.) In batches: a
// transaction moves the rows of batch series of one legacy day (deleting
// them from the legacy table and inserting them into sample_head), so a
// sample is always in exactly one of the two. Resumable: an interrupted
// run leaves whole batches moved, and the next run carries on with what is
// left. Each legacy day whose rows are all moved has its legacy partitions
// dropped; compaction then packs it (this run compacts the closed days).
func MigratePacked(ctx context.Context, url string, opts Options, batch int, logger *slog.Logger) (int64, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if batch < 1 {
		batch = 500
	}
	if err := Migrate(ctx, url, logger); err != nil {
		return 0, err
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return 0, fmt.Errorf("migrating to packed: parsing url: %w", err)
	}
	schema := schemaOf(cfg, opts.Schema)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("migrating to packed: connecting: %w", err)
	}
	_, err = conn.Exec(ctx, "UPDATE "+pgx.Identifier{schema, "settings"}.Sanitize()+" SET value = $1 WHERE name = 'layout'", LayoutPacked)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return 0, fmt.Errorf("migrating to packed: switching the layout: %w", err)
	}
	opts.Layout = LayoutPacked
	opts.Schema = schema
	s, err := Open(ctx, url, opts, logger, nil)
	if err != nil {
		return 0, fmt.Errorf("migrating to packed: %w", err)
	}
	defer s.Close()
	return s.migrateLegacy(ctx, batch)
}

// testHookMigrated, when set, is called after each batch MigratePacked
// commits, with the samples it moved (the interruption test).
var testHookMigrated func(n int64)

func (s *Store) migrateLegacy(ctx context.Context, batch int) (int64, error) {
	if err := s.acquire(); err != nil {
		return 0, fmt.Errorf("migrating to packed: %w", err)
	}
	defer s.life.RUnlock()
	var unpartitioned bool
	if err := s.pool.QueryRow(ctx, "SELECT NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'samples'::regclass)").Scan(&unpartitioned); err != nil {
		return 0, fmt.Errorf("migrating to packed: %w", err)
	}
	if unpartitioned {
		return 0, fmt.Errorf("migrating to packed: samples is not natively partitioned (a TimescaleDB hypertable?): not supported")
	}
	// Every legacy series gets its id first: reads join the legacy rows
	// through series.
	if _, err := s.pool.Exec(ctx, `INSERT INTO series (machine, metric)
		SELECT DISTINCT machine, metric FROM samples ORDER BY 1, 2 ON CONFLICT DO NOTHING`); err != nil {
		return 0, fmt.Errorf("migrating to packed: creating series ids: %w", err)
	}
	days, err := listPartitions(ctx, s.pool, samplesTable)
	if err != nil {
		return 0, fmt.Errorf("migrating to packed: %w", err)
	}
	var moved int64
	for _, d := range days {
		n, err := s.migrateDay(ctx, d, batch)
		moved += n
		if err != nil {
			return moved, fmt.Errorf("migrating %s to packed: %w", dayTime(d).Format(time.DateOnly), err)
		}
		s.logger.Info("migrated legacy day", "day", dayTime(d).Format(time.DateOnly), "samples", n)
	}
	if err := s.checkLegacy(ctx); err != nil {
		return moved, err
	}
	if _, err := s.compact(ctx, s.opts.Now()); err != nil {
		return moved, fmt.Errorf("migrating to packed: %w", err)
	}
	return moved, nil
}

// migrateDay moves the legacy rows of day d, batch series per
// transaction, then drops the day's legacy partitions.
func (s *Store) migrateDay(ctx context.Context, d int64, batch int) (int64, error) {
	if err := s.createPartitions(ctx, []int64{d}); err != nil {
		return 0, err
	}
	legacy := pgx.Identifier{partitionName(samplesTable, d)}.Sanitize()
	var moved int64
	for {
		// The next series of the day, in index order (a skip of the
		// index: Unique over an index scan that stops at the limit).
		res, err := s.pool.Query(ctx, "SELECT DISTINCT machine, metric FROM "+legacy+" ORDER BY 1, 2 LIMIT $1", batch)
		if err != nil {
			return moved, err
		}
		var machines, metrics []string
		var m, k string
		if _, err := pgx.ForEachRow(res, []any{&m, &k}, func() error {
			machines, metrics = append(machines, m), append(metrics, k)
			return nil
		}); err != nil {
			return moved, err
		}
		if len(machines) == 0 {
			break
		}
		var n int64
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock_shared(hashtext($1), $2)", s.dayLockClass(), int32(d)); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `
				WITH moved AS (
					DELETE FROM `+legacy+` l USING unnest($1::text[], $2::text[]) AS k(machine, metric)
					WHERE l.machine = k.machine AND l.metric = k.metric
					RETURNING l.time, l.machine, l.metric, l.value
				)
				INSERT INTO sample_head (series_id, time, value)
				SELECT s.id, m.time, m.value FROM moved m JOIN series s USING (machine, metric)
				WHERE NOT EXISTS (
					SELECT 1 FROM sample_chunks c
					WHERE c.series_id = s.id AND c.start = date_bin('1 hour', m.time, timestamptz 'epoch')
						AND c.start >= $3 AND c.start < $4
						AND (extract(epoch FROM m.time - c.start) * 1000)::integer = ANY (c.offsets))
				ON CONFLICT (series_id, time) DO NOTHING`, machines, metrics, dayTime(d), dayTime(d+1))
			n = tag.RowsAffected()
			return err
		})
		if err != nil {
			return moved, err
		}
		moved += n
		if testHookMigrated != nil {
			testHookMigrated(n)
		}
	}
	for _, table := range []string{samplesTable, aggsTable} {
		var exists bool
		if err := s.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{s.schema, partitionName(table, d)}.Sanitize()).Scan(&exists); err != nil {
			return moved, err
		}
		if !exists {
			continue
		}
		if err := s.dropPartition(ctx, table, d); err != nil {
			return moved, err
		}
	}
	_, err := s.pool.Exec(ctx, "INSERT INTO migrated_days (day) VALUES ($1) ON CONFLICT DO NOTHING", int32(d))
	return moved, err
}
