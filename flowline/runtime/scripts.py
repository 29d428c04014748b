"""Lua scripts: every multi-step change to a queue happens in one atomic server-side call.

Atomicity is what makes redelivery safe: a job id is written at most once, and a job moves
between ready / delayed / dead without a moment in which it is in two places or none.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

# A job's entry in a ready stream holds: id, topic, data, attempt, born (when the work began, ms:
# the stream message's stored time, the cron tick, or the direct enqueue) and, when tracing, the
# W3C traceparent it continues. Every script that re-adds a job carries born and trace along.

# Dedup marks (KEYS[4] of ENQUEUE and ENQUEUE_GROUPED, given only for jobs routed from a
# stream message): a sorted set per queue and stream, with one member per message and call
# class (`<seq>:<class>`, scored by the sequence). One call writes every job of a message that
# falls in its class (ready stream, grouped or not) at once, so a mark found means that call
# ran before: the message is a redelivery, and its jobs of the class are skipped even once
# their records are gone (`keep_completed=0`, or expired). One mark per message, not per job,
# keeps their cost per call of a fan-out flat. The stream side drops the marks at or below its
# consumer's ack floor (`JobStore.forget`): JetStream never delivers an acked message again, so
# Redis holds marks of unacked messages only. MARKS_TTL is a backstop for marks no stream side
# trims any more (a Stream removed from the pipeline).
MARKS_TTL = 7 * 24 * 3600

# Whether the jobs of the message at ARGV[i + 7] are new to this call's class (a Lua function,
# shared by both enqueue scripts; `fresh` remembers each message's answer within the call).
MARKED = """
local function unmarked(seen, fresh, seq, class)
  if not seen then return true end
  local new = fresh[seq]
  if new == nil then
    new = redis.call('ZADD', seen, 'NX', seq, seq .. class) == 1
    fresh[seq] = new
  end
  return new
end
"""

# KEYS: ready stream (jobs, or urgent for priority jobs), delayed zset, cancel requests zset,
# dedup marks (optional). ARGV: job key prefix, now ms, then per job: id, topic, data, due ms
# (0 = now), origin, born ms, traceparent ('' for none), message sequence (the mark's score).
# Returns how many were new. A ready job's record names its entry (`stream`, `entry`), so a
# cancel finds it without a scan; a new job drops any cancel request left under its id by an
# older job of the same id.
ENQUEUE = (
    MARKED
    + f"""
local prefix, now, added, seen, fresh = ARGV[1], ARGV[2], 0, KEYS[4], {{}}
local class = ':' .. string.sub(KEYS[1], -1)  -- jobs or urgent
local requests = redis.call('EXISTS', KEYS[3]) == 1
for i = 3, #ARGV, 8 do
  local id = ARGV[i]
  local key = prefix .. id
  if unmarked(seen, fresh, ARGV[i + 7], class) and redis.call('EXISTS', key) == 0 then
    if requests then redis.call('ZREM', KEYS[3], id) end
    local due = tonumber(ARGV[i + 3])
    local trace = ARGV[i + 6]
    if due > 0 then
      redis.call('HSET', key, 'state', 'delayed', 'topic', ARGV[i + 1], 'data', ARGV[i + 2],
        'attempt', 1, 'created', now, 'origin', ARGV[i + 4], 'stream', KEYS[1],
        'born', ARGV[i + 5], 'trace', trace)
      redis.call('ZADD', KEYS[2], due, id)
    else
      local eid
      if trace == '' then
        eid = redis.call('XADD', KEYS[1], '*', 'id', id, 'topic', ARGV[i + 1],
          'data', ARGV[i + 2], 'attempt', 1, 'born', ARGV[i + 5])
      else
        eid = redis.call('XADD', KEYS[1], '*', 'id', id, 'topic', ARGV[i + 1],
          'data', ARGV[i + 2], 'attempt', 1, 'born', ARGV[i + 5], 'trace', trace)
      end
      redis.call('HSET', key, 'state', 'queued', 'topic', ARGV[i + 1], 'attempt', 1,
        'created', now, 'origin', ARGV[i + 4], 'stream', KEYS[1], 'entry', eid)
    end
    added = added + 1
  end
