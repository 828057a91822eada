-- sale.lua -- wrk script for the sale bench (tests/bench/README.md).
--
--   wrk -t2 -c64 -d10s --latency -s tests/bench/sale.lua URL -- MODE SKUS NONCE [PENDING]
--
--   MODE     ceiling | hot | spread
--   SKUS     hot, ceiling: the one SKU (default "hot"); spread: how many
--            SKUs (bench-0 .. bench-(SKUS-1)), each request takes the next one
--   NONCE    prefix of the order ids, unique per run
--   PENDING  file that done() writes the unanswered sales into, "SKU ORDER_ID"
--            per line (hot and spread only)
--
-- Every request is POST /sale {"sku":S,"qty":1,"order_id":O} with a unique O,
-- in every mode, so the client does the same work against the ceiling as
-- against nerve. In hot and spread modes each thread keeps the order ids it
-- sent and drops each one whose 200 answer came back; what is left when wrk
-- stops are the sales that were in flight (sent, maybe executed, answer never
-- read), plus the one request wrk builds to check the script and never sends.
-- run.sh replays those with the same order_id -- nerve's idempotency answers
-- either the first result (duplicate) or runs the sale now -- so that "units
-- sold" is exact and can be compared to the stock Redis consumed. Against
-- the plain server (plain.c: no idempotency) run.sh does not replay them:
-- it only counts them, as the most the stock may have lost beyond the 200s.
-- The same script also drives profile.sh's loads.
--
-- done() prints lines starting with "BENCH" that run.sh parses.

local threads = {}
local nthreads = 0

-- Runs in the main Lua state, once per thread, before that thread's init().
function setup(thread)
   thread:set("tid", nthreads)
   nthreads = nthreads + 1
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local mode, nskus, nonce
local prefixes = {}       -- body up to the order id, one per SKU
local skus = {}
local n = 0               -- requests sent by this thread
local cursor = 0          -- next SKU (spread)
local headers = { ["Content-Type"] = "application/json" }
local track = false

-- Globals: done() reads them from each thread's state with thread:get().
codes = {}                -- status -> count
sent = 0                  -- request() calls (thread 0 counts one more than it
                          -- sent: wrk calls request() once to check the script)
sold = 0                  -- sum of qty over the 200s of tracked sales
untracked = 0             -- 200s whose body named no order id of ours
inflight = {}             -- order id -> SKU: sent, no 200 read yet
pending_path = nil        -- PENDING argument

function init(args)
   mode = args[1] or "hot"
   nskus = tonumber(args[2] or "") or 1
   nonce = args[3] or tostring(os.time())
   pending_path = args[4]
   track = (mode ~= "ceiling")
   if mode == "spread" then
      for i = 0, nskus - 1 do
         skus[i + 1] = "bench-" .. i
      end
      -- Threads start at different points of the cycle.
      cursor = (tid * 509) % nskus
   else
      skus[1] = args[2] or "hot"
      nskus = 1
   end
   for i, s in ipairs(skus) do
      prefixes[i] = '{"sku":"' .. s .. '","qty":1,"order_id":"'
   end
end

function request()
   n = n + 1
   sent = n
   local i = cursor + 1
   cursor = cursor + 1
   if cursor >= nskus then cursor = 0 end
   local oid = nonce .. "-" .. tid .. "-" .. n
   if track then inflight[oid] = skus[i] end
   return wrk.format("POST", "/sale", headers, prefixes[i] .. oid .. '"}')
end

function response(status, hdrs, body)
   codes[status] = (codes[status] or 0) + 1
   if status ~= 200 or not track then return end
   local oid = body:match('"order_id"%s*:%s*"([^"]*)"')
   local qty = tonumber(body:match('"qty"%s*:%s*(%d+)') or "")
   if oid and qty and inflight[oid] then
      inflight[oid] = nil
      sold = sold + qty
   else
      untracked = untracked + 1
   end
end

local function ms(us) return string.format("%.3f", us / 1000) end

-- Runs in the main Lua state after every thread stopped.
function done(summary, latency, requests)
   local allcodes, total_sold, total_untracked, pend, path = {}, 0, 0, {}, nil
   local total_sent = 0
   for _, t in ipairs(threads) do
      path = path or t:get("pending_path")
      total_sent = total_sent + (t:get("sent") or 0)
      for code, c in pairs(t:get("codes") or {}) do
         allcodes[code] = (allcodes[code] or 0) + c
      end
      total_sold = total_sold + (t:get("sold") or 0)
      total_untracked = total_untracked + (t:get("untracked") or 0)
      for oid, sku in pairs(t:get("inflight") or {}) do
         pend[#pend + 1] = sku .. " " .. oid
      end
   end
   if path then
      local f = assert(io.open(path, "w"))
      if #pend > 0 then f:write(table.concat(pend, "\n"), "\n") end
      f:close()
   end

   local secs = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_s=%.3f rps=%.1f p50_ms=%s p90_ms=%s p99_ms=%s max_ms=%s\n",
      summary.requests, secs, summary.requests / secs,
      ms(latency:percentile(50)), ms(latency:percentile(90)),
      ms(latency:percentile(99)), ms(latency.max)))

   local keys, non2xx, parts = {}, 0, {}
   for code in pairs(allcodes) do keys[#keys + 1] = code end
   table.sort(keys)
   for _, code in ipairs(keys) do
      parts[#parts + 1] = code .. "=" .. allcodes[code]
      if code < 200 or code > 299 then non2xx = non2xx + allcodes[code] end
   end
   io.write("BENCH_CODES non2xx=" .. non2xx .. " " .. table.concat(parts, " ") .. "\n")
   io.write(string.format(
      "BENCH_ERRORS connect=%d read=%d write=%d timeout=%d\n",
      e.connect, e.read, e.write, e.timeout))
   io.write(string.format("BENCH_SOLD units=%d untracked=%d pending=%d sent=%d\n",
                          total_sold, total_untracked, #pend, total_sent))
end
