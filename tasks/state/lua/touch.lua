-- Renew the lease of the machine a project holds.
--
-- Race guarded: a touch racing the lease-expiry release. Both run against the
-- same record here and in release.lua; whichever runs first wins, and the
-- other sees the outcome (released: not_assigned; renewed: lease_valid).
--
-- KEYS: machines (hash), projects (hash), leases (zset)
-- ARGV: project id, now (epoch s), lease s (0: keep the assignment's own length)
-- Returns {"touched", record json} or {"no_lease", record json} or {"not_assigned"}
local machines, projects, leases = KEYS[1], KEYS[2], KEYS[3]
local project, now, lease_s = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local iid = redis.call('HGET', projects, project)
if not iid then
  return {'not_assigned'}
end
local raw = redis.call('HGET', machines, iid)
if not raw then
  return {'not_assigned'}
end
local m = cjson.decode(raw)
if m.state ~= 'assigned' or m.project_id ~= project then
  return {'not_assigned'}
end
if lease_s <= 0 then
  lease_s = tonumber(m.lease_s) or 0
end
if lease_s <= 0 then
  return {'no_lease', raw}
end
m.lease_s = lease_s
m.lease_expires_at = now + lease_s
local encoded = cjson.encode(m)
redis.call('HSET', machines, iid, encoded)
redis.call('ZADD', leases, m.lease_expires_at, iid)
return {'touched', encoded}