end
if seen and added > 0 then redis.call('EXPIRE', seen, {MARKS_TTL}) end
return added
"""
)


# Groups (`Job(group=...)`, `Queue(group_limit=)`): at most `glimit` jobs of one group are in
# the queue's ready streams (ready or held) at once, across every process; the rest wait, in
# order, in the group's list. So a job of a quiet group waits behind at most that many of a
# busy group's. Every script through which a grouped job enters or leaves the streams uses
# these; a job's `group` travels in its stream entry, its `glimit` on its record. The group's
# keys share the queue's hash tag (derived from the job key prefix, as job hashes are).
GROUPS = """
local function g_keys(jp, g)
  local qp = string.sub(jp, 1, #jp - 4)
  return qp .. 'active', qp .. 'group:' .. g, qp .. 'waiting'
end
-- A job of group g left the ready streams: its slot goes to the group's next waiting job.
local function g_leave(jp, g)
  local active, list, waiting = g_keys(jp, g)
  local nxt = redis.call('LPOP', list)
  while nxt do
    redis.call('DECR', waiting)
    local key = jp .. nxt
    local f = redis.call('HMGET', key, 'topic', 'data', 'attempt', 'stream', 'born', 'trace',
      'state')
    if f[1] and f[7] == 'queued' and f[2] then
      local e = redis.call('XADD', f[4], '*', 'id', nxt, 'topic', f[1], 'data', f[2],
        'attempt', f[3], 'born', f[5] or '0', 'trace', f[6] or '', 'group', g)
      redis.call('HSET', key, 'entry', e)
      redis.call('HDEL', key, 'data', 'born', 'trace')
      return
    end
    nxt = redis.call('LPOP', list)
  end
  if redis.call('HINCRBY', active, g, -1) <= 0 then redis.call('HDEL', active, g) end
end
-- A job of group g is ready: into `stream` if the group has room, else it waits its turn.
local function g_admit(jp, id, g, limit, stream, topic, data, attempt, born, trace)
  local active, list, waiting = g_keys(jp, g)
  local key = jp .. id
  if tonumber(redis.call('HGET', active, g) or '0') < tonumber(limit) then
    redis.call('HINCRBY', active, g, 1)
    local e = redis.call('XADD', stream, '*', 'id', id, 'topic', topic, 'data', data,
      'attempt', attempt, 'born', born, 'trace', trace, 'group', g)
    redis.call('HSET', key, 'state', 'queued', 'stream', stream, 'entry', e)
    redis.call('HDEL', key, 'data', 'born', 'trace')
  else
    redis.call('HSET', key, 'state', 'queued', 'stream', stream, 'topic', topic, 'data', data,
      'attempt', attempt, 'born', born, 'trace', trace)
    redis.call('HDEL', key, 'entry')
    redis.call('RPUSH', list, id)
    redis.call('INCR', waiting)
  end
end
"""

# KEYS: ready stream, delayed zset, cancel requests zset, dedup marks (optional). ARGV: job key
# prefix, now ms, then per job: id, topic, data, due ms, origin, born ms, traceparent, message
# sequence, group, group limit. ENQUEUE for jobs with a group (ENQUEUE itself stays as it was
# for the rest). Returns how many were new.
ENQUEUE_GROUPED = (
    GROUPS
    + MARKED
    + f"""
local jp, now, added, seen, fresh = ARGV[1], ARGV[2], 0, KEYS[4], {{}}
local class = ':g' .. string.sub(KEYS[1], -1)
local requests = redis.call('EXISTS', KEYS[3]) == 1
for i = 3, #ARGV, 10 do
  local id = ARGV[i]
  local key = jp .. id
  if unmarked(seen, fresh, ARGV[i + 7], class) and redis.call('EXISTS', key) == 0 then
    if requests then redis.call('ZREM', KEYS[3], id) end
    local g, limit = ARGV[i + 8], ARGV[i + 9]
    redis.call('HSET', key, 'topic', ARGV[i + 1], 'attempt', 1, 'created', now,
      'origin', ARGV[i + 4], 'group', g, 'glimit', limit)
    if tonumber(ARGV[i + 3]) > 0 then
      redis.call('HSET', key, 'state', 'delayed', 'data', ARGV[i + 2], 'stream', KEYS[1],
        'born', ARGV[i + 5], 'trace', ARGV[i + 6])
      redis.call('ZADD', KEYS[2], ARGV[i + 3], id)
    else
      g_admit(jp, id, g, limit, KEYS[1], ARGV[i + 1], ARGV[i + 2], 1, ARGV[i + 5], ARGV[i + 6])
    end
    added = added + 1
  end
end
if seen and added > 0 then redis.call('EXPIRE', seen, {MARKS_TTL}) end
return added
"""
)

# KEYS: a ready stream, the queue's stats hash of this time window (optional). ARGV: group, job
# key prefix, now ms, keep seconds, then per job: entry id, job id, result json.
COMPLETE = """
local group, prefix, now, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- One XACK and one XDEL for the whole batch: per-call overhead dominated per-entry calls.
local entries = {}
for i = 5, #ARGV, 3 do entries[#entries + 1] = ARGV[i] end
redis.call('XACK', KEYS[1], group, unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
if KEYS[2] then
  redis.call('HINCRBY', KEYS[2], 'completed', #entries)
  redis.call('EXPIRE', KEYS[2], 180)
end
if keep == '0' then  -- Queue(keep_completed=0): no record, no result
  for i = 5, #ARGV, 3 do redis.call('DEL', prefix .. ARGV[i + 1]) end
  return 1
end
for i = 5, #ARGV, 3 do
  local key = prefix .. ARGV[i + 1]
  redis.call('HSET', key, 'state', 'completed', 'result', ARGV[i + 2], 'finished', now,
    'progress', 100)
  redis.call('EXPIRE', key, keep)
end
return 1
"""

# As COMPLETE, for jobs of groups: ARGV rows are entry id, job id, result json, group; each
# job's group slot goes to its next waiting job. Entry by entry: only a job whose entry this
# call acknowledged gives a slot back, so completing twice (a reply lost, the call sent again)
# hands on one slot, not two.
COMPLETE_GROUPED = (
    GROUPS
    + """
local group, prefix, now, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = 0
for i = 5, #ARGV, 4 do
  local key = prefix .. ARGV[i + 1]
  local acked = redis.call('XACK', KEYS[1], group, ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
  if keep == '0' then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'state', 'completed', 'result', ARGV[i + 2], 'finished', now,
      'progress', 100)
    redis.call('EXPIRE', key, keep)
  end
  if acked == 1 then
    n = n + 1
    g_leave(prefix, ARGV[i + 3])
  end
end
if KEYS[2] and n > 0 then
  redis.call('HINCRBY', KEYS[2], 'completed', n)
  redis.call('EXPIRE', KEYS[2], 180)
end
return 1
"""
)

# KEYS: the job's ready stream, delayed zset, dead stream, cancel requests zset, the queue's
# stats hash of this time window (optional). ARGV: group, job key prefix, now ms, keep s, entry
# id, job id, topic, data, next attempt, due ms (-1 = dead letter, 0 = now), error, dead-letter
# record json, consumer, born ms, traceparent, group ('' or absent: none).
# Does nothing (returns 'lost') unless `consumer` still holds the entry: so a call repeated
# after its reply was lost, or sent by a worker whose job was taken over, adds no second copy.
# A job whose cancel was requested while this attempt ran ends 'cancelled' instead: neither
# retried nor dead-lettered.
FAIL = (
    GROUPS
    + """
local group, prefix, now, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local g = ARGV[16] or ''
local eid, id, topic, data, attempt, due = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
  tonumber(ARGV[10])
local key = prefix .. id
if eid ~= '' then
  local p = redis.call('XPENDING', KEYS[1], group, eid, eid, 1)
  if not p[1] or p[1][2] ~= ARGV[13] then return 'lost' end
  redis.call('XACK', KEYS[1], group, eid)
  redis.call('XDEL', KEYS[1], eid)
end
if redis.call('ZREM', KEYS[4], id) == 1 then
  redis.call('HSET', key, 'state', 'cancelled', 'error', ARGV[11], 'finished', now)
  redis.call('HDEL', key, 'data', 'born', 'trace')
  redis.call('EXPIRE', key, keep)
  if g ~= '' then g_leave(prefix, g) end
  return 'cancelled'
end
if KEYS[5] then
  redis.call('HINCRBY', KEYS[5], 'failed', 1)
  redis.call('EXPIRE', KEYS[5], 180)
end
if due < 0 then
  redis.call('HSET', key, 'state', 'failed', 'error', ARGV[11], 'finished', now)
  redis.call('HDEL', key, 'data')
  redis.call('EXPIRE', key, keep)
  if g ~= '' then g_leave(prefix, g) end
  return redis.call('XADD', KEYS[3], '*', 'id', id, 'record', ARGV[12])
end
redis.call('HSET', key, 'attempt', attempt, 'error', ARGV[11])
if due == 0 then
  local e
  if g ~= '' then
    e = redis.call('XADD', KEYS[1], '*', 'id', id, 'topic', topic, 'data', data,
      'attempt', attempt, 'born', ARGV[14], 'trace', ARGV[15], 'group', g)
  else
    e = redis.call('XADD', KEYS[1], '*', 'id', id, 'topic', topic, 'data', data,
      'attempt', attempt, 'born', ARGV[14], 'trace', ARGV[15])
  end
  redis.call('HSET', key, 'state', 'queued', 'stream', KEYS[1], 'entry', e)
else
  redis.call('HSET', key, 'state', 'retrying', 'data', data, 'topic', topic, 'stream', KEYS[1],
    'born', ARGV[14], 'trace', ARGV[15])
  redis.call('ZADD', KEYS[2], due, id)
  if g ~= '' then g_leave(prefix, g) end  -- back through the group's gate when due
end
return ''
"""
)

# KEYS: jobs stream, delayed zset. ARGV: job key prefix, now ms, limit.
# Moves due jobs to their ready stream; returns {moved, next due ms or -1}. The ids read are
# the set's first #ids by rank (lowest scores, from -inf), so one ZREMRANGEBYRANK removes
# exactly them: a ZREM per job cost a fifth of the script's Redis time.
PROMOTE = (
    GROUPS
    + """
local prefix = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local key = prefix .. id
  local f = redis.call('HMGET', key, 'topic', 'data', 'attempt', 'stream', 'born', 'trace',
    'group', 'glimit')
  if f[1] then
    local stream = f[4] or KEYS[1]
    if f[7] and f[7] ~= '' then
      g_admit(prefix, id, f[7], f[8] or '1', stream, f[1], f[2], f[3], f[5] or '0', f[6] or '')
    else
      local e = redis.call('XADD', stream, '*', 'id', id, 'topic', f[1], 'data', f[2],
        'attempt', f[3], 'born', f[5] or '0', 'trace', f[6] or '')
      redis.call('HSET', key, 'state', 'queued', 'stream', stream, 'entry', e)
      redis.call('HDEL', key, 'data', 'born', 'trace')
    end
  end
end
if #ids > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, #ids - 1) end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {#ids, nxt[2] or '-1'}
"""
)

# KEYS: a ready stream, the queue's paused flag. ARGV: group, consumer, min idle ms, count,
# job key prefix.
# Claims up to `count` jobs whose worker stopped heart-beating; counts the attempt up. Claims
# nothing while the queue is paused: a dead worker's jobs wait, pending, for the resume.
# XPENDING IDLE looks through the whole pending list for abandoned entries, so every one is
# found on the first call after its claim expired (XAUTOCLAIM examines only 10 x COUNT entries
# per call: with COUNT = free slots, a long pending list took many calls to get through).
# Returns {{entry id, job id, topic, data, attempt, born, trace, group}...}.
RECLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local out = {}
local idle = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
for _, p in ipairs(idle) do
  -- An entry deleted from the stream comes back empty (and leaves the pending list).
  for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])) do
    local f = {}
    local fields = e[2]
    for j = 1, #fields, 2 do f[fields[j]] = fields[j + 1] end
    if f.id then
      local attempt = redis.call('HINCRBY', ARGV[5] .. f.id, 'attempt', 1)
      table.insert(out, {e[1], f.id, f.topic, f.data, tostring(attempt), f.born or '0',
        f.trace or '', f.group or ''})
    end
  end
end
return out
"""

# KEYS: a ready stream. ARGV: group, consumer, entry ids...
# Keeps this worker's claims fresh; returns the ids it no longer owns.
HEARTBEAT = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# KEYS: a ready stream. ARGV: group, job key prefix, then per job: entry id, job id, topic,
# data, attempt, born, trace, its group ('' for none). Hands unfinished jobs back on shutdown:
# same job, new entry, readable at once (a grouped job keeps its group's slot).
RELEASE = """
for i = 3, #ARGV, 8 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    local e
    if ARGV[i + 7] ~= '' then
      e = redis.call('XADD', KEYS[1], '*', 'id', ARGV[i + 1], 'topic', ARGV[i + 2],
        'data', ARGV[i + 3], 'attempt', ARGV[i + 4], 'born', ARGV[i + 5], 'trace', ARGV[i + 6],
        'group', ARGV[i + 7])
    else
      e = redis.call('XADD', KEYS[1], '*', 'id', ARGV[i + 1], 'topic', ARGV[i + 2],
        'data', ARGV[i + 3], 'attempt', ARGV[i + 4], 'born', ARGV[i + 5], 'trace', ARGV[i + 6])
    end
    redis.call('HSET', ARGV[2] .. ARGV[i + 1], 'stream', KEYS[1], 'entry', e)
  end
end
return 1
"""

# KEYS: jobs stream, dead stream. ARGV: job key prefix, now ms, dead entry id, job id, topic,
# data. Puts a dead job back on its queue as a fresh attempt 1 and removes the dead letter.
REPLAY = """
local key = ARGV[1] .. ARGV[4]
redis.call('DEL', key)
local e = redis.call('XADD', KEYS[1], '*', 'id', ARGV[4], 'topic', ARGV[5], 'data', ARGV[6],
  'attempt', 1, 'born', ARGV[2])
redis.call('HSET', key, 'state', 'queued', 'topic', ARGV[5], 'attempt', 1, 'created', ARGV[2],
  'origin', 'replay', 'stream', KEYS[1], 'entry', e)
return redis.call('XDEL', KEYS[2], ARGV[3])
"""


# Cancel (`JobStore.cancel`): KEYS: job hash, delayed zset, cancel requests zset, urgent stream,
# jobs stream. ARGV: group, job id, now ms, keep seconds.
# A waiting job (delayed, retrying, or ready and unread) is removed and its record says
# 'cancelled'. A job a worker holds gets a request that the worker acts on (it polls the
# requests of the jobs it holds); so does a ready job whose record predates `entry`. Requests
# are pruned after a day. Returns {outcome, detail, topic}: {'cancelled', state it was in},
# {'cancelling', holder or ''}, {'finished', state}, {'unknown', ''}.
CANCEL = (
    GROUPS
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'stream', 'entry', 'topic', 'group')
local state, topic, g = f[1], f[4] or '', f[5] or ''
local jp = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[2])
if not state then return {'unknown', '', ''} end
if state == 'completed' or state == 'failed' or state == 'cancelled' then
  return {'finished', state, topic}
end
local function cancelled()
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', ARGV[3])
  redis.call('HDEL', KEYS[1], 'data', 'born', 'trace')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[2])
  return {'cancelled', state, topic}
end
if state == 'delayed' or state == 'retrying' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return cancelled()
end
local stream = nil
if f[2] == KEYS[4] or f[2] == KEYS[5] then stream = f[2] end
local holder = ''
if stream and f[3] then
  local p = redis.pcall('XPENDING', stream, ARGV[1], f[3], f[3], 1)
  if type(p) == 'table' and not p.err and p[1] then
    holder = p[1][2]
  elseif redis.call('XDEL', stream, f[3]) == 1 then
    if g ~= '' then g_leave(jp, g) end
    return cancelled()
  end
elseif g ~= '' then
  -- waiting in its group's list, not in a stream yet
  local _, list, waiting = g_keys(jp, g)
  if redis.call('LREM', list, 0, ARGV[2]) > 0 then
    redis.call('DECR', waiting)
    return cancelled()
  end
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[3]) - 86400000)
return {'cancelling', holder, topic}
"""
)

# KEYS: a ready stream, cancel requests zset. ARGV: group, job key prefix, now ms, keep s,
# consumer, entry id, job id, its group ('' for none). Ends a job `consumer` holds as
# 'cancelled'; 0 (nothing changed) when it no longer holds it.
CANCELLED = (
    GROUPS
    + """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[6], ARGV[6], 1)
