-- 0006_bucket_fence: what a shard knows of a bucket that is moving
-- (docs/architecture.md, "Moving a bucket").
--
-- Every logicd caches the bucket map and learns of a move only at its next
-- poll, so the map alone cannot keep a stale logicd from writing a
-- mailbox on the shard it is leaving. The shards keep that rule
-- themselves: every statement on private rows calls mbox_fence_write() or
-- mbox_fence_read() for its mailbox(es). logicd answers the errors they
-- raise with 503 + Retry-After (and reloads the map at once on MBF02).

-- state, on the shard that has the row:
--   'copying'  the source while the rows are copied and caught up: reads
--              and writes go on; every write also logs its mailbox in
--              bucket_change, so the mover re-copies only those mailboxes;
--   'moving'   the source during the final catch-up: writes fail (MBF01),
--              reads still see the unchanged rows;
--   'incoming' the target from the first copy until the map names it:
--              writes fail (MBF01);
--   'moved'    a former owner, for good: reads and writes fail (MBF02).
-- No row: this shard may serve the bucket. A shard that never took part
-- in a move has no row at all, and both functions return after one
-- look at the empty table (no hash, no lock).
CREATE TABLE bucket_fence (
    bucket integer PRIMARY KEY CHECK (bucket >= 0 AND bucket < 4096),
    state text NOT NULL CHECK (state IN ('copying', 'moving', 'incoming', 'moved')),
    since timestamptz NOT NULL DEFAULT now()
);

-- The mailboxes written while their bucket is 'copying': one row per
-- writing statement and mailbox (no key, so a writer never waits for the
-- mover's delete of an older row). The mover deletes the rows its snapshot
-- sees and re-copies those mailboxes from the same snapshot; a row it
-- cannot see yet is left for its next pass.
CREATE TABLE bucket_change (
    bucket integer NOT NULL,
    app_id bigint NOT NULL,
    uid bigint NOT NULL
);

-- A writer reads the fence in its own transaction; the mover, after each
-- change of a fence, waits until every transaction that was running on the
-- shard has ended (bucket_move.c, wait_in_flight), so every write that
-- commits later has seen the new state.
-- SQLSTATE MBF01: fenced for a move in progress; MBF02: moved away.
CREATE FUNCTION mbox_fence_write(p_app bigint, p_uid bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
    b integer;
    s text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM bucket_fence) THEN
        RETURN true;
    END IF;
    b := mbox_bucket(p_app, p_uid);
    SELECT state INTO s FROM bucket_fence WHERE bucket = b;
    IF s IS NULL THEN
        RETURN true;
    ELSIF s = 'copying' THEN
        INSERT INTO bucket_change (bucket, app_id, uid) VALUES (b, p_app, p_uid);
        RETURN true;
    ELSIF s = 'moved' THEN
        RAISE EXCEPTION 'bucket % has moved to another shard', b USING ERRCODE = 'MBF02';
    END IF;
    RAISE EXCEPTION 'bucket % is moving', b USING ERRCODE = 'MBF01';
END
$$;

-- Readers: a statement whose snapshot no longer sees the bucket's rows
-- here started after the mover deleted them, which it does only after
-- committing 'moved', so this later read of the fence sees it.
CREATE FUNCTION mbox_fence_read(p_app bigint, p_uid bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
    b integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM bucket_fence WHERE state = 'moved') THEN
        RETURN true;
    END IF;
    b := mbox_bucket(p_app, p_uid);
    IF EXISTS (SELECT 1 FROM bucket_fence WHERE bucket = b AND state = 'moved') THEN
        RAISE EXCEPTION 'bucket % has moved to another shard', b USING ERRCODE = 'MBF02';
    END IF;
    RETURN true;
END
$$;
