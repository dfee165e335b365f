"""The Lua scripts of the Redis store (SPEC section 5, "Redis layout").

Every key a script touches is passed in ``KEYS`` and shares the pool's hash
tag, so a pool lives in one Cluster slot. Times are milliseconds of the
store's clock (``TIME``). Every write carries the owner token and is
idempotent under re-execution: a command whose answer was lost can be sent
again and finds its own work done.

A job record (``T:job:<task>:<jobId>``) is a hash with the fields ``task``,
``job``, ``state`` (``running`` / ``delivering`` / ``done``), ``token``,
``instance``, ``started``, ``renewed``, ``finished`` (ms), ``cb`` (callback
URL, empty for none), ``step``, ``stop`` (``1`` once asked to stop),
``trace``, ``whid`` (webhook-id), ``body`` (the job response), ``delivery``,
``attempts`` and ``launched`` (``0`` from the claim until the owner, having
had the claim's answer, marks it ``1``: a record whose lease expires while
``0`` is a claim whose answer was lost, deleted by the sweeper rather than
settled as ``worker_lost``; a record without the field counts as launched).

``T:done:<task>`` is a sorted set of the task's results (member the jobId,
score its expiry in ms: finished + ``result_ttl``), pruned of expired ones
whenever a result is added and expiring with its newest member, so that
``store status`` counts every stored result with one ``ZCOUNT`` per task.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLAIM",
    "COUNTS",
    "DELIVERED",
    "HEARTBEAT",
    "LIVE",
    "MARK",
    "OPS_MANY",
    "READ",
    "READ_CHANGED",
    "RELEASE",
    "RESTORE",
    "SETTLE",
    "STOP",
    "SWEEP",
    "TAKE_OVER",
]

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Point T:latest:<jobId> (value '<finished ms>|<task>') at this result unless a newer
# one of another task is there; it expires with the result (finished + result_ttl).
_LATEST: Final = """
local function set_latest(key, finished, task, ttl)
  local old = redis.call('GET', key)
  if old then
    local sep = string.find(old, '|', 1, true)
    if sep and tonumber(string.sub(old, 1, sep - 1)) > finished then return end
  end
  redis.call('SET', key, string.format('%d', finished) .. '|' .. task,
    'PXAT', string.format('%d', finished + ttl))
end

-- Count a result in T:done:<task> until it expires; drop the expired ones.
local function count_done(key, job, expires, now)
  redis.call('ZADD', key, string.format('%d', expires), job)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now))
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, last[2]) end
end
"""

# KEYS: job, leases, version
# ARGV: token, instance, lease member, lease ms, task, jobId, callback, trace
# -> {'claimed', now} | {'exists', now, <HGETALL of the record>...}
_CLAIM_ONE: Final = (
    """
local function one(KEYS, ARGV)
"""
    + """local state = redis.call('HGET', KEYS[1], 'state')
if state then
  local token = redis.call('HGET', KEYS[1], 'token')
  if token == ARGV[1] and state == 'running' then
    return {'claimed', now}
  end
  local out = {'exists', now}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
  return out
end
redis.call('HSET', KEYS[1], 'task', ARGV[5], 'job', ARGV[6], 'state', 'running',
  'token', ARGV[1], 'instance', ARGV[2], 'started', now, 'renewed', now,
  'cb', ARGV[7], 'trace', ARGV[8], 'launched', '0')
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('INCR', KEYS[3])
return {'claimed', now}
end
"""
)
CLAIM: Final = _NOW + _CLAIM_ONE + "return one(KEYS, ARGV)\n"

# KEYS: job, leases, version
# ARGV: token, lease member
# -> 1 if deleted, 0 if the record is not this token's claim of a job that never started
RELEASE: Final = """
local rec = redis.call('HMGET', KEYS[1], 'state', 'token', 'launched')
if rec[1] ~= 'running' or rec[2] ~= ARGV[1] or rec[3] == '1' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('INCR', KEYS[3])
return 1
"""

# KEYS: job, leases, version, latest, history, tasks, done
# ARGV: token, instance, lease member, target state ('delivering' | 'done'), body,
#       webhook-id, finished ms (0: now; the result expires result_ttl after it),
#       result ttl ms, history length, task, jobId, lease ms, callback, delivery
#       outcome, attempts
# -> {'ok', now} | {'superseded', now, <HGETALL of the record>...}
_SETTLE_ONE: Final = (
    """
