-- 0001: raw samples, 10 s aggregates, Kafka offsets, store settings.
--
-- Every statement runs with search_path set to the store's schema, in one
-- transaction, under the migration advisory lock. Partitions are not created
-- here: the store creates them ahead and on demand (see partition.go).

-- Raw samples, one row per (machine, metric, time). The time column comes
-- first, as TimescaleDB wants it; the only index is the unique btree on
-- (machine, metric, time DESC): it makes first-write-wins (ON CONFLICT DO
-- NOTHING) and serves every per-series range query. It contains the
-- partition key, as PostgreSQL and TimescaleDB require of a unique index.
CREATE TABLE IF NOT EXISTS samples (
	time    timestamptz      NOT NULL,
	machine text             NOT NULL,
	metric  text             NOT NULL,
	value   double precision NOT NULL
) PARTITION BY RANGE (time);

CREATE UNIQUE INDEX IF NOT EXISTS samples_machine_metric_time_idx
	ON samples (machine, metric, time DESC);

-- Aggregates of the raw samples per window (10 s by default, recorded in
-- settings): always equal to the aggregates of the deduplicated raw rows.
-- min_time and max_time are the earliest times of the minimum and the
-- maximum: min-max downsampling reads whole windows from here.
CREATE TABLE IF NOT EXISTS sample_aggs (
	bucket   timestamptz      NOT NULL,
	machine  text             NOT NULL,
	metric   text             NOT NULL,
	count    bigint           NOT NULL,
	sum      double precision NOT NULL,
	min      double precision NOT NULL,
	max      double precision NOT NULL,
	min_time timestamptz      NOT NULL,
	max_time timestamptz      NOT NULL,
	PRIMARY KEY (machine, metric, bucket)
) PARTITION BY RANGE (bucket);

-- Settings the data depend on (the aggregate window); checked at Open.
CREATE TABLE IF NOT EXISTS settings (
	name  text PRIMARY KEY,
	value text NOT NULL
);

-- Offsets a Kafka processor commits in the same transaction as the samples
-- it consumed (Store.AppendTx): exactly-once from topic to table.
CREATE TABLE IF NOT EXISTS consumer_offsets (
	group_id    text    NOT NULL,
	topic       text    NOT NULL,
	partition   integer NOT NULL,
	next_offset bigint  NOT NULL,
	updated_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (group_id, topic, partition)
);
