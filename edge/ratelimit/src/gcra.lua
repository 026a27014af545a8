-- The GCRA step for every key of one rate-limit request, atomically, on Redis' own clock (one
-- clock for the whole fleet). All or nothing: when any key is over its limit, none is spent.
--
-- KEYS[i]: one key per limit. ARGV, three per key: emission interval (µs), window (µs, the
-- emission interval times the burst), cost (requests this one counts as).
-- Returns Redis' now (µs), then four numbers per key: allowed (1/0), remaining, µs until the
-- key is back to a full burst, µs until a refused request would be allowed (0 when allowed).
-- Times are integer microseconds: at today's epoch they stay far below 2^53, so Lua's doubles
-- hold them exactly.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local out = { now }
local writes = {}
local all_allowed = true
for i, key in ipairs(KEYS) do
  local emission = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key)) or 0
  if tat < now then tat = now end
  -- Nothing is stored further ahead than a spent burst, so a TAT beyond that means the clock
  -- stepped back (a failover to a replica with another clock): cut it to a spent burst.
  if tat > now + window then tat = now + window end
  local next = tat + emission * cost
  local allowed_from = next - window
  if now >= allowed_from then
    out[#out + 1] = 1
    out[#out + 1] = math.floor((window - (next - now)) / emission)
    out[#out + 1] = next - now
    out[#out + 1] = 0
    writes[#writes + 1] = { key, next }
  else
    all_allowed = false
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = tat - now
    out[#out + 1] = allowed_from - now
  end
end
if all_allowed then
  for _, write in ipairs(writes) do
    -- Kept exactly as long as the key carries debt: after that it is a fresh key again.
    local ttl_ms = math.ceil((write[2] - now) / 1000)
    redis.call('SET', write[1], string.format('%.0f', write[2]), 'PX', math.max(ttl_ms, 1))
  end
end
return out
