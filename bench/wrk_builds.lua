-- Shared by bench/telemetry.lua and bench/batch.lua (loaded with dofile from
-- the repository's root, where bench/controller.sh runs wrk).
--
-- setup() numbers wrk's threads (`tid` in each thread); load_builds() reads
-- FA_BUILDS ("id:token,id:token,...") into `builds`, each entry the path and
-- headers of a telemetry request for that build, and returns the first seq
-- of this thread: FA_SEQ_BASE (or `default_base`) + tid * `span`, so that
-- threads and separate runs never share a seq.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function load_builds(default_base, span)
  builds = {}
  for id, token in string.gmatch(os.getenv("FA_BUILDS") or "", "(%d+):(%x+)") do
    builds[#builds + 1] = {
      path = "/api/builds/" .. id .. "/telemetry",
      headers = {
        ["Authorization"] = "Bearer " .. token,
        ["Content-Type"] = "application/json",
      },
    }
  end
  assert(#builds > 0, "FA_BUILDS names no build")
  return tonumber(os.getenv("FA_SEQ_BASE") or default_base) + tid * span
end
