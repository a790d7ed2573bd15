-- 0002: machine registry, alarms, alarm journal and notes.
--
-- Schema only for now: the Go code of the registry, alarms and notes is in
-- internal/twin and keeps its files until it moves onto these tables.

CREATE TABLE IF NOT EXISTS machines (
	id          text        PRIMARY KEY,
	name        text        NOT NULL DEFAULT '',
	site        text        NOT NULL DEFAULT '',
	line        text        NOT NULL DEFAULT '',
	thresholds  jsonb       NOT NULL DEFAULT '{}',
	attributes  jsonb       NOT NULL DEFAULT '{}',
	created_at  timestamptz NOT NULL DEFAULT now(),
	updated_at  timestamptz NOT NULL DEFAULT now(),
	-- Set when a machine is retired; its history stays.
	retired_at  timestamptz
);

-- Serves the fleet filter "active machines whose attributes contain …":
--   SELECT id FROM machines
--   WHERE retired_at IS NULL AND attributes @> '{"vendor":"acme"}'
-- Only active machines are indexed (retired ones are never filtered on).
CREATE INDEX IF NOT EXISTS machines_active_attributes_idx
	ON machines USING gin (attributes jsonb_path_ops)
	WHERE retired_at IS NULL;

CREATE TABLE IF NOT EXISTS alarms (
	id               text             PRIMARY KEY,
	machine          text             NOT NULL,
	metric           text             NOT NULL DEFAULT '',
	kind             text             NOT NULL CHECK (kind IN ('high', 'low', 'offline')),
	limit_value      double precision,
	value            double precision,
	state            text             NOT NULL CHECK (state IN ('active', 'cleared')),
	raised_at        timestamptz      NOT NULL,
	cleared_at       timestamptz,
	acknowledged_at  timestamptz,
	acknowledged_by  text             NOT NULL DEFAULT '',
	acknowledge_note text             NOT NULL DEFAULT ''
);

-- The open alarms of a machine, the hot query of the alarm list.
CREATE INDEX IF NOT EXISTS alarms_active_machine_idx
	ON alarms (machine, raised_at DESC) WHERE state = 'active';

-- Append-only history of alarm transitions (raise, clear, ack).
CREATE TABLE IF NOT EXISTS alarm_journal (
	seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at       timestamptz NOT NULL,
	op       text        NOT NULL CHECK (op IN ('raise', 'clear', 'ack')),
	alarm_id text        NOT NULL,
	by_user  text        NOT NULL DEFAULT '',
	alarm    jsonb       NOT NULL
);

CREATE INDEX IF NOT EXISTS alarm_journal_alarm_idx ON alarm_journal (alarm_id, seq);

CREATE TABLE IF NOT EXISTS notes (
	id      text        PRIMARY KEY,
	machine text        NOT NULL,
	time    timestamptz NOT NULL,
	author  text        NOT NULL DEFAULT '',
	text    text        NOT NULL
);

CREATE INDEX IF NOT EXISTS notes_machine_time_idx ON notes (machine, time DESC);
