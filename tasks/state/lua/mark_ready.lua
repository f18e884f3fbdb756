-- Make machines idle once their readiness check passed.
--
-- Race guarded: between the probe and this script a refresh may have found
-- the instance unhealthy, or gone; only a machine still pending for the sole
-- reason of awaiting its check becomes idle.
--
-- KEYS: machines (hash), idle (zset), events (stream)
-- ARGV: now (epoch s), awaiting detail, event time (ISO 8601), events kept, instance ids...
-- Returns the JSON records of the machines made idle.
local machines, idle = KEYS[1], KEYS[2]
local now, awaiting = tonumber(ARGV[1]), ARGV[2]
local events, at, keep = KEYS[3], ARGV[3], ARGV[4]
local function emit(kind, project, iid, reason)
  -- The event of this transition, in the same atomic step (tasks.pool.events).
  redis.call('XADD', events, 'MAXLEN', '~', keep, '*', 'event', cjson.encode({
    at = at, type = kind, project_id = project or cjson.null, instance_id = iid or cjson.null,
    reason = reason or cjson.null}))
end
local ready = {}
for i = 5, #ARGV do
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
      emit('ready', nil, iid, nil)
      ready[#ready + 1] = encoded
    end
  end
end
return ready
