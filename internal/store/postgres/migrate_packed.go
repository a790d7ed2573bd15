package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// MigratePacked moves a store from the rows layout to the packed one, in
// the schema of url (or opts.Schema), and returns how many samples it
// moved. It is what `twinline migrate --packed` runs.
//
// It first checks the store can move (samples natively partitioned) and
// gives every legacy series its id, then switches the store's layout
// setting to packed, all in one transaction: a failed check leaves the
// store as it was. The switch takes the layout lock exclusively, which
// every rows-layout write transaction holds shared while it re-reads the
// setting (fenceRows): once the switch commits, a server still running in
// the rows layout refuses writes (ErrLayoutChanged, nothing acknowledged)
// until it is restarted, and opens the store packed then. A server
// (re)started from then on reads the rows not moved yet from the legacy
// table alongside the packed ones, and checks them for first-write-wins.
// In batches: a transaction moves the rows of batch series of one legacy
// day (deleting them from the legacy table and inserting them into
// sample_head, creating the ids of series written since the switch's
// snapshot), so a sample is always in exactly one of the two. Resumable:
// an interrupted run leaves whole batches moved, and the next run carries
// on with what is left. Each legacy day whose rows are all moved has its
// legacy partitions dropped; compaction then packs it (this run compacts
// the closed days).
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
	err = switchPacked(ctx, conn, schema)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return 0, fmt.Errorf("migrating to packed: %w", err)
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

// ErrLayoutChanged reports a write refused by a store opened in the rows
// layout after MigratePacked switched the store to packed: nothing of it
// is stored; reopen (restart) the store, in the packed layout.
var ErrLayoutChanged = errors.New("the store was moved to the packed layout: restart to open it packed")

// layoutLockKey is the key of the layout lock of the store.
func layoutLockKey(schema string) string { return "twinline.layout." + schema }

// testHookSwitching, when set, is called by switchPacked once the series
// ids exist, before it takes the layout lock (the writer-race test).
var testHookSwitching func()

// switchPacked checks that the store in schema can move to the packed
// layout, creates the ids of its legacy series and switches its layout
// setting, in one transaction.
func switchPacked(ctx context.Context, conn *pgx.Conn, schema string) error {
	q := func(name string) string { return pgx.Identifier{schema, name}.Sanitize() }
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var layout string
		var unpartitioned bool
		if err := tx.QueryRow(ctx, `SELECT coalesce((SELECT value FROM `+q("settings")+` WHERE name = 'layout'), $2),
			NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = $1::regclass)`,
			q(samplesTable), LayoutRows).Scan(&layout, &unpartitioned); err != nil {
			return fmt.Errorf("checking the store: %w", err)
		}
		if layout == LayoutPacked {
			return nil // an earlier run switched it: carry on moving
		}
		if unpartitioned {
			return errors.New("samples is not natively partitioned (a TimescaleDB hypertable?): not supported")
		}
		// Every legacy series gets its id first: reads join the legacy
		// rows through series. Only the missing ones are inserted (an
		// attempted insert uses up an id).
		if _, err := tx.Exec(ctx, `INSERT INTO `+q("series")+` (machine, metric)
			SELECT l.machine, l.metric FROM (SELECT DISTINCT machine, metric FROM `+q(samplesTable)+`) l
			WHERE NOT EXISTS (SELECT 1 FROM `+q("series")+` s WHERE s.machine = l.machine AND s.metric = l.metric)
			ORDER BY 1, 2 ON CONFLICT DO NOTHING`); err != nil {
			return fmt.Errorf("creating series ids: %w", err)
		}
		if testHookSwitching != nil {
			testHookSwitching()
		}
		// Waits for the rows-layout writes in flight; those after it see
		// the new setting and refuse.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", layoutLockKey(schema)); err != nil {
			return fmt.Errorf("taking the layout lock: %w", err)
		}
		if _, err := tx.Exec(ctx, "UPDATE "+q("settings")+" SET value = $1 WHERE name = 'layout'", LayoutPacked); err != nil {
			return fmt.Errorf("switching the layout: %w", err)
		}
		return nil
	})
}

