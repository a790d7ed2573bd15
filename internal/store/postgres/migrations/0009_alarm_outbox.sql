-- 0009: the alarm webhook's outbox (internal/alerting): one row per alarm
-- change to deliver, enqueued when the change is journaled, shared by the
-- replicas. Only the oldest undelivered row of an alarm is due (next_at);
-- the ones behind it wait at next_at = 'infinity' until it is settled
-- (enqueue and settle of one alarm are serialised by an advisory lock), so
-- one alarm's changes go out in order and a claim reads only due rows. A
-- replica claims due rows with FOR UPDATE SKIP LOCKED and leases them
-- (next_at = leased_until = the lease's end) while it posts: two replicas
-- never send one row at once. Settled rows (delivered, failed) stay a
-- week for the delivery state the alarms API shows.

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

-- Claims: the due rows.
CREATE INDEX IF NOT EXISTS alarm_outbox_due_idx ON alarm_outbox (next_at, seq)
	WHERE state IN ('pending', 'retrying');
-- The next row of an alarm, and the queue's depth.
CREATE INDEX IF NOT EXISTS alarm_outbox_undelivered_idx ON alarm_outbox (alarm_id, seq)
	WHERE state IN ('pending', 'retrying');
-- The delivery state of listed alarms.
CREATE INDEX IF NOT EXISTS alarm_outbox_alarm_idx ON alarm_outbox (alarm_id, seq);
-- Pruning settled rows.
CREATE INDEX IF NOT EXISTS alarm_outbox_settled_idx ON alarm_outbox (settled_at)
	WHERE settled_at IS NOT NULL;
