-- 001_init.sql - schema version 1 of the KMDC/1 datacenter.
--
-- Applied by `kmdcadm migrate` inside one transaction (the tool sends BEGIN and
-- COMMIT; this file must not).  The last statement records the version, so the
-- file is also correct under `psql -1 -v ON_ERROR_STOP=1 -f 001_init.sql`.
--
-- The constraints below hold the invariants of docs/PROTOCOL.md even against a buggy
-- caller: counters stay in 0 .. 2^63-1 and never go back, one live card per
-- address, unique (recipient, seq) deliveries, unique (serial, seq) receipts,
-- a revoked card stays revoked.  No column ever holds an unwrapped secret.

CREATE TABLE schema_migrations (
    version    int         PRIMARY KEY CHECK (version > 0),
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per card.  Wrapped values (docs/PROTOCOL.md section 8) are
-- u32 key id || 24-byte salt || 32-byte ciphertext || 16-byte tag = 76 bytes.
CREATE TABLE cards (
    serial              bigint      PRIMARY KEY CHECK (serial > 0),
    address             text        NOT NULL
                        CHECK (address ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    status              text        NOT NULL DEFAULT 'issued'
                        CHECK (status IN ('issued', 'active', 'suspended', 'revoked')),
    activation_failures int         NOT NULL DEFAULT 0 CHECK (activation_failures >= 0),
    locked              boolean     NOT NULL DEFAULT false,
    access_mac          bytea       CHECK (octet_length(access_mac) = 32),
    access_expires      timestamptz,
    up_next             bigint      NOT NULL DEFAULT 0 CHECK (up_next >= 0),
    up_chain            bytea       NOT NULL CHECK (octet_length(up_chain) = 76),
    down_next           bigint      NOT NULL DEFAULT 0 CHECK (down_next >= 0),
    down_chain          bytea       NOT NULL CHECK (octet_length(down_chain) = 76),
    auth_key            bytea       NOT NULL CHECK (octet_length(auth_key) = 76),
    key_id              int         NOT NULL CHECK (key_id >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    activated_at        timestamptz,
    -- an issued card has not been activated and has a live access code;
    -- an active card has been activated; the code is gone once activated.
    CONSTRAINT cards_issued_not_activated
        CHECK (status <> 'issued' OR activated_at IS NULL),
    CONSTRAINT cards_issued_has_code
        CHECK (status <> 'issued' OR (access_mac IS NOT NULL AND access_expires IS NOT NULL)),
    CONSTRAINT cards_active_was_activated
        CHECK (status <> 'active' OR activated_at IS NOT NULL),
    CONSTRAINT cards_code_gone_once_activated
        CHECK (activated_at IS NULL OR access_mac IS NULL)
);

-- One live (not revoked) card per address.
CREATE UNIQUE INDEX cards_address_live ON cards (address) WHERE status <> 'revoked';

-- Row guard: serials are immutable, a revoked card stays revoked, counters only
-- move forward (a counter that went back would reuse a key), updated_at is kept.
CREATE FUNCTION kmdc_cards_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.serial <> OLD.serial THEN
        RAISE EXCEPTION 'card serial is immutable'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'cards_serial_immutable';
    END IF;
    IF OLD.status = 'revoked' AND NEW.status <> 'revoked' THEN
        RAISE EXCEPTION 'a revoked card stays revoked'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'cards_revoked_final';
    END IF;
    IF NEW.up_next < OLD.up_next OR NEW.down_next < OLD.down_next THEN
        RAISE EXCEPTION 'card counters never go back'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'cards_counters_forward';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER cards_guard BEFORE UPDATE ON cards
    FOR EACH ROW EXECUTE FUNCTION kmdc_cards_guard();

-- An upload holds the re-encrypted down payload of one message while it is
-- streamed in; it references no card.  Uploads no message points to are
-- orphans (a crash between intake and publish) and are purged.
CREATE TABLE uploads (
    id         bigserial   PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    size       bigint      NOT NULL DEFAULT 0 CHECK (size >= 0),
    dek        bytea
);

-- The payload in batches: each row is a run of whole 65536+16-byte ciphertext
-- chunks (the last row may end with the shorter last chunk).
CREATE TABLE upload_chunks (
    upload_id bigint NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    idx       int    NOT NULL CHECK (idx >= 0),
    data      bytea  NOT NULL,
    PRIMARY KEY (upload_id, idx)
);

CREATE TABLE messages (
    id          bigint      PRIMARY KEY CHECK (id > 0),
    sender      bigint      NOT NULL REFERENCES cards (serial),
    sender_seq  bigint      NOT NULL CHECK (sender_seq >= 0),
    upload_id   bigint      REFERENCES uploads (id) ON DELETE SET NULL,
    size        bigint      NOT NULL CHECK (size >= 0 AND size <= 1099511627776),
    payload_len bigint      NOT NULL CHECK (payload_len >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sender, sender_seq)
);
-- for ON DELETE SET NULL and the orphan purge
CREATE INDEX messages_upload_id ON messages (upload_id);

-- One row per (message, recipient).  head = down header || u32 kb_len ||
-- keyblock; NULL once the delivery is tombstoned (acknowledged or expired).
CREATE TABLE deliveries (
    id         bigserial   PRIMARY KEY,
    message_id bigint      NOT NULL REFERENCES messages (id),
    recipient  bigint      NOT NULL REFERENCES cards (serial),
    seq        bigint      NOT NULL CHECK (seq >= 0),
    head       bytea       CHECK (octet_length(head) >= 40 + 4 + 59),
    state      text        NOT NULL DEFAULT 'queued'
               CHECK (state IN ('queued', 'delivered', 'expired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    acked_at   timestamptz,
    expires_at timestamptz NOT NULL,
    UNIQUE (recipient, seq),
    UNIQUE (message_id, recipient),
    CONSTRAINT deliveries_queued_has_head CHECK (state <> 'queued' OR head IS NOT NULL),
    CONSTRAINT deliveries_delivered_acked CHECK (state <> 'delivered' OR acked_at IS NOT NULL)
);
-- the mailbox listing and the purge of expired deliveries
CREATE INDEX deliveries_mailbox ON deliveries (recipient, state);
CREATE INDEX deliveries_expiry ON deliveries (expires_at) WHERE state = 'queued';

-- One receipt per spent up counter (docs/PROTOCOL.md section 4).  answer is the JSON body given.
CREATE TABLE receipts (
    serial          bigint      NOT NULL REFERENCES cards (serial),
    seq             bigint      NOT NULL CHECK (seq >= 0),
    envelope_sha256 bytea       NOT NULL CHECK (octet_length(envelope_sha256) = 32),
    -- what envelope_sha256 covers: the whole envelope (an accepted upload) or
    -- header || kb_len || keyblock (an upload refused after it authenticated)
    hash_scope      text        NOT NULL DEFAULT 'envelope'
                    CHECK (hash_scope IN ('envelope', 'keyblock')),
    http_status     int         NOT NULL CHECK (http_status BETWEEN 100 AND 599),
    answer          text        NOT NULL,
    message_id      bigint      REFERENCES messages (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (serial, seq)
);
CREATE INDEX receipts_created_at ON receipts (created_at);

-- Request nonces seen (docs/PROTOCOL.md section 5), kept even when the request failed,
-- purged after 600 s.
CREATE TABLE request_nonces (
    serial  bigint      NOT NULL,
    nonce   bytea       NOT NULL CHECK (octet_length(nonce) BETWEEN 1 AND 64),
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (serial, nonce)
);
CREATE INDEX request_nonces_seen_at ON request_nonces (seen_at);

-- Who did what to which card.  detail never holds a secret, a document name
-- or an address.
CREATE TABLE audit_log (
    id     bigserial   PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    serial bigint,
    event  text        NOT NULL CHECK (event <> ''),
    detail jsonb
);
CREATE INDEX audit_log_serial ON audit_log (serial, at);
CREATE INDEX audit_log_at ON audit_log (at);

INSERT INTO schema_migrations (version, name) VALUES (1, 'init');