local function one(KEYS, ARGV)
"""
    + """local rec = redis.call('HMGET', KEYS[1], 'state', 'token', 'body')
local target = ARGV[4]
local first = true
if rec[1] then
  local same = rec[3] == ARGV[5]
  if rec[2] ~= ARGV[1] or (rec[1] == 'done' and not same)
      or (rec[1] == 'delivering' and not same) then
    local out = {'superseded', now}
    for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
    return out
  end
  if rec[1] == 'done' or (rec[1] == 'delivering' and target == 'delivering') then
    return {'ok', now}
  end
  first = rec[1] == 'running'
end
local finished = tonumber(ARGV[7])
if finished == 0 then finished = now end
if first then
  redis.call('HSET', KEYS[1], 'task', ARGV[10], 'job', ARGV[11], 'token', ARGV[1],
    'instance', ARGV[2], 'body', ARGV[5], 'whid', ARGV[6], 'finished', finished,
    'cb', ARGV[13])
  set_latest(KEYS[4], finished, ARGV[10], tonumber(ARGV[8]))
  count_done(KEYS[7], ARGV[11], finished + tonumber(ARGV[8]), now)
  redis.call('SADD', KEYS[6], ARGV[10])
  redis.call('LREM', KEYS[5], 0, ARGV[11])
  redis.call('LPUSH', KEYS[5], ARGV[11])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[9]) - 1)
end
redis.call('HSET', KEYS[1], 'state', target)
if target == 'done' then
  redis.call('HSET', KEYS[1], 'delivery', ARGV[14], 'attempts', ARGV[15])
  finished = tonumber(redis.call('HGET', KEYS[1], 'finished')) or now
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', finished + tonumber(ARGV[8])))
  redis.call('ZREM', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[12]), ARGV[3])
end
redis.call('INCR', KEYS[3])
return {'ok', now}
end
"""
)
SETTLE: Final = _NOW + _LATEST + _SETTLE_ONE + "return one(KEYS, ARGV)\n"

# KEYS: instances, leases, version, then one job key per held job
# ARGV: instance member, lease ms, token, then per held job: lease member, last step,
#       '1' if its claim was answered (the job started: its record is marked launched)
# -> {version, now, status per job...}; a status is 'ok', 'stop', 'lost' (another
#    token, or finished without it), 'missing' (the record is gone: Redis lost it)
HEARTBEAT: Final = (
    _NOW
    + """
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 100 * lease)
local out = {tonumber(redis.call('GET', KEYS[3]) or '0'), now}
for i = 4, #KEYS do
  local b = 4 + (i - 4) * 3
  local rec = redis.call('HMGET', KEYS[i], 'state', 'token', 'stop')
  local status
  if not rec[1] then
    status = 'missing'
  elseif rec[2] ~= ARGV[3] then
    status = 'lost'
  elseif rec[1] == 'done' then
    status = 'ok'
  else
    if rec[1] == 'running' then
      redis.call('HSET', KEYS[i], 'renewed', now)
      if ARGV[b + 1] ~= '' then redis.call('HSET', KEYS[i], 'step', ARGV[b + 1]) end
      if ARGV[b + 2] == '1' then redis.call('HSET', KEYS[i], 'launched', '1') end
    end
    redis.call('ZADD', KEYS[2], now + lease, ARGV[b])
    if rec[3] == '1' then status = 'stop' else status = 'ok' end
  end
  out[#out + 1] = status
end
return out
"""
)

# KEYS: job, leases, version, latest, history, done, tasks
# ARGV: lease member, lease ms, result ttl ms, history length, task, jobId, then field,
#       value pairs of the whole record
# -> 1 if written back, 0 if a record exists (then it is left alone)
RESTORE: Final = (
    _NOW
    + _LATEST
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'renewed', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  local finished = tonumber(redis.call('HGET', KEYS[1], 'finished')) or now
  set_latest(KEYS[4], finished, ARGV[5], tonumber(ARGV[3]))
  count_done(KEYS[6], ARGV[6], finished + tonumber(ARGV[3]), now)
  redis.call('SADD', KEYS[7], ARGV[5])
  redis.call('LREM', KEYS[5], 0, ARGV[6])
  redis.call('LPUSH', KEYS[5], ARGV[6])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[4]) - 1)
end
redis.call('INCR', KEYS[3])
return 1
"""
)

