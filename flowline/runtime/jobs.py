"""Job inspection: one job by id, or the jobs of some queues in one state. Reads Redis only.

A job's record (`keys.QueueKeys.job`) says ``queued`` while the job runs: whether a worker
holds it is known only from the queue's consumer group, where its entry is pending (the
record names the entry; records written before it did are found by a scan of the pending
entries). A lookup by id asks every given queue at once (an id alone does not say which queue
its topic belongs to): one pipelined round trip of one read-only script per queue, which
returns the record, the consumer holding the job's entry, and when a delayed job is due. A
failed job's traceback is kept in its dead letter, read in a second round trip only for failed
jobs.

The documents of ``flowline jobs --json`` (`job_document`, `letter_document`); keys are stable,
times are epoch seconds, absent values are null::

    job:         {"id", "queue", "topic", "state", "attempt", "progress", "result", "error",
                  "traceback", "created", "finished", "due", "running_on", "origin",
                  "message": {"stream", "sequence", "subject"} | null, "dead_letter"}
    dead letter: {"id", "kind", "stage", "job_id", "queue", "topic",
                  "message": {"stream", "sequence", "subject"} | null, "attempts", "error",
                  "traceback", "failed_at"}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._stages import Stream
from ..backends.jetstream import stream_name_for
from . import deadletters
from .deadletters import DeadLetter
from .keys import GROUP, QueueKeys

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .._pipeline import Pipeline

# What `flowline jobs --state` lists.
STATES = ("failed", "dead", "running", "delayed")
# Pending entries a lookup looks through for the job's own (workers hold a few hundred at most).
PENDING_SCAN = 10_000
# Dead letters read per page, and pages at most per queue, when looking for failed jobs.
PAGE = 200
MAX_PAGES = 50
# The dead letter's entry id is stamped by Redis's clock, a record's `finished` by the
# worker's: how far apart the two may be when looking for a failed job's dead letter.
CLOCK_SKEW_MS = 600_000

# KEYS: job hash, urgent stream, jobs stream, delayed zset. ARGV: group, job id, most pending
# entries to look through. Returns {the record as a flat list, the consumer holding the job's
# entry or '', due ms or ''}. Reads only.
LOOKUP = """
local function holder(stream)
  local pending = redis.pcall('XPENDING', stream, ARGV[1], '-', '+', tonumber(ARGV[3]))
  if type(pending) ~= 'table' or pending.err then return nil end  -- no group yet: nobody
  for _, p in ipairs(pending) do
    local e = redis.call('XRANGE', stream, p[1], p[1])
    if e[1] then
      local f = e[1][2]
      for j = 1, #f, 2 do
        if f[j] == 'id' then
          if f[j + 1] == ARGV[2] then return p[2] end
          break
        end
      end
    end
  end
  return nil
end
local h = redis.call('HGETALL', KEYS[1])
local f = {}
for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
local state = f.state or ''
local by, due = '', ''
if state == 'queued' then
  if f.entry and (f.stream == KEYS[2] or f.stream == KEYS[3]) then
    -- The record names its entry: is that entry pending, and with whom?
    local p = redis.pcall('XPENDING', f.stream, ARGV[1], f.entry, f.entry, 1)
    if type(p) == 'table' and not p.err and p[1] then by = p[1][2] end
  elseif not f.group then
    -- A record from before records named their entry: look through the pending entries.
    by = holder(KEYS[2]) or holder(KEYS[3]) or ''
  end  -- else a job of a group waiting for a slot, in no stream yet
elseif state == 'delayed' or state == 'retrying' then
  due = redis.call('ZSCORE', KEYS[4], ARGV[2]) or ''
