-- Adopt assignments made outside warmpool (an older orchestrator's): project -> instance.
--
-- Race guarded: between the operator's look at the pool and this script an
-- assign may have handed one of these machines out, or the project may have
-- been given another; every pair is checked first, in this script, and one
-- bad pair refuses them all (nothing half-applied). A machine is never taken
-- from a project warmpool assigned it to, nor one already being terminated.
--
-- KEYS: machines (hash), idle (zset), projects (hash), events (stream)
-- ARGV: now (epoch s), assigned_at (ISO 8601), event time (ISO 8601), events kept, dry run 0|1,
--       then project id, instance id pairs
-- Returns {"refused", why} or {"adopted"|"would_adopt", record json...} (already adopted pairs included)
local machines, idle, projects, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, assigned_at, at, keep, dry = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local adoptable = {pending = true, idle = true, foreign = true, quarantined = true}

local records = {}
for i = 6, #ARGV, 2 do
  local project, iid = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', machines, iid)
  if not raw then
    return {'refused', iid .. ' is not in the group (as of the last refresh)'}
  end
  local m = cjson.decode(raw)
  local held = redis.call('HGET', projects, project)
  if m.state == 'assigned' then
    if m.project_id ~= project then
      return {'refused', iid .. ' is assigned to another project'}
    end
  elseif not adoptable[m.state] then
    return {'refused', iid .. ' is ' .. m.state .. ': it cannot be adopted'}
  elseif held and held ~= iid then
    return {'refused', 'project ' .. project .. ' already holds ' .. held}
  end
  records[#records + 1] = {project, iid, m}
end
if dry then
  local out = {'would_adopt'}
  for _, r in ipairs(records) do out[#out + 1] = cjson.encode(r[3]) end
  return out
end
local out = {'adopted'}
for _, r in ipairs(records) do
  local project, iid, m = r[1], r[2], r[3]
  if m.state ~= 'assigned' then
    m.state = 'assigned'
    m.project_id = project
    m.assigned_at = assigned_at
    m.since = now
    m.tagged = false
    m.protected = false
    m.detail = 'adopted'
    m.suspect = false
    m.request_id = ''
    m.lease_s = 0
    m.lease_expires_at = 0
    redis.call('HSET', machines, iid, cjson.encode(m))
    redis.call('ZREM', idle, iid)
    redis.call('HSET', projects, project, iid)
    redis.call('XADD', events, 'MAXLEN', '~', keep, '*', 'event', cjson.encode({
      at = at, type = 'adopted', project_id = project, instance_id = iid, reason = 'adopt'}))
  end
  out[#out + 1] = cjson.encode(m)
end
return out
