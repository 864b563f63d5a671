-- wrk script of benchmarks/scorer.py: POST /v1/score with pre-generated settlements.
--
--   wrk -t1 -c16 -d10s --latency -s benchmarks/scorer.lua URL -- BODIES KEY MODE
--
-- BODIES: a path prefix; thread i reads BODIES.i.jsonl (one settlement JSON a line, its
-- own slice). MODE "once": each line is sent once (every request a new settlement); when
-- the thread's lines run out it stops and says so ("exhausted"), and the run is void.
-- MODE "cycle": the lines are sent round and round (the parse-only endpoint, which keeps
-- nothing). KEY: the API key (Authorization: Bearer KEY).
--
-- FUNDGUARD_WRK_RATE (environment, settlements/s over all threads; unset or 0: as fast as
-- answered) paces each thread on a fixed schedule through delay(), the way wrk leaves to
-- its scripts (it has no rate of its own). Latency is wrk's own: from writing a request to
-- its answer, without the pacing delay (no correction for coordinated omission).
--
-- done() prints one line, "FUNDGUARD {json}", that benchmarks/scorer.py reads: wrk's
-- latency percentiles (µs), its socket errors, and the threads' own counts: sent, answered
-- 200 by decision, degraded, other statuses (and the first such answer).

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } fundguard_timespec;
int clock_gettime(int clk_id, fundguard_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("fundguard_timespec")
local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local prefix, key = args[1], args[2]
  mode = args[3] or "once"
  headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key }
  file = assert(io.open(prefix .. "." .. index .. ".jsonl", "r"))
  if mode == "cycle" then
    lines = {}
    for line in file:lines() do
      lines[#lines + 1] = line
    end
    file:close()
    assert(#lines > 0, "no bodies")
    at = 0
  end
  sent, answered, failed, degraded, exhausted = 0, 0, 0, 0, 0
  decided = { pass = 0, review = 0, reject = 0 }
  first_failure = ""
  local rate = tonumber(os.getenv("FUNDGUARD_WRK_RATE") or "0")
  if rate > 0 then
    interval = 1000 * tonumber(args[4] or "1") / rate -- ms between two sends of this thread
    due = now_ms()
  end
end

function request()
  local line
  if mode == "cycle" then
    at = at % #lines + 1
    line = lines[at]
  else
    line = file:read("*l")
  end
  if line == nil then
    exhausted = 1
    wrk.thread:stop()
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  return wrk.format("POST", "/v1/score", headers, line)
end

function response(status, _, body)
  if status == 200 then
    answered = answered + 1
    local decision = body:match('"decision":"(%a+)"')
    if decision ~= nil and decided[decision] ~= nil then
      decided[decision] = decided[decision] + 1
    end
    if body:find('"degraded":true', 1, true) then
      degraded = degraded + 1
    end
  elseif status ~= nil then
    failed = failed + 1
    if first_failure == "" then
      first_failure = status .. " " .. body:sub(1, 200)
    end
  end
end

if tonumber(os.getenv("FUNDGUARD_WRK_RATE") or "0") > 0 then
  function delay()
    local now = now_ms()
    if due < now - 1000 then
      due = now -- more than a second behind: do not burst to catch up
    end
    due = due + interval
    local wait = due - now
    if wait < 0 then
      return 0
    end
    return wait
  end
end

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

function done(summary, latency, _)
  local total = {
    sent = 0, answered = 0, failed = 0, degraded = 0, exhausted = 0,
    pass = 0, review = 0, reject = 0,
  }
  local failure = ""
  for _, thread in ipairs(threads) do
    for _, name in ipairs({ "sent", "answered", "failed", "degraded", "exhausted" }) do
      total[name] = total[name] + thread:get(name)
    end
    local counts = thread:get("decided")
    for _, name in ipairs({ "pass", "review", "reject" }) do
      total[name] = total[name] + counts[name]
    end
    if failure == "" then
      failure = thread:get("first_failure")
    end
  end
  local e = summary.errors
  io.write(string.format(
    'FUNDGUARD {"duration_us":%d,"responses":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
      .. '"timeouts":%d,"sent":%d,"answered":%d,"failed":%d,"degraded":%d,"exhausted":%d,'
      .. '"pass":%d,"review":%d,"reject":%d,"first_failure":%s}\n',
    summary.duration, summary.requests, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout,
    total.sent, total.answered, total.failed, total.degraded, total.exhausted,
    total.pass, total.review, total.reject, quote(failure)
  ))
end
