-- report.lua — wrk's done() hook for the shop benchmark: one line a run that shop.sh reads,
-- in the same form as the OpenResty peer's wrk scripts print (so both parse alike).
function done(summary, latency)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d rps=%.1f p50_ms=%.3f p99_ms=%.3f non2xx=%d errors=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
