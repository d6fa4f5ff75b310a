-- 0004_notice_reach: the reach of each live notice over time (the console's
-- chart, GET /v1/notices/{id}/stats "series").
--
-- The counter itself is a Redis HyperLogLog per notice; the reach sampler
-- of logicd (services/logic/reach.c) copies its value here once per
-- reach_sample_interval_s for every prepublished or published notice. `at`
-- is the start of the sampling interval (unix microseconds), so the key
-- keeps one sample per notice and interval whichever logicd wrote it.
CREATE TABLE notice_reach (
    notice_id bigint NOT NULL REFERENCES notice (notice_id) ON DELETE CASCADE,
    at bigint NOT NULL,
    reach bigint NOT NULL,
    PRIMARY KEY (notice_id, at)
);
-- The sampler deletes samples older than the series a stats reply shows.
CREATE INDEX notice_reach_at ON notice_reach (at);
