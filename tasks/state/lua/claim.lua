-- Claim machines for termination, atomically: scale-in (idle ones) or
-- replacement of machines that never became ready (pending ones).
--
-- Race guarded: rebalance chose these machines from a read of the state; an
-- assign may have handed one out since. Only machines still in the expected
-- state are claimed, so this can never terminate an assigned machine
-- (docs/design.md invariant 3). With decrement, each claimed machine lowers the
-- recorded desired capacity by one (ShouldDecrementDesiredCapacity=True).
--
-- KEYS: machines (hash), idle (zset), group (hash), events (stream)
-- ARGV: now (epoch s), detail, expected state, decrement 0|1, event time (ISO 8601), events kept,
--       reason of the terminated events (surplus, unready, recycle), instance ids...
-- Returns the JSON records of the machines claimed.
local machines, idle, group = KEYS[1], KEYS[2], KEYS[3]
local now, detail, expected, decrement = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4] == '1'
local events, at, keep, reason = KEYS[4], ARGV[5], ARGV[6], ARGV[7]
local function emit(kind, project, iid, reason)
  -- The event of this transition, in the same atomic step (tasks.pool.events).
  redis.call('XADD', events, 'MAXLEN', '~', keep, '*', 'event', cjson.encode({
    at = at, type = kind, project_id = project or cjson.null, instance_id = iid or cjson.null,
    reason = reason or cjson.null}))
end
local claimed = {}
for i = 8, #ARGV do
  local iid = ARGV[i]
  local raw = redis.call('HGET', machines, iid)
  if raw then
    local m = cjson.decode(raw)
    if m.state == expected and expected ~= 'assigned' then
      m.state = 'releasing'
      m.since = now
      m.detail = detail
      local encoded = cjson.encode(m)
      redis.call('HSET', machines, iid, encoded)
      redis.call('ZREM', idle, iid)
      if decrement then
        redis.call('HINCRBY', group, 'desired_capacity', -1)
      end
      emit('terminated', m.project_id, iid, reason)
      claimed[#claimed + 1] = encoded
    end
  end
end
return claimed
