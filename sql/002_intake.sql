-- 002_intake.sql - schema version 2: upload slots as leases, the prefix hash
-- of accepted envelopes' receipts, per-batch upload timestamps.
--
-- Applied by `kmdcadm migrate` inside one transaction (see 001_init.sql).

-- KmdcMaxUploadsPerCard: one row per upload slot in use.  A lease names the
-- upload holding it (holder, random) and expires by itself, so a front-end
-- that dies mid-upload frees its slots; the intake renews it while the upload
-- streams and deletes it when the upload ends.  Keyed by the whole serial:
-- two cards never share a slot.  An expired row is free: the next upload of
-- that card that wants the slot takes it over.
CREATE TABLE upload_leases (
    serial     bigint      NOT NULL CHECK (serial > 0),
    slot       int         NOT NULL CHECK (slot >= 0),
    holder     bigint      NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (serial, slot)
);
CREATE INDEX upload_leases_expires_at ON upload_leases (expires_at);

-- The SHA-256 of header || kb_len || keyblock of the envelope a receipt is
-- for, also when envelope_sha256 covers the whole envelope: a retry whose
-- prefix differs is refused as soon as its prefix is read.  NULL in receipts
-- written before this version.
ALTER TABLE receipts ADD COLUMN prefix_sha256 bytea
    CHECK (octet_length(prefix_sha256) = 32);

-- When an upload last received a batch: the orphan purge goes by this, so an
-- upload still streaming is never taken for an orphan.
ALTER TABLE uploads ADD COLUMN touched_at timestamptz NOT NULL DEFAULT now();

-- Ciphertext does not compress: never try.
ALTER TABLE upload_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

INSERT INTO schema_migrations (version, name) VALUES (2, 'intake');
