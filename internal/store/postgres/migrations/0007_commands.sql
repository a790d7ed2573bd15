-- 0007: commands sent to machines and their lifecycle (internal/control).
-- One row per command: the columns the queries filter and order on, and
-- the whole command (history included) as JSON text in doc. revision
-- counts its transitions: an update applies only over the revision it
-- read (optimistic concurrency between replicas).

CREATE TABLE IF NOT EXISTS commands (
	id              text        PRIMARY KEY,
	machine         text        NOT NULL,
	name            text        NOT NULL,
	state           text        NOT NULL CHECK (state IN ('pending', 'delivered', 'accepted', 'rejected', 'succeeded', 'failed', 'expired')),
	revision        integer     NOT NULL,
	created_at      timestamptz NOT NULL,
	updated_at      timestamptz NOT NULL,
	expires_at      timestamptz NOT NULL,
	-- NULL when the command was created without one.
	idempotency_key text,
	doc             json        NOT NULL
);

-- A machine's commands, newest first (the list and the device's fetch).
CREATE INDEX IF NOT EXISTS commands_machine_idx ON commands (machine, created_at DESC);

-- One command per (machine, idempotency key), as long as it is kept.
CREATE UNIQUE INDEX IF NOT EXISTS commands_idempotency_idx
	ON commands (machine, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The commands still open, for expiry and redelivery.
CREATE INDEX IF NOT EXISTS commands_open_idx
	ON commands (expires_at) WHERE state IN ('pending', 'delivered', 'accepted');

-- The finished ones, for pruning.
CREATE INDEX IF NOT EXISTS commands_finished_idx
	ON commands (updated_at) WHERE state IN ('rejected', 'succeeded', 'failed', 'expired');
