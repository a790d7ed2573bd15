-- 0003: note and alarm ids come from sequences, so that replicas sharing a
-- schema never give two notes, or two alarms, one id. Ids stay decimal
-- text, as in notes.jsonl and alarms.jsonl.

CREATE SEQUENCE IF NOT EXISTS note_ids;
CREATE SEQUENCE IF NOT EXISTS alarm_ids;

-- Carry on after ids already stored (no version before this one wrote any).
SELECT setval('note_ids', m)
FROM (SELECT max(id::bigint) AS m FROM notes WHERE id ~ '^[0-9]{1,18}$') AS x
WHERE m IS NOT NULL;
SELECT setval('alarm_ids', m)
FROM (SELECT max(id::bigint) AS m FROM alarms WHERE id ~ '^[0-9]{1,18}$') AS x
WHERE m IS NOT NULL;
