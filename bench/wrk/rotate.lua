-- wrk script of the pod-identity benchmark (bench/run).
--
-- Sends `GET /v1/credentials` with `Host: 127.0.0.1` and the raw token as
-- the `Authorization` header, rotating over the tokens in the file named by
-- $BENCH_TOKENS (one per line). Requests are pre-built per thread so the
-- load generator spends no time formatting them; threads start at different
-- offsets. done() prints one machine-readable line (latencies in µs), which
-- adds p99.9 to wrk's own p50/75/90/99.

local thread_count = 0

function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end

local requests = {}
local n = 0
local i = 0

function init(args)
  local path = os.getenv("BENCH_TOKENS")
  if path == nil then
    error("BENCH_TOKENS is not set")
  end
  for line in io.lines(path) do
    if #line > 0 then
      n = n + 1
      requests[n] = wrk.format("GET", "/v1/credentials",
        { ["Host"] = "127.0.0.1", ["Authorization"] = line })
    end
  end
  if n == 0 then
    error("no tokens in " .. path)
  end
  i = ((thread_id or 0) * 7919) % n
end

function request()
  i = i + 1
  if i > n then
    i = 1
  end
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f non2xx=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout))
end
