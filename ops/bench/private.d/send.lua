-- send.lua: durable unicast sends, POST /v1/messages on logicd's internal
-- listener with the server key. Every request goes to a recipient no other
-- request of the run used (BENCH_UID_BASE + thread * 1e8 + n), so each send
-- creates its mailbox header and its message row: the full write path, no
-- row-lock contention between requests.
--
-- Environment: BENCH_SERVER_KEY, BENCH_APP_ID, BENCH_UID_BASE.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local key = os.getenv("BENCH_SERVER_KEY") or error("BENCH_SERVER_KEY is not set")
local app = os.getenv("BENCH_APP_ID") or "1"
local base = tonumber(os.getenv("BENCH_UID_BASE") or "100000000")
local nthreads = 0

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

local headers
local n = 0

function init(args)
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key,
  }
end

function request()
  n = n + 1
  local uid = base + tid * 100000000 + n
  local body = string.format(
    '{"app_id":"%s","from_uid":"7","to_uids":["%d"],"content":"bench unicast %d"}',
    app, uid, n)
  return wrk.format("POST", "/v1/messages", headers, body)
end