# KEYS: leases; ARGV: limit -> {now, member...} whose lease deadline is due
SWEEP: Final = (
    _NOW
    + """
local out = {now}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0,
    tonumber(ARGV[1]))) do
  out[#out + 1] = m
end
return out
"""
)

# KEYS: leases, instances; ARGV: instance horizon ms
# -> {now, {member, deadline...}, {instance member, last seen...}} of live leases and
#    instances seen within the horizon
LIVE: Final = (
    _NOW
    + """
return {now,
  redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES'),
  redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')}
"""
)

# KEYS: job keys -> {HGETALL of each (empty when gone)}
READ: Final = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

# KEYS: job keys; ARGV: the webhook-id of each as the caller has it ('' if none)
# -> per key {'='} when its finished result still has that webhook-id (the caller's copy
#    is current: a settled result never changes), else its HGETALL (empty when gone)
READ_CHANGED: Final = """
local out = {}
for i = 1, #KEYS do
  local whid = redis.call('HGET', KEYS[i], 'whid')
  if ARGV[i] ~= '' and whid == ARGV[i] and redis.call('HGET', KEYS[i], 'state') ~= 'running' then
    out[i] = {'='}
  else
    out[i] = redis.call('HGETALL', KEYS[i])
  end
end
return out
"""

# KEYS: job, leases, version, latest, history, tasks, done
# ARGV: expected token, new token, instance, lease member, lease ms, body (empty:
#       the record is delivering and keeps its result), webhook-id, result ttl ms,
#       history length, task, jobId
# -> {'taken', now, <HGETALL after>...} | {'skip'} (lease renewed or token changed)
#    | {'gone'} (no record: its lease entry is dropped) | {'released'} (a claim whose
#    answer was lost: the job never started, so its record is deleted, not settled)
TAKE_OVER: Final = (
    _NOW
    + _LATEST
    + """
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[4])
if not deadline or tonumber(deadline) > now then return {'skip'} end
local rec = redis.call('HMGET', KEYS[1], 'state', 'token', 'cb', 'launched')
if not rec[1] or rec[1] == 'done' then
  redis.call('ZREM', KEYS[2], ARGV[4])
  return {'gone'}
end
if rec[2] ~= ARGV[1] then return {'skip'} end
if rec[1] == 'running' and rec[4] == '0' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('INCR', KEYS[3])
  return {'released'}
end
if rec[1] == 'running' and ARGV[6] == '' then return {'skip'} end
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'instance', ARGV[3])
if rec[1] == 'running' then
  redis.call('HSET', KEYS[1], 'body', ARGV[6], 'whid', ARGV[7], 'finished', now)
  set_latest(KEYS[4], now, ARGV[10], tonumber(ARGV[8]))
  count_done(KEYS[7], ARGV[11], now + tonumber(ARGV[8]), now)
  redis.call('SADD', KEYS[6], ARGV[10])
  redis.call('LREM', KEYS[5], 0, ARGV[11])
  redis.call('LPUSH', KEYS[5], ARGV[11])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[9]) - 1)
  if rec[3] and rec[3] ~= '' then
    redis.call('HSET', KEYS[1], 'state', 'delivering')
  else
    redis.call('HSET', KEYS[1], 'state', 'done', 'delivery', 'unsent', 'attempts', 0)
    redis.call('PEXPIREAT', KEYS[1], string.format('%d', now + tonumber(ARGV[8])))
  end
end
if redis.call('HGET', KEYS[1], 'state') == 'done' then
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
end
redis.call('INCR', KEYS[3])
local out = {'taken', now}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
"""
)

