-- 0004: API tokens and the audit log (internal/auth).
--
-- Tokens keep only the SHA-256 of their secret. A token's name and id stay
-- taken while its row is kept, revoked or not; TokenStore.Delete removes the
-- rows revoked or expired long enough ago. owner is the name a token's
-- identity acts as (a session's user), kind marks dashboard sessions.

CREATE TABLE IF NOT EXISTS tokens (
	id         text        PRIMARY KEY,
	name       text        NOT NULL UNIQUE,
	scopes     integer     NOT NULL,
	sites      text[]      NOT NULL DEFAULT '{}',
	hash       bytea       NOT NULL,
	created    timestamptz NOT NULL,
	expires    timestamptz,
	last_used  timestamptz,
	revoked    timestamptz,
	parent     text        NOT NULL DEFAULT '',
	owner      text        NOT NULL DEFAULT '',
	kind       text        NOT NULL DEFAULT '',
	created_by text        NOT NULL DEFAULT ''
);

-- The sessions of a token, revoked with it.
CREATE INDEX IF NOT EXISTS tokens_parent_idx ON tokens (parent) WHERE parent <> '';

-- Operate and admin actions, newest first by (at, id).
CREATE TABLE IF NOT EXISTS audit (
	id         bigserial   PRIMARY KEY,
	at         timestamptz NOT NULL,
	actor      text        NOT NULL DEFAULT '',
	actor_kind text        NOT NULL DEFAULT '',
	action     text        NOT NULL DEFAULT '',
	machine    text        NOT NULL DEFAULT '',
	target     text        NOT NULL DEFAULT '',
	remote     text        NOT NULL DEFAULT '',
	outcome    text        NOT NULL DEFAULT '',
	detail     jsonb
);

CREATE INDEX IF NOT EXISTS audit_at_idx ON audit (at);
CREATE INDEX IF NOT EXISTS audit_actor_at_idx ON audit (actor, at);
CREATE INDEX IF NOT EXISTS audit_machine_at_idx ON audit (machine, at);