end
return {h, by, due}
"""

# KEYS: urgent stream, jobs stream. ARGV: group, job key prefix, limit. Returns, for the oldest
# claimed entries (urgent first): {job id, consumer, the record as a flat list}... Reads only.
RUNNING = """
local out, limit = {}, tonumber(ARGV[3])
for s = 1, 2 do
  local pending = redis.pcall('XPENDING', KEYS[s], ARGV[1], '-', '+', limit)
  if type(pending) == 'table' and not pending.err then
    for _, p in ipairs(pending) do
      if #out >= limit then return out end
      local e = redis.call('XRANGE', KEYS[s], p[1], p[1])
      if e[1] then
        local f, id = e[1][2], nil
        for j = 1, #f, 2 do
          if f[j] == 'id' then id = f[j + 1] end
        end
        if id then
          table.insert(out, {id, p[2], redis.call('HGETALL', ARGV[2] .. id)})
        end
      end
    end
  end
end
return out
"""


@dataclass(frozen=True)
class SourceMessage:
    """The stream message a job was routed from: its stream, sequence and subject."""

    stream: str
    sequence: int
    subject: str | None


@dataclass(frozen=True)
class JobInfo:
    """A job as Redis holds it now.

    `state` is one of ``queued``, ``running`` (a worker holds it: running, or about to),
    ``delayed``, ``retrying`` (waiting for its next attempt), ``completed``, ``failed``.
    Fields after `finished` are filled by lookups that know them (`QueueHandle.job`,
    ``flowline jobs``): `due` for delayed and retrying jobs, `running_on` (the consumer holding
    it) for running ones, `traceback` and `dead_letter` (its id) for failed ones, `message` for
    jobs routed from a stream message.
    """

    id: str
    topic: str
    state: str
    attempt: int
    progress: float
    result: Any
    error: str | None
    created: float | None
    finished: float | None
    queue: str | None = None
    origin: str | None = None
    message: SourceMessage | None = None
    due: float | None = None
    running_on: str | None = None
    traceback: str | None = None
    dead_letter: str | None = None


def subjects_of(pipeline: Pipeline) -> dict[str, str]:
    """The subjects of the pipeline's streams, by the JetStream stream flowline makes for each."""
    return {
        stream_name_for(s.subject): s.subject for s in pipeline.sources if isinstance(s, Stream)
    }


def queues_of(pipelines: Iterable[Pipeline]) -> dict[str, dict[str, str]]:
    """Every queue of `pipelines` (each shard of a sharded one), with the subjects of its
    pipeline's streams (`subjects_of`)."""
    return {name: subjects_of(p) for p in pipelines for q in p.queues for name in q.shard_names}


async def find(redis: Redis, queues: Mapping[str, Mapping[str, str]], job_id: str) -> list[JobInfo]:
    """The job `job_id` in each of `queues` that holds it (usually one, or none).

    Args:
        queues: queue name -> its pipeline's stream subjects (`queues_of`).
    """
    names = list(queues)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        keys = QueueKeys(name)
        keys_and_args = (keys.job(job_id), *keys.streams, keys.delayed, GROUP, job_id, PENDING_SCAN)
        pipe.eval(LOOKUP, 4, *keys_and_args)
    replies: list[Any] = await pipe.execute()
    found = []
    for name, (flat, holder, due) in zip(names, replies, strict=True):
        if not flat:
            continue
        record = _record(flat)
        letter = None
        if record.get("state") == "failed":
            letter = await _letter_of(redis, name, job_id, record.get("finished"))
        holder, due = _s(holder), _s(due) or None
        found.append(job_info(job_id, name, queues[name], record, holder, due, letter))
    return found


async def running(
    redis: Redis, queues: Mapping[str, Mapping[str, str]], limit: int
) -> list[JobInfo]:
    """Jobs a worker holds now, oldest first (at most `limit`)."""
    names = list(queues)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        keys = QueueKeys(name)
        pipe.eval(RUNNING, 2, *keys.streams, GROUP, keys.job_prefix, limit)
    replies: list[Any] = await pipe.execute()
    rows = []
    for name, reply in zip(names, replies, strict=True):
        for job_id, consumer, flat in reply:
            record = _record(flat)
            if record:  # a record gone (expired, deleted) leaves nothing to show
                rows.append(job_info(_s(job_id), name, queues[name], record, _s(consumer)))
    rows.sort(key=lambda j: j.created or 0)
    return rows[:limit]


