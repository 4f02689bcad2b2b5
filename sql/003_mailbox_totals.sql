-- 003_mailbox_totals.sql - schema version 3: each card keeps the totals of
-- its mailbox, so that KmdcMailboxQuota reads two numbers of the card's row
-- instead of counting and summing the queued deliveries on every send.
--
-- Applied by `kmdcadm migrate` inside one transaction (see 001_init.sql).

-- The queued deliveries of the card's mailbox: how many, and their bytes as
-- the quota counts them (the delivery's head plus its message's payload).
ALTER TABLE cards
    ADD COLUMN queued_count bigint NOT NULL DEFAULT 0 CHECK (queued_count >= 0),
    ADD COLUMN queued_bytes bigint NOT NULL DEFAULT 0 CHECK (queued_bytes >= 0);

-- A change of the totals alone is not a change of the card: updated_at, set
-- by cards_guard (001_init.sql), goes back to what it was.  Row triggers of
-- one event fire in name order: cards_guard, then this one.
CREATE FUNCTION kmdc_cards_totals_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := OLD.updated_at;
    RETURN NEW;
END
$$;

CREATE TRIGGER cards_totals_only BEFORE UPDATE ON cards FOR EACH ROW
    WHEN (NEW.queued_count <> OLD.queued_count OR NEW.queued_bytes <> OLD.queued_bytes)
    EXECUTE FUNCTION kmdc_cards_totals_only();

-- Kept by the statement triggers below on every change of deliveries,
-- whoever makes it (the module's publication and acknowledgement, `kmdcadm
-- purge`, an operator's SQL): one UPDATE of the cards concerned per
-- statement, inside its transaction.  The publication has locked those rows
-- already; an acknowledgement locks its recipient's row after the delivery's.
-- SECURITY DEFINER: the module's role may not write these columns itself.
CREATE FUNCTION kmdc_mailbox_totals() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE cards c SET queued_count = c.queued_count + t.n,
                           queued_bytes = c.queued_bytes + t.b
        FROM (SELECT d.recipient, count(*) AS n,
                     sum(octet_length(d.head)::bigint + m.payload_len) AS b
              FROM new_rows d JOIN messages m ON m.id = d.message_id
              WHERE d.state = 'queued' GROUP BY d.recipient) t
        WHERE c.serial = t.recipient;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE cards c SET queued_count = c.queued_count + t.n,
                           queued_bytes = c.queued_bytes + t.b
        FROM (SELECT recipient, sum(n) AS n, sum(b) AS b FROM (
                  SELECT d.recipient, 1 AS n,
                         octet_length(d.head)::bigint + m.payload_len AS b
                  FROM new_rows d JOIN messages m ON m.id = d.message_id
                  WHERE d.state = 'queued'
                  UNION ALL
                  SELECT d.recipient, -1, -(octet_length(d.head)::bigint + m.payload_len)
                  FROM old_rows d JOIN messages m ON m.id = d.message_id
                  WHERE d.state = 'queued') x
              GROUP BY recipient) t
        WHERE c.serial = t.recipient AND (t.n <> 0 OR t.b <> 0);
    ELSE
        UPDATE cards c SET queued_count = c.queued_count - t.n,
                           queued_bytes = c.queued_bytes - t.b
        FROM (SELECT d.recipient, count(*) AS n,
                     sum(octet_length(d.head)::bigint + m.payload_len) AS b
              FROM old_rows d JOIN messages m ON m.id = d.message_id
              WHERE d.state = 'queued' GROUP BY d.recipient) t
        WHERE c.serial = t.recipient;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_totals_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kmdc_mailbox_totals();
CREATE TRIGGER deliveries_totals_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kmdc_mailbox_totals();
CREATE TRIGGER deliveries_totals_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kmdc_mailbox_totals();

-- The totals of the deliveries queued now.
UPDATE cards c SET queued_count = t.n, queued_bytes = t.b
FROM (SELECT d.recipient, count(*) AS n,
             sum(octet_length(d.head)::bigint + m.payload_len) AS b
      FROM deliveries d JOIN messages m ON m.id = d.message_id
      WHERE d.state = 'queued' GROUP BY d.recipient) t
WHERE c.serial = t.recipient;

INSERT INTO schema_migrations (version, name) VALUES (3, 'mailbox_totals');
