-- 004_mailbox_watchers.sql - schema version 4: the mailboxes someone is
-- long-polling, so that a change of a mailbox sends its NOTIFY only when a
-- long-poll may be waiting for it.
--
-- Applied by `kmdcadm migrate` inside one transaction (see 001_init.sql).

-- A long-poll (GET /mailbox/{serial}?wait=S with a matching If-None-Match)
-- records its mailbox here, committed before it reads the mailbox, until its
-- deadline and a margin.  A publication or an acknowledgement, after its
-- COMMIT, sends NOTIFY kmdc_mailbox for the serials of its mailboxes that
-- have a row here whose `until` is still ahead: a mailbox nobody watches
-- costs no NOTIFY (which wakes every listening connection of the database)
-- and no second transaction.  At most one row per card, rewritten by each
-- long-poll (upsert); a row whose `until` has passed means nothing and
-- needs no purge.  UNLOGGED: the rows are worth less than their WAL; after a crash or
-- on a promoted standby the table is empty, and a long-poll that waited
-- across that answers at its deadline instead of at once.
CREATE UNLOGGED TABLE mailbox_watchers (
    serial bigint      PRIMARY KEY CHECK (serial > 0),
    until  timestamptz NOT NULL
);

INSERT INTO schema_migrations (version, name) VALUES (4, 'mailbox_watchers');