if not p[1] or p[1][2] ~= ARGV[5] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[6])
redis.call('XDEL', KEYS[1], ARGV[6])
local key = ARGV[2] .. ARGV[7]
redis.call('HSET', key, 'state', 'cancelled', 'finished', ARGV[3])
redis.call('HDEL', key, 'data', 'born', 'trace')
redis.call('EXPIRE', key, ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[7])
if ARGV[8] and ARGV[8] ~= '' then g_leave(ARGV[2], ARGV[8]) end
return 1
"""
)


# Rate limits (`JobStore.take`): KEYS: the scope's window, a zset of recent starts (member ->
# ms). ARGV: period ms, limit, how many wanted, member prefix. Times are Redis's own (TIME), so
# processes whose clocks disagree share one window. Grants up to `wanted` starts such that no
# `period` ever holds more than `limit`; returns {granted, ms until the oldest start leaves the
# window (when fewer than wanted were granted)}.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period, limit, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local k = math.min(wanted, limit - redis.call('ZCARD', KEYS[1]))
if k > 0 then
  local args = {}
  for i = 1, k do
    args[#args + 1] = now
    args[#args + 1] = ARGV[4] .. i
  end
  redis.call('ZADD', KEYS[1], unpack(args))
  redis.call('PEXPIRE', KEYS[1], period)
  if k == wanted then return {k, 0} end
else
  k = 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {k, math.max(1, tonumber(oldest[2] or now) + period - now)}
"""