# KEYS: job, version -> {state, HGETALL...} of the record flagged, or {} if it is not
# running or delivering
STOP: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' and state ~= 'delivering' then return {} end
redis.call('HSET', KEYS[1], 'stop', '1')
redis.call('INCR', KEYS[2])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: job, leases, version
# ARGV: token, lease member, delivery outcome, attempts, result ttl ms
# -> 1 if the record is (now) done with this token, 0 if it holds another token
DELIVERED: Final = """
local rec = redis.call('HMGET', KEYS[1], 'state', 'token')
if rec[2] ~= ARGV[1] then return 0 end
if rec[1] == 'done' then return 1 end
if rec[1] ~= 'delivering' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'delivery', ARGV[3], 'attempts', ARGV[4])
local t = redis.call('TIME')
local finished = tonumber(redis.call('HGET', KEYS[1], 'finished')) or tonumber(t[1]) * 1000
redis.call('PEXPIREAT', KEYS[1], string.format('%d', finished + tonumber(ARGV[5])))
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('INCR', KEYS[3])
return 1
"""

# KEYS: T:done:<task> sets -> how many results of each have not expired
COUNTS: Final = (
    _NOW
    + """
local out = {}
local after = '(' .. string.format('%d', now)
for i = 1, #KEYS do out[i] = redis.call('ZCOUNT', KEYS[i], after, '+inf') end
return out
"""
)

_MARK_ONE: Final = """
local function mark_one(KEYS, ARGV)
  for i = 1, #KEYS do
    local rec = redis.call('HMGET', KEYS[i], 'state', 'token')
    if rec[1] == 'running' and rec[2] == ARGV[1] then
      redis.call('HSET', KEYS[i], 'launched', '1')
    end
  end
  return 1
end
"""

# KEYS: job keys; ARGV: token -> 1. Marks this token's running records launched: their
# claims were answered, so their jobs started (see the module docstring).
MARK: Final = _MARK_ONE + "return mark_one(KEYS, ARGV)\n"


# Claims, settles and marks in one call (those one scheduling tick brought):
# ARGV[1] = n, then per call its kind ('claim' | 'settle' | 'mark'), its number of keys and of
# arguments, then those arguments; KEYS holds each call's keys in turn (as CLAIM's,
# SETTLE's and MARK's). -> {each call's answer}
OPS_MANY: Final = (
    _NOW
    + _LATEST
    + _CLAIM_ONE.replace("local function one(", "local function claim_one(")
    + _SETTLE_ONE.replace("local function one(", "local function settle_one(")
    + _MARK_ONE
    + """
local out = {}
local ki, ai = 0, 1
for i = 1, tonumber(ARGV[1]) do
  local kind, nk, na = ARGV[ai + 1], tonumber(ARGV[ai + 2]), tonumber(ARGV[ai + 3])
  ai = ai + 3
  local k, a = {}, {}
  for j = 1, nk do k[j] = KEYS[ki + j] end
  for j = 1, na do a[j] = ARGV[ai + j] end
  ki, ai = ki + nk, ai + na
  if kind == 'claim' then
    out[i] = claim_one(k, a)
  elseif kind == 'mark' then
    out[i] = mark_one(k, a)
  else
    out[i] = settle_one(k, a)
  end
end
return out
"""
)
