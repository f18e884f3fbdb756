-- Withdraw a caller's request (it left): forget it, and take its place in the queue back.
--
-- Race guarded: this request's assign job (reordered, or redelivered after a
-- worker died) or a serve of its waiter may run after this script. Remembering
-- the request id as withdrawn, in the same step that removes its waiter, makes
-- assign.lua and add_waiter.lua refuse it from now on; so once this script ran
-- nothing can hand this request a machine, and the release that follows
-- (release.lua in withdraw mode) sees the final state.
--
-- KEYS: waiters (zset), waiter_data (hash), withdrawn (zset)
-- ARGV: request id, project id, now (epoch s), remember until (epoch s)
-- Returns 1 if its waiter was removed, 0 if it was not waiting, -1 if that request waits for another project
local waiters, data, withdrawn = KEYS[1], KEYS[2], KEYS[3]
local request_id, project, now, remember_until = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

local raw = redis.call('HGET', data, request_id)
if raw and cjson.decode(raw).project_id ~= project then
  return -1
end
-- Forget withdrawals old enough that no job of theirs can still run.
redis.call('ZREMRANGEBYSCORE', withdrawn, '-inf', now)
redis.call('ZADD', withdrawn, remember_until, request_id)
if raw then
  redis.call('HDEL', data, request_id)
  redis.call('ZREM', waiters, request_id)
  return 1
end
return 0
