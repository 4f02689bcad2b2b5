-- 005_publication_totals.sql - schema version 5: the publication keeps the
-- mailbox totals of its recipients in the UPDATE that advances their chains,
-- instead of a second UPDATE of the same rows by the deliveries' trigger.
--
-- Applied by `kmdcadm migrate` inside one transaction (see 001_init.sql).
--
-- Before: a publication updated each recipient's row (down_next, down_chain),
-- inserted the deliveries, and then deliveries_totals_insert updated the same
-- rows again (queued_count, queued_bytes): two row versions per recipient, a
-- join and an aggregate, all while every other publication to that mailbox
-- waited for the row.  Now the publication's own UPDATE adds each delivery to
-- its recipient's totals and names the message it counted for its
-- transaction: set_config('kmdc.totals_kept', '<message id>', true).  The
-- insert trigger then leaves out the inserted rows of that message only (all
-- of them, on the publication's path, so it updates nothing), and clears the
-- marker, so it covers one INSERT.  A marker that names no message of the
-- INSERT (say 'on', set by mistake for a role or a database) changes nothing.
--
-- Every other change of deliveries (an acknowledgement, `kmdcadm purge`, an
-- operator's SQL, an INSERT without the marker) is kept by the triggers as in
-- version 3.  The module's role may now write the two totals (the grants of
-- ADMIN.md): it could already queue and acknowledge deliveries at will, and it
-- is the one that enforces KmdcMailboxQuota from them.  SCHEMA.md gives the
-- statements that check the totals against a recount and repair them.

CREATE OR REPLACE FUNCTION kmdc_mailbox_totals() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    kept text := '';
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- the rows of the message the publication counted itself, if any;
        -- the marker covers this one statement
        kept := coalesce(current_setting('kmdc.totals_kept', true), '');
        IF kept <> '' THEN
            PERFORM set_config('kmdc.totals_kept', '', true);
            IF NOT EXISTS (SELECT 1 FROM new_rows d WHERE d.message_id::text <> kept) THEN
                RETURN NULL;
            END IF;
        END IF;
        UPDATE cards c SET queued_count = c.queued_count + t.n,
                           queued_bytes = c.queued_bytes + t.b
        FROM (SELECT d.recipient, count(*) AS n,
                     sum(octet_length(d.head)::bigint + m.payload_len) AS b
              FROM new_rows d JOIN messages m ON m.id = d.message_id
              WHERE d.state = 'queued' AND d.message_id::text <> kept
              GROUP BY d.recipient) t
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

-- updated_at stays as it was when the totals are all that changed.  In
-- version 3 this fired whenever the totals changed; a publication now changes
-- the totals together with down_next and down_chain, and that is a change of
-- the card.  Every column but updated_at and the totals is compared.
-- (CREATE OR REPLACE: no ACCESS EXCLUSIVE lock of cards, which every
-- request reads.)  A column added to cards later must be added to both lists.
CREATE OR REPLACE TRIGGER cards_totals_only BEFORE UPDATE ON cards FOR EACH ROW
    WHEN ((NEW.queued_count, NEW.queued_bytes) IS DISTINCT FROM (OLD.queued_count, OLD.queued_bytes)
          AND (NEW.serial, NEW.address, NEW.status, NEW.activation_failures, NEW.locked,
               NEW.access_mac, NEW.access_expires, NEW.up_next, NEW.up_chain, NEW.down_next,
               NEW.down_chain, NEW.auth_key, NEW.key_id, NEW.created_at, NEW.activated_at)
              IS NOT DISTINCT FROM
              (OLD.serial, OLD.address, OLD.status, OLD.activation_failures, OLD.locked,
               OLD.access_mac, OLD.access_expires, OLD.up_next, OLD.up_chain, OLD.down_next,
               OLD.down_chain, OLD.auth_key, OLD.key_id, OLD.created_at, OLD.activated_at))
    EXECUTE FUNCTION kmdc_cards_totals_only();

INSERT INTO schema_migrations (version, name) VALUES (5, 'publication_totals');
