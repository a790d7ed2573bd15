-- 0005: the control part of a registry entry (internal/twin: desiredSchema,
-- commands, oee), one JSON object read and written with the rest of the
-- entry. Empty for machines that declare none.

ALTER TABLE machines ADD COLUMN IF NOT EXISTS control jsonb NOT NULL DEFAULT '{}';
