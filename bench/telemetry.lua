-- wrk script for bench/controller.sh: single-sample telemetry.
--
-- Every request posts one sample with a seq no other request uses: each
-- wrk thread numbers its requests in its own range, offset by FA_SEQ_BASE so
-- that separate runs never overlap. Requests go round-robin over the builds
-- in FA_BUILDS ("id:token,id:token,..."), each assigned to its own worker.
-- sampledAt is the client's clock (same host as the controller).
--
--   FA_BUILDS=... FA_SEQ_BASE=0 wrk -t2 -c64 -d15s --latency \
--     -s bench/telemetry.lua http://127.0.0.1:PORT

dofile("bench/wrk_builds.lua")
function init(args)
  -- 10 million seqs per thread per run.
  base = load_builds("0", 10000000)
  n = 0
end

function request()
  n = n + 1
  local b = builds[(n % #builds) + 1]
  local body = string.format(
    '{"snapshots":[{"seq":%.0f,"sampledAt":%.0f,"cpuPercent":50,"memoryMb":100,"intervalS":5}]}',
    base + n, os.time() * 1000)
  return wrk.format("POST", b.path, b.headers, body)
end
