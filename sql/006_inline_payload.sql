-- 006_inline_payload.sql - schema version 6: a payload that fits one batch
-- is stored in its message's row, not in an upload.
--
-- Applied by `kmdcadm migrate` inside one transaction (see 001_init.sql).
--
-- Before: a 1 KiB document travelled inside the publication, but as an
-- uploads row and an upload_chunks row (two more rows, their indexes and
-- foreign-key checks per relay, and a DELETE of the upload at the last
-- acknowledgement).  Now the publication writes such a payload into
-- messages.payload, and the message has no upload.  A payload of more than
-- one batch streams into an upload as before.  A message has its payload in
-- at most one of the two places (messages_one_payload).
--
-- The bytes go as they went: when no delivery of the message is queued any
-- more, the acknowledgement that saw the last one (or `kmdcadm purge`, for
-- deliveries that expired) sets payload to NULL.  The module's role needs
-- UPDATE (payload) on messages for that (the grants of ADMIN.md).
--
-- Nothing here rewrites the table: the column is added without a default,
-- its storage is set for new values, and the check is NOT VALID, so that
-- adding it does not read the table under the lock (every row written before
-- this version has a NULL payload; VALIDATE CONSTRAINT may be run later, under
-- a lock that lets reads and writes go on).  The partial index reads the
-- table once.  ADD COLUMN locks messages (ACCESS EXCLUSIVE) until the commit;
-- the lock is waited for at most 10 s (a download in progress holds a lock on
-- messages for as long as it streams), after which the migration stops having
-- changed nothing, to be run again.  docs/ADMIN.md: stop mod_kmdc first.

SET LOCAL lock_timeout = '10s';

ALTER TABLE messages ADD COLUMN payload bytea;

-- Ciphertext does not compress: never try (as upload_chunks.data).
ALTER TABLE messages ALTER COLUMN payload SET STORAGE EXTERNAL;

ALTER TABLE messages ADD CONSTRAINT messages_one_payload
    CHECK (payload IS NULL OR upload_id IS NULL) NOT VALID;

-- `kmdcadm purge` finds the payloads still kept by this index; a message
-- leaves it when its payload goes.
CREATE INDEX messages_with_payload ON messages (id) WHERE payload IS NOT NULL;

INSERT INTO schema_migrations (version, name) VALUES (6, 'inline_payload');
