-- wrk script for test/bench/run.sh: one fixed POST /v1/chat/completions,
-- sent again on every keep-alive connection, and one parseable result line.
--
-- Environment (read once per wrk thread):
--   BENCH_KEY     bearer key sent as "Authorization: Bearer <key>" (required)
--   BENCH_MODEL   the "model" of the request body (required)
--   BENCH_STREAM  "1" for "stream": true (a full SSE answer per request)
--   BENCH_HEADERS optional extra headers, "Name: value|Name: value" (proof.sh
--                 gives the Portkey gateway its x-portkey-* headers this way)
--
-- The request is static (wrk.method/body/headers, no request() function), so
-- wrk builds it once and the script costs nothing per request. No response()
-- function either: wrk then does not collect headers or bodies.
--
-- done() prints one line that run.sh parses:
--   BENCH requests=N duration_us=N rps=F p50_us=N p90_us=N p99_us=N
--         mean_us=F max_us=N status_errors=N connect_errors=N
--         read_errors=N write_errors=N timeouts=N bytes=N
-- status_errors is wrk's count of responses with a status above 399.

local key = os.getenv("BENCH_KEY")
local model = os.getenv("BENCH_MODEL")
if key == nil or key == "" or model == nil or model == "" then
   io.stderr:write("chat.lua: BENCH_KEY and BENCH_MODEL must be set\n")
   os.exit(2)
end
local stream = os.getenv("BENCH_STREAM") == "1"

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.headers["Content-Type"] = "application/json"
for h in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^|]+") do
   local name, value = string.match(h, "^%s*([^:%s]+)%s*:%s*(.-)%s*$")
   if name == nil then
      io.stderr:write("chat.lua: BENCH_HEADERS: not 'Name: value': " .. h .. "\n")
      os.exit(2)
   end
   wrk.headers[name] = value
end
wrk.body = '{"model":"' .. model .. '",' ..
   (stream and '"stream":true,' or '') ..
   '"messages":[{"role":"system","content":"You are a helpful assistant."},' ..
   '{"role":"user","content":"Hello, how are you today?"}]}'

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d " ..
      "mean_us=%.1f max_us=%d status_errors=%d connect_errors=%d read_errors=%d " ..
      "write_errors=%d timeouts=%d bytes=%d\n",
      summary.requests, summary.duration, summary.requests / secs,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.mean, latency.max, e.status, e.connect, e.read, e.write, e.timeout,
      summary.bytes))
end