async def delayed(
    redis: Redis, queues: Mapping[str, Mapping[str, str]], limit: int
) -> list[JobInfo]:
    """Delayed jobs and jobs waiting to be retried, soonest due first (at most `limit`)."""
    names = list(queues)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.zrange(QueueKeys(name).delayed, 0, limit - 1, withscores=True)
    due: list[tuple[str, str, float]] = [
        (name, _s(job_id), score)
        for name, entries in zip(names, await pipe.execute(), strict=True)
        for job_id, score in entries
    ]
    due.sort(key=lambda row: row[2])
    due = due[:limit]
    pipe = redis.pipeline(transaction=False)
    for name, job_id, _ in due:
        pipe.hgetall(QueueKeys(name).job(job_id))
    rows = []
    for (name, job_id, score), raw in zip(due, await pipe.execute(), strict=True):
        if raw:
            record = {_s(k): _s(v) for k, v in raw.items()}
            rows.append(job_info(job_id, name, queues[name], record, due=str(score)))
    return rows


async def failed(
    redis: Redis, queues: Mapping[str, Mapping[str, str]], limit: int
) -> list[JobInfo]:
    """Jobs that failed for good and whose record is still kept, newest first (at most `limit`).

    Found through their dead letters, newest first: the job of a purged dead letter is not
    listed, and a dead letter whose job's record expired is listed by `dead_letters` only.
    """
    rows: list[JobInfo] = []
    seen: set[tuple[str, str]] = set()  # a keyed job enqueued again may have older letters
    cursors: dict[str, str] = dict.fromkeys(queues, "+")
    counts = dict.fromkeys(queues, 0)
    for _ in range(MAX_PAGES):
        if not cursors:
            break
        names = list(cursors)
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.xrevrange(QueueKeys(name).dead, cursors[name], "-", count=PAGE)
        pages: list[Any] = await pipe.execute()
        letters: list[tuple[str, DeadLetter]] = []
        for name, entries in zip(names, pages, strict=True):
            if len(entries) < PAGE:
                del cursors[name]
            else:
                cursors[name] = "(" + _s(entries[-1][0])
            store = QueueKeys(name).dead
            letters += [(name, _letter(store, e, f)) for e, f in entries]
        pipe = redis.pipeline(transaction=False)
        for name, letter in letters:
            pipe.hgetall(QueueKeys(name).job(str(letter.record.get("job_id"))))
        for (name, letter), raw in zip(letters, await pipe.execute(), strict=True):
            record = {_s(k): _s(v) for k, v in raw.items()}
            job_id = str(letter.record.get("job_id"))
            if record.get("state") == "failed" and counts[name] < limit:
                if (name, job_id) in seen:
                    continue
                seen.add((name, job_id))
                counts[name] += 1
                rows.append(job_info(job_id, name, queues[name], record, letter=letter))
        for name in [n for n in cursors if counts[n] >= limit]:
            del cursors[name]
    rows.sort(key=lambda j: j.finished or 0, reverse=True)
    return rows[:limit]


async def dead_letters(
    redis: Redis, pipelines: Iterable[Pipeline], limit: int, *, queue: str | None = None
) -> list[DeadLetter]:
    """Dead letters of `pipelines`, newest first (at most `limit`).

    Args:
        queue: only this queue's (default: every queue's and each stream side's).
    """
    if queue is not None:
        stores = [QueueKeys(queue).dead]
    else:
        stores = [store for p in pipelines for store in deadletters.stores(p)]
    pipe = redis.pipeline(transaction=False)
    for store in stores:
        pipe.xrevrange(store, "+", "-", count=limit)
    letters = [
        _letter(store, entry, fields)
        for store, entries in zip(stores, await pipe.execute(), strict=True)
        for entry, fields in entries
    ]
    letters.sort(key=lambda x: _entry_order(x.id), reverse=True)
    return letters[:limit]


