-- 0002_public_head: the public mailbox's single append point, and soft
-- deletion of notices.
--
-- Why not nextval('notice_seq'), the sequence 0001 created (docs/design.md
-- 3.2)? Sequence values are handed out at nextval time but become
-- visible at commit time, in any order: a notice that took seq 10 can
-- commit after one that took seq 11. A poller that has read up to 11 then
-- never sees 10, and every logicd would miss that notice for good. Taking
-- seq from this one row under its row lock (as private mailboxes take
-- msg_id from their header row) makes seq commit in order: when a poller
-- sees seq S, every smaller seq is already committed. Notice changes are
-- rare operator actions, so serialising them costs nothing.
CREATE TABLE public_head (
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO public_head VALUES (1, 0);
DROP SEQUENCE notice_seq;

-- A deleted notice keeps its row (the audit log names it) and takes a new
-- seq, so every poller learns to drop it from its cache.
ALTER TABLE notice ADD COLUMN deleted boolean NOT NULL DEFAULT false;

-- gray_seq: the seq at which the current version reached the whitelist
-- (prepublish, or an edit while prepublished); 0 once an edit of the
-- published notice makes a version the whitelist has not seen. A publish
-- that follows a prepublish does not deliver the same version again to a
-- whitelisted user whose cursor is already past gray_seq.
ALTER TABLE notice ADD COLUMN gray_seq bigint NOT NULL DEFAULT 0;
