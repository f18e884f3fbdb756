-- Queue a caller that waits for a machine, once.
--
-- Race guarded: a redelivered assign job must not queue its caller twice
-- (or behind itself): the request id is the identity.
--
-- Race guarded too: a withdraw of this request (its caller left) that landed
-- first, from a reordered or redelivered message: it is never queued then.
--
-- KEYS: waiters (zset), waiter_data (hash), waiter_seq (string), withdrawn (zset)
-- ARGV: request id, waiter json
-- Returns 1 if queued now, 0 if it was already waiting or was withdrawn.
local waiters, data, seq, withdrawn = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('ZSCORE', withdrawn, ARGV[1]) then
  return 0
end
if redis.call('HSETNX', data, ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('ZADD', waiters, redis.call('INCR', seq), ARGV[1])
return 1
