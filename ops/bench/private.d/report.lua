-- report.lua: shared by the wrk scripts of ops/bench/private and public. done() prints
-- one machine-readable line the bench script parses (wrk's own report is
-- kept for humans). Latencies are in microseconds inside wrk.
function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH requests=%d seconds=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f " ..
    "p999_ms=%.3f mean_ms=%.3f max_ms=%.3f non2xx=%d connect=%d read=%d write=%d " ..
    "timeout=%d bytes=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    latency.mean / 1000, latency.max / 1000,
    e.status, e.connect, e.read, e.write, e.timeout, summary.bytes))
end
