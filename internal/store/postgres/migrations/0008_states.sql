-- 0008: state series (string fields of events: "state", "mode"), as their
-- changes only (store.StateStore). The primary key serves both the
-- idempotent append (ON CONFLICT DO NOTHING: first write wins) and the
-- range query with the change in force at its start.

CREATE TABLE IF NOT EXISTS state_changes (
	machine text        NOT NULL,
	name    text        NOT NULL,
	ts      timestamptz NOT NULL,
	value   text        NOT NULL,
	PRIMARY KEY (machine, name, ts)
);