# KEYS: a ready stream, delayed zset. ARGV: group, job key prefix, due ms, consumer, then per
# job: entry id, job id, topic, data, attempt, born, trace, group. Puts held jobs back to wait until
# `due` (their topic's rate is used up), attempt unchanged; jobs `consumer` no longer holds
# are left alone.
DEFER = (
    GROUPS
    + """
for i = 5, #ARGV, 8 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[4] then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('HSET', ARGV[2] .. ARGV[i + 1], 'state', 'delayed', 'topic', ARGV[i + 2],
      'data', ARGV[i + 3], 'attempt', ARGV[i + 4], 'stream', KEYS[1], 'born', ARGV[i + 5],
      'trace', ARGV[i + 6])
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[i + 1])
    if ARGV[i + 7] ~= '' then g_leave(ARGV[2], ARGV[i + 7]) end
  end
end
return 1
"""
)

# Clean (`JobStore.clean`): KEYS: job hashes. ARGV: state, finished before (ms). Deletes the
# records in that state that finished before then; a record in any other state (a job still
# waiting or running) is never touched, so it is safe while workers run. Returns how many.
# KEYS: a job's record. ARGV: field, value. Writes only while the record exists: a late write
# (a progress report after its job completed with `keep_completed=0`, or from a worker whose
# job was taken over and finished elsewhere) must not leave a record with no expiry behind.
NOTE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