// fenceRows is the first step of a rows-layout write transaction: under
// the layout lock (shared), it refuses the write once MigratePacked has
// switched the store to packed. A packed server would not see the rows
// (nor check first-write-wins against them) once their day is moved.
func (s *Store) fenceRows(ctx context.Context, tx pgx.Tx) error {
	b := &pgx.Batch{}
	b.Queue("SELECT pg_advisory_xact_lock_shared(hashtext($1))", layoutLockKey(s.schema))
	// A statement of its own: its snapshot is taken once the lock is held.
	b.Queue("SELECT coalesce((SELECT value FROM settings WHERE name = 'layout'), $1)", LayoutRows)
	br := tx.SendBatch(ctx, b)
	_, err := br.Exec()
	var layout string
	if err == nil {
		err = br.QueryRow().Scan(&layout)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if layout != LayoutRows {
		return &refusal{ErrLayoutChanged}
	}
	return nil
}

// testHookMigrated, when set, is called after each batch MigratePacked
// commits, with the samples it moved (the interruption test).
var testHookMigrated func(n int64)

func (s *Store) migrateLegacy(ctx context.Context, batch int) (int64, error) {
	if err := s.acquire(); err != nil {
		return 0, fmt.Errorf("migrating to packed: %w", err)
	}
	defer s.life.RUnlock()
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
	if _, err := s.compact(ctx, s.opts.Now(), false); err != nil {
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
	done := map[string]bool{} // the series moved so far
	for {
		// The next series of the day, in index order (a skip of the
		// index: Unique over an index scan that stops at the limit).
		res, err := s.pool.Query(ctx, "SELECT DISTINCT machine, metric FROM "+legacy+" ORDER BY 1, 2 LIMIT $1", batch)
		if err != nil {
			return moved, err
		}
		var machines, metrics []string
		var m, k string
		again := 0
		if _, err := pgx.ForEachRow(res, []any{&m, &k}, func() error {
			machines, metrics = append(machines, m), append(metrics, k)
			if n := seriesName(m, k); done[n] {
				again++
			} else {
				done[n] = true
			}
			return nil
		}); err != nil {
			return moved, err
		}
		if len(machines) == 0 {
			break
		}
		if again == len(machines) {
			// Every series of the batch was moved already: something
			// keeps writing legacy rows (a rows-layout server of a
			// version before the layout fence).
			return moved, errors.New("legacy rows are still being written: stop the servers in the rows layout and run again")
		}
		var n int64
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock_shared(hashtext($1), $2)", s.dayLockClass(), int32(d)); err != nil {
				return err
			}
			// The series written since the layout switch's snapshot
			// get their ids too (only the missing ones are inserted: an
			// attempted insert uses up an id).
			if _, err := tx.Exec(ctx, `
				INSERT INTO series (machine, metric)
				SELECT k.machine, k.metric FROM unnest($1::text[], $2::text[]) AS k(machine, metric)
				WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.machine = k.machine AND s.metric = k.metric)
				ORDER BY 1, 2 ON CONFLICT DO NOTHING`, machines, metrics); err != nil {
				return err
			}
			// A moved row without an id fails the statement (series_id
			// is NOT NULL) rather than being deleted and not inserted.
			tag, err := tx.Exec(ctx, `
				WITH moved AS (
					DELETE FROM `+legacy+` l USING unnest($1::text[], $2::text[]) AS k(machine, metric)
					WHERE l.machine = k.machine AND l.metric = k.metric
					RETURNING l.time, l.machine, l.metric, l.value
				)
				INSERT INTO sample_head (series_id, time, value)
				SELECT s.id, m.time, m.value FROM moved m LEFT JOIN series s USING (machine, metric)
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
