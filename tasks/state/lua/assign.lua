-- Assign an idle machine to a project, atomically.
--
-- Race guarded: two assigns (a second pool worker started by mistake, or a
-- redelivered job running beside the original) must never hand out the same
-- machine, and one project must never end up holding two. Everything from
-- "does the project hold one?" to "mark it assigned" happens in this script.
--
-- Race guarded too: a withdraw (the caller left) landing between a serve's
-- read of the waiters and this assign. The withdrawn check and the grant
-- (the record's request_id) happen here, in one step, so a withdrawn request
-- is never handed a machine, and a machine handed out is always findable by
-- the request that got it.
--
-- KEYS: machines (hash), idle (zset), projects (hash), top_up (string), leases (zset), withdrawn (zset),
--       events (stream), group (hash: only read, whether an operator paused the pool)
-- ARGV: project id, now (epoch s), assigned_at (ISO 8601), idle target, coalesce ms, lease s (0: none),
--       request id ("": none), event time (ISO 8601), events kept (MAXLEN ~)
-- Returns {"existing"|"new", record json, top_up 0|1, paused 0|1}, {"none", "", top_up 0|1} or {"withdrawn", "", 0}
-- (paused: the caller must not tag the machine now; it is tagged after resume)
local machines, idle, projects, flag, leases, withdrawn = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local project, now, assigned_at = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local idle_target, coalesce_ms, lease_s = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local request_id = ARGV[7] or ''
local events, at, keep = KEYS[7], ARGV[8], ARGV[9]
local function paused()
  return (tonumber(redis.call('HGET', KEYS[8], 'paused_at')) or 0) > 0 and 1 or 0
end

local function emit(kind, project, iid, reason)
  -- The event of this transition, in the same atomic step (tasks.pool.events).
  redis.call('XADD', events, 'MAXLEN', '~', keep, '*', 'event', cjson.encode({
    at = at, type = kind, project_id = project or cjson.null, instance_id = iid or cjson.null,
    reason = reason or cjson.null}))
end

if request_id ~= '' and redis.call('ZSCORE', withdrawn, request_id) then
  return {'withdrawn', '', 0}
end

local function want_top_up()
  -- Ask for one top-up per burst: only the first caller after the flag
  -- expired (or was consumed by the top-up job) gets 1.
  if redis.call('ZCARD', idle) < idle_target then
    if redis.call('SET', flag, '1', 'NX', 'PX', coalesce_ms) then
      return 1
    end
  end
  return 0
end

local function set_lease(m, iid)
  if lease_s > 0 then
    m.lease_s = lease_s
    m.lease_expires_at = now + lease_s
    redis.call('ZADD', leases, m.lease_expires_at, iid)
  end
end

local held = redis.call('HGET', projects, project)
if held then
  local raw = redis.call('HGET', machines, held)
  if raw then
    local m = cjson.decode(raw)
    if m.state == 'assigned' and m.project_id == project then
      local changed = false
      if lease_s > 0 then
        -- Asking again proves the caller is alive: renew its lease.
        set_lease(m, held)
        changed = true
      end
      if request_id ~= '' and (m.request_id or '') ~= '' and m.request_id ~= request_id then
        -- A second request was told about this assignment: no single caller
        -- leaving may give it back any more.
        m.request_id = ''
        changed = true
      end
      if changed then
        raw = cjson.encode(m)
        redis.call('HSET', machines, held, raw)
      end
      return {'existing', raw, 0, paused()}
    end
  end
  -- Dangling index entry (record gone or reassigned): repair it.
  redis.call('HDEL', projects, project)
end

while true do
  local popped = redis.call('ZPOPMIN', idle)
  if #popped == 0 then
    -- Any caller that finds the pool empty asks for a scale-up.
    if redis.call('SET', flag, '1', 'NX', 'PX', coalesce_ms) then
      return {'none', '', 1}
    end
    return {'none', '', 0}
  end
  local iid = popped[1]
  local raw = redis.call('HGET', machines, iid)
  if raw then
    local m = cjson.decode(raw)
    if m.state == 'idle' then
      m.state = 'assigned'
      m.project_id = project
      m.assigned_at = assigned_at
      m.since = now
      m.tagged = false
      m.protected = false
      m.lease_s = 0
      m.lease_expires_at = 0
      m.request_id = request_id
      set_lease(m, iid)
      local encoded = cjson.encode(m)
      redis.call('HSET', machines, iid, encoded)
      redis.call('HSET', projects, project, iid)
      emit('assigned', project, iid, nil)
      return {'new', encoded, want_top_up(), paused()}
    end
  end
  -- Stale zset member (machine no longer idle): skip it.
end
