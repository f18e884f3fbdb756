-- Release the machine a project holds, atomically.
--
-- Race guarded: a release racing an assign for the same project (or a
-- redelivered release) must neither free a machine twice nor leave the
-- project index pointing at a machine that is being terminated. Also decides,
-- against the same group record, whether the termination may decrement
-- desired capacity without going below MinSize, and records that decrement so
-- a second release before the next refresh sees it. In lease mode it releases
-- only if the lease is still expired: a touch that renewed it in between wins.
-- In withdraw mode it releases only the assignment that request made: never a
-- machine the project held before, nor one another request was told about.
--
-- KEYS: machines (hash), idle (zset), projects (hash), group (hash), top_up (string), leases (zset),
--       events (stream)
-- ARGV: project id, now (epoch s), coalesce ms, lease expired before (epoch s; "" = plain release),
--       granted to request id ("" = any), event time (ISO 8601), events kept (MAXLEN ~),
--       reason of the event (release, withdrawn, force_release)
-- Returns {"released", record json, decrement 0|1, top_up 0|1, paused 0|1} or {"not_assigned"} or {"lease_valid"}
-- (paused: an operator paused the pool; the caller defers the termination until resume)
--   or {"not_granted"}
local machines, idle, projects, group, flag, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local project, now, coalesce_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local expired_before = tonumber(ARGV[4])
local granted_to = ARGV[5] or ''
local events, at, keep, reason = KEYS[7], ARGV[6], ARGV[7], ARGV[8]

local function emit(kind, project, iid, reason)
  -- The event of this transition, in the same atomic step (tasks.pool.events).
  redis.call('XADD', events, 'MAXLEN', '~', keep, '*', 'event', cjson.encode({
    at = at, type = kind, project_id = project or cjson.null, instance_id = iid or cjson.null,
    reason = reason or cjson.null}))
end

local iid = redis.call('HGET', projects, project)
if not iid then
  return {'not_assigned'}
end
local raw = redis.call('HGET', machines, iid)
if not raw then
  redis.call('HDEL', projects, project)
  return {'not_assigned'}
end
local m = cjson.decode(raw)
if m.state ~= 'assigned' or m.project_id ~= project then
  redis.call('HDEL', projects, project)
  return {'not_assigned'}
end
if granted_to ~= '' and (m.request_id or '') ~= granted_to then
  return {'not_granted'}
end
if expired_before then
  local expires = tonumber(m.lease_expires_at) or 0
  if expires <= 0 or expires > expired_before then
    return {'lease_valid'}
  end
end
redis.call('HDEL', projects, project)
redis.call('ZREM', leases, iid)
m.state = 'releasing'
m.since = now
if expired_before then
  m.detail = 'lease expired'
end
local encoded = cjson.encode(m)
redis.call('HSET', machines, iid, encoded)
redis.call('ZREM', idle, iid)
if expired_before then
  emit('lease_expired', project, iid, 'lease_expired')
else
  emit('released', project, iid, reason)
end

local decrement = 0
local desired = tonumber(redis.call('HGET', group, 'desired_capacity'))
local min_size = tonumber(redis.call('HGET', group, 'min_size'))
if desired and min_size and desired - 1 >= min_size then
  decrement = 1
  redis.call('HINCRBY', group, 'desired_capacity', -1)
end
local top_up = 0
if redis.call('SET', flag, '1', 'NX', 'PX', coalesce_ms) then
  top_up = 1
end
local paused = (tonumber(redis.call('HGET', group, 'paused_at')) or 0) > 0 and 1 or 0
return {'released', encoded, decrement, top_up, paused}
