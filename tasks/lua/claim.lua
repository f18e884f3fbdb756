-- Claim idle machines for termination (scale-in), atomically.
--
-- Race guarded: rebalance chose these machines from a read of the state; an
-- assign may have handed one out since. Only machines still idle are claimed,
-- so scale-in can never terminate an assigned machine (DESIGN.md invariant 3).
-- Each claimed machine lowers the recorded desired capacity by one, since it
-- is terminated with ShouldDecrementDesiredCapacity=True.
--
-- KEYS: machines (hash), idle (zset), group (hash)
-- ARGV: now (epoch s), detail, instance ids...
-- Returns the JSON records of the machines claimed.
local machines, idle, group = KEYS[1], KEYS[2], KEYS[3]
local now, detail = tonumber(ARGV[1]), ARGV[2]
local claimed = {}
for i = 3, #ARGV do
  local iid = ARGV[i]
  local raw = redis.call('HGET', machines, iid)
  if raw then
    local m = cjson.decode(raw)
    if m.state == 'idle' then
      m.state = 'releasing'
      m.since = now
      m.detail = detail
      local encoded = cjson.encode(m)
      redis.call('HSET', machines, iid, encoded)
      redis.call('ZREM', idle, iid)
      redis.call('HINCRBY', group, 'desired_capacity', -1)
      claimed[#claimed + 1] = encoded
    end
  end
end
return claimed
