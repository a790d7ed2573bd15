-- 0009: the alarm webhook's outbox (internal/alerting): one row per alarm
-- change to deliver, enqueued when the change is journaled, shared by the
-- replicas. A replica claims the oldest undelivered row of each alarm with
-- FOR UPDATE SKIP LOCKED and leases it (leased_until) while it posts, so
-- two replicas never send one row at once and one alarm's changes go out
-- in order. Settled rows (delivered, failed) stay a week for the delivery
-- state the alarms API shows.

CREATE TABLE IF NOT EXISTS alarm_outbox (
	seq          bigserial   PRIMARY KEY,
	delivery_id  text        NOT NULL UNIQUE,
	alarm_id     text        NOT NULL,
	-- The JSON body as signed: kept byte for byte.
	body         text        NOT NULL,
	created_at   timestamptz NOT NULL,
	state        text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'retrying', 'delivered', 'failed')),
	attempts     integer     NOT NULL DEFAULT 0,
	next_at      timestamptz NOT NULL,
	leased_until timestamptz,
	last_error   text        NOT NULL DEFAULT '',
	settled_at   timestamptz
);

-- Claims and the queue's depth: the undelivered rows, per alarm in order.
CREATE INDEX IF NOT EXISTS alarm_outbox_undelivered_idx ON alarm_outbox (alarm_id, seq)
	WHERE state IN ('pending', 'retrying');
-- The delivery state of listed alarms.
CREATE INDEX IF NOT EXISTS alarm_outbox_alarm_idx ON alarm_outbox (alarm_id, seq);
-- Pruning settled rows.
CREATE INDEX IF NOT EXISTS alarm_outbox_settled_idx ON alarm_outbox (settled_at)
	WHERE settled_at IS NOT NULL;
