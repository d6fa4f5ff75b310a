-- 0003_whitelist_fn: whitelist changes as a function that takes the public
-- head lock before it reads anything.
--
-- A single SQL statement reads every table through the snapshot taken when
-- it started, even if it then waits for the head lock: a whitelist change
-- running next to a prepublish could miss the new notice and never give it
-- a seq for the users it adds. In PL/pgSQL each statement takes a fresh
-- snapshot (READ COMMITTED), so after the lock every later statement sees
-- every notice change that held the lock before.
--
-- New seqs go to the app's prepublished notices (so a user just added gets
-- them) and to its published notices whose version went to the whitelist
-- first (gray_seq <> 0, so a user added after the prepublish is not skipped
-- by the gray rule); gray_seq is reset accordingly.
CREATE FUNCTION mbox_whitelist_change(p_app bigint, p_uids bigint[], p_mode text, p_actor text,
                                      p_now bigint, p_body text,
                                      OUT added bigint, OUT removed bigint,
                                      OUT renumbered bigint)
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
BEGIN
    SELECT seq INTO head FROM public_head WHERE id = 1 FOR UPDATE;
    removed := 0;
    added := 0;
    IF p_mode IN ('replace', 'remove') THEN
        DELETE FROM whitelist WHERE app_id = p_app
            AND ((p_mode = 'replace' AND uid <> ALL (p_uids))
                 OR (p_mode = 'remove' AND uid = ANY (p_uids)));
        GET DIAGNOSTICS removed = ROW_COUNT;
    END IF;
    IF p_mode IN ('add', 'replace') THEN
        INSERT INTO whitelist (app_id, uid) SELECT p_app, u FROM unnest(p_uids) AS u
            ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS added = ROW_COUNT;
    END IF;
    UPDATE whitelist_version SET version = version + 1 WHERE id = 1;
    WITH pre AS (
        SELECT notice_id, state, row_number() OVER (ORDER BY notice_id) AS rn FROM notice
        WHERE app_id = p_app AND NOT deleted
          AND (state = 'prepublished' OR (state = 'published' AND gray_seq <> 0)))
    UPDATE notice n SET seq = head + pre.rn,
        gray_seq = CASE WHEN pre.state = 'prepublished' AND n.activated THEN head + pre.rn
                        ELSE 0 END
    FROM pre WHERE n.notice_id = pre.notice_id;
    GET DIAGNOSTICS renumbered = ROW_COUNT;
    UPDATE public_head SET seq = seq + renumbered WHERE id = 1;
    INSERT INTO audit_log (at, actor, action, app_id, body)
        VALUES (p_now, p_actor, 'whitelist_' || p_mode, p_app, p_body);
END
$$;