CLEAN = """
local n = 0
for _, key in ipairs(KEYS) do
  local f = redis.call('HMGET', key, 'state', 'finished')
  if f[1] == ARGV[1] and tonumber(f[2] or '0') < tonumber(ARGV[2]) then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""

# Fan-in (`runtime.fanin`): KEYS: meta hash, done set. ARGV: job id, keep seconds.
# Returns the total when this finish completes the message (once), else 0.
FAN_IN = """
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if total == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[2]) >= total and redis.call('HSETNX', KEYS[1], 'fired', 1) == 1 then
  return total
end
return 0
"""


# Cron (`runtime.cron`): KEYS: mark. ARGV: tick ms. Raises the mark to the tick if it is higher.
RAISE_MARK = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class Scripts:
    """The scripts registered on one Redis client (EVALSHA, reloaded on NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self.enqueue: AsyncScript = redis.register_script(ENQUEUE)
        self.complete: AsyncScript = redis.register_script(COMPLETE)
        self.complete_grouped: AsyncScript = redis.register_script(COMPLETE_GROUPED)
        self.enqueue_grouped: AsyncScript = redis.register_script(ENQUEUE_GROUPED)
        self.fail: AsyncScript = redis.register_script(FAIL)
        self.promote: AsyncScript = redis.register_script(PROMOTE)
        self.reclaim: AsyncScript = redis.register_script(RECLAIM)
        self.heartbeat: AsyncScript = redis.register_script(HEARTBEAT)
        self.release: AsyncScript = redis.register_script(RELEASE)
        self.replay: AsyncScript = redis.register_script(REPLAY)
        self.cancel: AsyncScript = redis.register_script(CANCEL)
        self.cancelled: AsyncScript = redis.register_script(CANCELLED)
        self.clean: AsyncScript = redis.register_script(CLEAN)
        self.note: AsyncScript = redis.register_script(NOTE)
        self.take: AsyncScript = redis.register_script(TAKE)
        self.defer: AsyncScript = redis.register_script(DEFER)
        self.fan_in: AsyncScript = redis.register_script(FAN_IN)
        self.raise_mark: AsyncScript = redis.register_script(RAISE_MARK)


def flat(rows: Any) -> list[Any]:
    """Flattens per-job argument tuples into one ARGV list."""
    return [v for row in rows for v in row]
