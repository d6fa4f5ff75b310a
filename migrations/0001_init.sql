-- 0001_init: private mailboxes, public mailbox, whitelist, per-user notice
-- state, audit log. Applied by `logicd --migrate` in one transaction and
-- recorded in schema_migrations.
--
-- Identifiers: app_id, uid and msg_id are unsigned 64-bit on the wire and
-- stored in bigint with the same 64 bits (values above 2^63 read back as
-- negative in psql; the daemons convert both ways).
--
-- Every private-mailbox table has uid first in its key and is hash
-- partitioned by uid, so it can be spread over nodes (e.g. Citus) later.

-- The per-mailbox header row: its single append point (docs/design.md 3.1).
-- A send locks it (INSERT ... ON CONFLICT DO UPDATE) and takes
-- msg_id = max(now_us, last_msg_id + 1) under that lock, so ids commit in
-- order per mailbox and a cursor can never pass a row that commits later.
CREATE TABLE mailbox (
    uid bigint NOT NULL,
    app_id bigint NOT NULL,
    last_msg_id bigint NOT NULL,
    PRIMARY KEY (uid, app_id)
) PARTITION BY HASH (uid);

-- One row per recipient mailbox. kind 0 = message, 1 = recall (a delete
-- instruction naming recalled_msg_id).
CREATE TABLE message (
    uid bigint NOT NULL,
    app_id bigint NOT NULL,
    msg_id bigint NOT NULL,
    kind smallint NOT NULL DEFAULT 0 CHECK (kind IN (0, 1)),
    from_uid bigint NOT NULL DEFAULT 0,
    to_uid bigint NOT NULL DEFAULT 0,
    contacter bigint NOT NULL DEFAULT 0,
    create_time bigint NOT NULL,
    expire_at bigint NOT NULL,
    is_read boolean NOT NULL DEFAULT false,
    category integer NOT NULL DEFAULT 0,
    type integer NOT NULL DEFAULT 0,
    priority integer NOT NULL DEFAULT 0,
    business_type integer NOT NULL DEFAULT 0,
    msgkey text,
    content bytea NOT NULL DEFAULT ''::bytea,
    recalled_msg_id bigint,
    recalled boolean NOT NULL DEFAULT false,
    PRIMARY KEY (uid, app_id, msg_id)
) PARTITION BY HASH (uid);

-- msgkey: the sender's idempotency key, unique per mailbox when given.
CREATE UNIQUE INDEX message_msgkey ON message (uid, app_id, msgkey) WHERE msgkey IS NOT NULL;
-- The retention job deletes by expiry in bounded batches.
CREATE INDEX message_expire ON message (expire_at);

-- The public mailbox: one row per notice, not per user. seq comes from one
-- sequence and is bumped on every change a user could see, so the table is
-- a change log ordered by seq that each logicd's poller follows.
CREATE SEQUENCE notice_seq;

CREATE TABLE notice (
    notice_id bigserial PRIMARY KEY,
    app_id bigint NOT NULL,
    state text NOT NULL DEFAULT 'draft'
        CHECK (state IN ('draft', 'prepublished', 'published', 'stopped', 'retracted')),
    version integer NOT NULL DEFAULT 1,
    seq bigint NOT NULL DEFAULT 0,
    msg_id bigint NOT NULL DEFAULT 0,
    title text NOT NULL DEFAULT '',
    content bytea NOT NULL DEFAULT ''::bytea,
    category integer NOT NULL DEFAULT 0,
    type integer NOT NULL DEFAULT 0,
    priority integer NOT NULL DEFAULT 0,
    business_type integer NOT NULL DEFAULT 0,
    start_at bigint NOT NULL DEFAULT 0,
    expire_at bigint NOT NULL DEFAULT 0,
    platforms text[] NOT NULL DEFAULT '{}',
    min_core_level bigint NOT NULL DEFAULT 0,
    max_core_level bigint NOT NULL DEFAULT 0,
    login_only boolean NOT NULL DEFAULT false,
    notify_mode text NOT NULL DEFAULT 'none' CHECK (notify_mode IN ('none', 'paced')),
    notify_rate integer NOT NULL DEFAULT 0,
    template boolean NOT NULL DEFAULT false,
    -- start_at has passed and the activation seq was taken (idempotent).
    activated boolean NOT NULL DEFAULT false,
    created_by text NOT NULL,
    created_at bigint NOT NULL,
    updated_by text NOT NULL,
    updated_at bigint NOT NULL
);
CREATE INDEX notice_seq_idx ON notice (seq);
CREATE INDEX notice_app_state ON notice (app_id, state);

-- Gray-release whitelist. whitelist_version is bumped by every change so a
-- poller re-reads the list only when it changed.
CREATE TABLE whitelist (
    app_id bigint NOT NULL,
    uid bigint NOT NULL,
    PRIMARY KEY (app_id, uid)
);
CREATE TABLE whitelist_version (
    id integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO whitelist_version VALUES (1, 0);

-- Written only for users who act on a notice.
CREATE TABLE notice_user_state (
    uid bigint NOT NULL,
    app_id bigint NOT NULL,
    notice_id bigint NOT NULL,
    is_read boolean NOT NULL DEFAULT false,
    hidden boolean NOT NULL DEFAULT false,
    PRIMARY KEY (uid, app_id, notice_id)
) PARTITION BY HASH (uid);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at bigint NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    notice_id bigint,
    app_id bigint,
    body text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_notice ON audit_log (notice_id);

-- 16 hash partitions per private table.
DO $$
DECLARE
    t text;
    i integer;
BEGIN
    FOREACH t IN ARRAY ARRAY['mailbox', 'message', 'notice_user_state'] LOOP
        FOR i IN 0..15 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
                           t || '_p' || i, t, i);
        END LOOP;
    END LOOP;
END
$$;
