-- Release the machine a project holds, atomically.
--
-- Race guarded: a release racing an assign for the same project (or a
-- redelivered release) must neither free a machine twice nor leave the
-- project index pointing at a machine that is being terminated. Also decides,
-- against the same group record, whether the termination may decrement
-- desired capacity without going below MinSize, and records that decrement so
-- a second release before the next refresh sees it.
--
-- KEYS: machines (hash), idle (zset), projects (hash), group (hash), rebalance (string)
-- ARGV: project id, now (epoch s), coalesce ms
-- Returns {"released", record json, decrement 0|1, rebalance 0|1} or {"not_assigned"}
local machines, idle, projects, group, flag = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local project, now, coalesce_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local iid = redis.call('HGET', projects, project)
if not iid then
  return {'not_assigned'}
end
redis.call('HDEL', projects, project)
local raw = redis.call('HGET', machines, iid)
if not raw then
  return {'not_assigned'}
end
local m = cjson.decode(raw)
if m.state ~= 'assigned' or m.project_id ~= project then
  return {'not_assigned'}
end
m.state = 'releasing'
m.since = now
local encoded = cjson.encode(m)
redis.call('HSET', machines, iid, encoded)
redis.call('ZREM', idle, iid)

local decrement = 0
local desired = tonumber(redis.call('HGET', group, 'desired_capacity'))
local min_size = tonumber(redis.call('HGET', group, 'min_size'))
if desired and min_size and desired - 1 >= min_size then
  decrement = 1
  redis.call('HINCRBY', group, 'desired_capacity', -1)
end
local rebalance = 0
if redis.call('SET', flag, '1', 'NX', 'PX', coalesce_ms) then
  rebalance = 1
end
return {'released', encoded, decrement, rebalance}
