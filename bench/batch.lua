-- wrk script for bench/controller.sh: 1000-sample telemetry batches.
--
-- Every request is a fresh batch of 1000 samples whose seqs no other request
-- uses (per-thread ranges, offset by FA_SEQ_BASE), round-robin over the
-- builds in FA_BUILDS ("id:token,..."). Values vary like a real build's.
--
--   FA_BUILDS=... FA_SEQ_BASE=100000000 wrk -t2 -c8 -d15s --latency \
--     -s bench/batch.lua http://127.0.0.1:PORT

dofile("bench/wrk_builds.lua")
local BATCH = 1000

function init(args)
  -- 100 million seqs (100,000 batches) per thread per run.
  base = load_builds("100000000", 100000000)
  n = 0
end

function request()
  n = n + 1
  local b = builds[(n % #builds) + 1]
  local now = os.time() * 1000
  local first = base + n * BATCH
  local parts = {}
  for k = 1, BATCH do
    local s = first + k
    parts[k] = string.format(
      '{"seq":%.0f,"sampledAt":%.0f,"cpuPercent":%.1f,"memoryMb":%.1f,"intervalS":5}',
      s, now, (s % 4000) / 10, 512 + (s % 8000) / 2)
  end
  local body = '{"snapshots":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", b.path, b.headers, body)
end
