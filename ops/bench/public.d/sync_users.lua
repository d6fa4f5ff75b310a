-- sync_users.lua: POST /v1/sync cycling over many users' tokens with one
-- body for all (BENCH_BODY, e.g. {"cursor":"<C0>","limit":100}: the users
-- have empty private mailboxes, so one cursor fits them all). Requests are
-- formatted once in init(); request() only picks the next one, so wrk
-- spends its (shared) CPU on the network, not on Lua.
--
-- Environment: BENCH_TOKENS_FILE (one token a line), BENCH_BODY.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "../private.d/report.lua") -- the BENCH line ops/bench/lib.sh parses

local file = os.getenv("BENCH_TOKENS_FILE") or error("BENCH_TOKENS_FILE is not set")
local body = os.getenv("BENCH_BODY") or error("BENCH_BODY is not set")
local nthreads = 0

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

local reqs = {}
local i = 0

function init(args)
  for tok in io.lines(file) do
    if tok ~= "" then
      reqs[#reqs + 1] = wrk.format("POST", "/v1/sync", {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. tok,
      }, body)
    end
  end
  if #reqs == 0 then error("no tokens in " .. file) end
  -- threads start at different users
  i = (tid * math.floor(#reqs / 2 + 1)) % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
