-- Take machines out of quarantine on an operator's word: they go back to
-- pending (no longer suspect), and the next refresh makes them idle if ready.
--
-- Race guarded: between the operator's look at the pool and this script the
-- machine's tag may have landed (a refresh restored it as assigned) or it may
-- have left the group; only a machine still quarantined is touched, so an
-- assignment proven meanwhile is never undone.
--
-- KEYS: machines (hash)
-- ARGV: now (epoch s), detail, then instance ids, or the single argument "*" for every quarantined machine
-- Returns the JSON records of the machines released.
local machines = KEYS[1]
local now, detail = tonumber(ARGV[1]), ARGV[2]
local ids = {}
if ARGV[3] == '*' then
  local all = redis.call('HKEYS', machines)
  for i = 1, #all do ids[#ids + 1] = all[i] end
else
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local released = {}
for _, iid in ipairs(ids) do
  local raw = redis.call('HGET', machines, iid)
  if raw then
    local m = cjson.decode(raw)
    if m.state == 'quarantined' then
      m.state = 'pending'
      m.since = now
      m.detail = detail
      m.suspect = false
      local encoded = cjson.encode(m)
      redis.call('HSET', machines, iid, encoded)
      released[#released + 1] = encoded
    end
  end
end
return released
