-- 0006: the twins' desired and reported documents (internal/control.Twins).
-- One row per machine; version and reported_version count the changes of
-- each document and make every update optimistic (WHERE version = old).
-- metadata is {"desired": {...}, "reported": {...}}: when each field last
-- changed (Unix ms leaves {"updatedAt": N}).

CREATE TABLE IF NOT EXISTS twin_docs (
	machine          text        PRIMARY KEY,
	desired          jsonb       NOT NULL DEFAULT '{}',
	reported         jsonb       NOT NULL DEFAULT '{}',
	metadata         jsonb       NOT NULL DEFAULT '{}',
	version          bigint      NOT NULL DEFAULT 0,
	reported_version bigint      NOT NULL DEFAULT 0,
	updated_at       timestamptz NOT NULL DEFAULT now()
);