def job_document(job: JobInfo) -> dict[str, Any]:
    """The job as ``flowline jobs --json`` prints it (see the module docstring)."""
    doc = asdict(job)
    return {key: doc[key] for key in _JOB_KEYS}


def letter_document(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as ``flowline jobs --state dead --json`` prints it."""
    r = letter.record
    message = None
    if letter.kind == "message":
        message = {k: r.get(k) for k in ("stream", "sequence", "subject")}
    return {
        "id": letter.id,
        "kind": letter.kind,
        "stage": r.get("stage"),
        "job_id": r.get("job_id"),
        "queue": r.get("queue"),
        "topic": r.get("topic"),
        "message": message,
        "attempts": r.get("attempts"),
        "error": r.get("error"),
        "traceback": r.get("traceback"),
        "failed_at": r.get("failed_at"),
    }


_JOB_KEYS = (
    *("id", "queue", "topic", "state", "attempt", "progress", "result", "error", "traceback"),
    *("created", "finished", "due", "running_on", "origin", "message", "dead_letter"),
)


def job_info(
    job_id: str,
    queue: str,
    subjects: Mapping[str, str],
    h: dict[str, str],
    holder: str = "",
    due: str | None = None,
    letter: DeadLetter | None = None,
) -> JobInfo:
    """The `JobInfo` of a job record (its hash's fields, as text), as every store reads it.

    Args:
        holder: the consumer holding the job ('' when none does).
        due: when a delayed job is due (ms, as text).
        letter: a failed job's dead letter.
    """
    origin = h.get("origin")
    return JobInfo(
        id=job_id,
        topic=h.get("topic", ""),
        state="running" if holder else h.get("state", ""),
        attempt=int(h.get("attempt", 0)),
        progress=float(h.get("progress", 0)),
        result=json.loads(h["result"]) if "result" in h else None,
        error=h.get("error"),
        created=_seconds(h.get("created")),
        finished=_seconds(h.get("finished")),
        queue=queue,
        origin=origin,
        message=_source(job_id, origin, subjects),
        due=_seconds(due),
        running_on=holder or None,
        traceback=letter.record.get("traceback") if letter is not None else None,
        dead_letter=letter.id if letter is not None else None,
    )


def _source(job_id: str, origin: str | None, subjects: Mapping[str, str]) -> SourceMessage | None:
    """The message of a routed job's id ``<stream>:<sequence>:<index>`` (replays keep the id).

    `subjects` are the pipeline's (`subjects_of`); with one, a stream of another name (one
    that captured the subject before flowline looked) is still that subject's.
    """
    if not subjects or origin not in ("stream", "replay"):
        return None
    if job_id.startswith(("key:", "direct:", "cron:")):
        return None
    parts = job_id.rsplit(":", 2)
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    subject = subjects.get(parts[0])
    if subject is None and len(subjects) == 1:
        subject = next(iter(subjects.values()))
    return SourceMessage(parts[0], int(parts[1]), subject)


async def _letter_of(
    redis: Redis, queue: str, job_id: str, finished: str | None
) -> DeadLetter | None:
    """The dead letter of a failed job: written by the same script call that set `finished`."""
    store = QueueKeys(queue).dead
    if finished is None:
        high, low = "+", "-"
    else:
        at = int(float(finished))
        high, low = str(at + CLOCK_SKEW_MS), str(max(0, at - CLOCK_SKEW_MS))
    for _ in range(MAX_PAGES):
        entries: Any = await redis.xrevrange(store, high, low, count=PAGE)
        for entry, fields in entries:
            if fields.get(b"id") == job_id.encode():
                return _letter(store, entry, fields)
        if len(entries) < PAGE:
            return None
        high = "(" + _s(entries[-1][0])
    return None


def _letter(store: str, entry: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(_s(entry), store, json.loads(fields[b"record"]))


def _record(flat: list[bytes]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _seconds(ms: str | None) -> float | None:
    return float(ms) / 1000 if ms else None


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
