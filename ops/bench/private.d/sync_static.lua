-- sync_static.lua: one fixed POST /v1/sync request (one token, one body),
-- used for both logicd and nginx in the "nothing new" comparison. No
-- request() function: wrk formats the request once and replays the bytes,
-- the cheapest client it has, identical for both servers.
--
-- Environment: BENCH_TOKEN, BENCH_BODY.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

wrk.method = "POST"
wrk.path = "/v1/sync"
wrk.body = os.getenv("BENCH_BODY") or error("BENCH_BODY is not set")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or error("BENCH_TOKEN is not set"))
