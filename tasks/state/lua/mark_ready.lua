-- Make machines idle once their readiness check passed.
--
-- Race guarded: between the probe and this script a refresh may have found
-- the instance unhealthy, or gone; only a machine still pending for the sole
-- reason of awaiting its check becomes idle.
--
-- KEYS: machines (hash), idle (zset)
-- ARGV: now (epoch s), awaiting detail, instance ids...
-- Returns the JSON records of the machines made idle.
local machines, idle = KEYS[1], KEYS[2]
local now, awaiting = tonumber(ARGV[1]), ARGV[2]
local ready = {}
for i = 3, #ARGV do
  local iid = ARGV[i]
  local raw = redis.call('HGET', machines, iid)
  if raw then
    local m = cjson.decode(raw)
    if m.state == 'pending' and m.detail == awaiting then
      m.state = 'idle'
      m.since = now
      m.detail = ''
      m.ready_checked = true
      local encoded = cjson.encode(m)
      redis.call('HSET', machines, iid, encoded)
      redis.call('ZADD', idle, math.floor(now * 1000), iid)
      ready[#ready + 1] = encoded
    end
  end
end
return ready
