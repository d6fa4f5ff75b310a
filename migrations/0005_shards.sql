-- 0005_shards: private mailboxes spread over several databases by bucket
-- (docs/design.md 3.6).
--
-- `logicd --migrate` applies every migration to every database (the public
-- one and each shard of pg_shards), so each has every table: on a shard the
-- public tables (notice, whitelist, ...) stay empty, and on a public
-- database that is not also a shard the private ones (mailbox, message,
-- notice_user_state) do. With pg_shards empty nothing here is used.

-- The bucket of a mailbox, exactly as services/logic/shard.c computes it:
-- FNV-1a (32 bits) over the little-endian bytes of app_id then uid, folded
-- to 12 bits. bigint holds every intermediate product (a 32-bit value
-- times a 24-bit prime), and >> on a negative bigint keeps the low bytes
-- right. Every private row has (uid, app_id), so its bucket is always
-- mbox_bucket(app_id, uid): a tool moving a bucket selects its rows with it.
CREATE FUNCTION mbox_bucket(p_app bigint, p_uid bigint) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    h bigint := 2166136261;
    v bigint;
BEGIN
    FOR i IN 0..15 LOOP
        v := CASE WHEN i < 8 THEN p_app ELSE p_uid END;
        h := ((h # ((v >> (8 * (i % 8))) & 255)) * 16777619) & 4294967295;
    END LOOP;
    RETURN ((h # (h >> 16)) % 4096)::integer;
END
$$;

-- Every shard's own identity, written once by --migrate: which cluster it
-- belongs to and at which position of pg_shards. A logicd whose pg_shards
-- names the databases in another order, or a database of another cluster,
-- sees it at start and refuses to run.
CREATE TABLE shard_identity (
    id integer PRIMARY KEY CHECK (id = 1),
    cluster_id uuid NOT NULL,
    shard integer NOT NULL CHECK (shard >= 0),
    shard_uuid uuid NOT NULL
);

-- Public database: the cluster the map was made for. version is 0 until
-- --migrate has written the identity of every shard and the whole map, and
-- is bumped by every change of the map (a bucket move).
CREATE TABLE shard_cluster (
    id integer PRIMARY KEY CHECK (id = 1),
    cluster_id uuid NOT NULL,
    nshards integer NOT NULL CHECK (nshards >= 1),
    version bigint NOT NULL DEFAULT 0
);

-- Public database: the shard list the map was made for, one identity per
-- position.
CREATE TABLE shard_list (
    shard integer PRIMARY KEY CHECK (shard >= 0),
    shard_uuid uuid NOT NULL UNIQUE
);

-- Public database: bucket -> shard. state 'moving' is for the bucket mover
-- (docs/architecture.md): writes to a moving bucket wait or fail until it
-- is 'active' again on its new shard; version is the map version that last
-- changed the row.
CREATE TABLE bucket_map (
    bucket integer PRIMARY KEY CHECK (bucket >= 0 AND bucket < 4096),
    shard integer NOT NULL REFERENCES shard_list (shard),
    state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'moving')),
    version bigint NOT NULL
);
