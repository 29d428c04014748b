"""The event log: every process's lifecycle events, in one bounded Redis stream per pipeline.

    flowline:{events:<pipeline>}         stream; each entry is one batch of one process's
                                         events: ``process`` (its id), ``count``, ``events``
                                         (a JSON array of [name, stage, seq, time ns, data])
                                         and ``encoding``: ``zlib`` (``events`` compressed) or
                                         none (plain JSON, as flowline 0.1 wrote)
    flowline:{events:<pipeline>}:index   list of "<entry id> <events so far>", oldest first:
                                         lets the append script trim by events, not entries

Writing: the runner attaches an `EventLog` to each pipeline's bus, which hands every
lifecycle event (`flowline._events.LIFECYCLE`, ``error:<stage>``) to that pipeline's buffer as
it is emitted, listened to or not: a tuple and one short call on the hot path. Every `CHUNK`
events the buffer encodes what gathered with one orjson call mapped over the tuples
(`encode_all`: no Python frame per event), so raw events live about a millisecond; a
background task appends what is encoded every `FLUSH_INTERVAL`, as one entry per pipeline, in
one script call: one round trip and one XADD per flush, never one per event. The price of
encoding a little after the emit is that a handler which changes ``job.data`` in place at
once may show the change in its ``job:start`` (as it would to an async local listener). A full
buffer (Redis slow or away) drops its oldest events, counted and warned about once a minute;
readers see the gaps they leave in the per-process ``seq``. The stream keeps the newest `retention`
events at least, and at most one entry more.

Why a batch per entry: an XADD per event cost Redis about 2.5 us per event in the benchmark (a
scripted XADD and its AOF record), which alone took about a tenth of the worker's throughput;
one entry per flush costs it about 0.4 us per event of plain JSON, copying bytes (the query
buffer, Lua's copy, the stream's, the AOF's), and slows the commands around it as those copies
push the worker's keys out of the CPU's caches. Why zlib: the events of one batch repeat their
names and keys, so level 1 makes them about a tenth as large for about 0.2 us per event in the
writer (measured on the benchmark's events), and Redis, which the worker waits on, handles a
tenth of the bytes. Why not inside the
completion script: that script touches only the keys of one queue (one Redis Cluster slot),
while a pipeline's log gathers its queues, its stream side and its cron in one key, so that a
reader needs one XREAD.

Reading: `tail` (``flowline events``) and `listen` follow the streams with XREAD BLOCK. An
event's id is ``<entry id>/<index in the entry>``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import random
import re
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._events import LIFECYCLE, Event, matches
from .._settings import Settings
from ..errors import ConfigurationError
from .cluster import is_cluster
from .connections import connect_redis
from .job import JobContext

if TYPE_CHECKING:
    from .._events import EventBus, RawEvent, Sink
    from .._pipeline import Pipeline

log = structlog.get_logger("flowline.eventlog")

# Seconds events gather before a flush: each flush is a redis-py call (~100 us of this
# process's CPU), so 40 a second cost under 0.5% of a core, and a reader sees an event
# within about this long.
FLUSH_INTERVAL = 0.025
MAX_PER_ENTRY = 1000  # events per entry
CHUNK = 50  # events per orjson call, and the most that wait unencoded
MAX_ENTRY = 1 << 20  # bytes of JSON per entry (more events wait for the next)
MAX_EVENT = 16 * 1024  # bytes of JSON per event; larger values are replaced by a note
WARN_EVERY = 60.0  # seconds between two warnings about dropped events
IDLE_WAIT = 0.1  # the longest a new event waits for its flush after a quiet spell
BLOCK_MS = 1000  # how long one XREAD waits for new entries
LISTENER_CLIENT = "flowline-listen"  # the Redis client name of `listen`'s connection


# KEYS: a pipeline's event stream, its index. ARGV: retention, process id, number of events,
# the events (one JSON array, zlib-compressed). Returns the new entry's id.
APPEND = """
local stream, index = KEYS[1], KEYS[2]
local retention, n = tonumber(ARGV[1]), tonumber(ARGV[3])
local function total_of(row) return tonumber(string.match(row, ' (%d+)$')) end
-- Both or neither: a log whose stream or index was deleted starts again from nothing.
if redis.call('EXISTS', stream) == 0 or redis.call('LLEN', index) == 0 then
  redis.call('DEL', stream, index)
end
local last = redis.call('LINDEX', index, -1)
local total = n + (last and total_of(last) or 0)
local id = redis.call('XADD', stream, '*', 'process', ARGV[2], 'count', n, 'events', ARGV[4],
  'encoding', 'zlib')
redis.call('RPUSH', index, id .. ' ' .. total)
-- Drop the oldest entries all of whose events are older than the newest `retention`.
local floor, dropped = total - retention, false
while true do
  local head = redis.call('LINDEX', index, 0)
  if total_of(head) > floor then
    if dropped then redis.call('XTRIM', stream, 'MINID', string.match(head, '^(%S+)')) end
    return id
  end
  redis.call('LPOP', index)
  dropped = true
end
"""


def stream_key(pipeline: str) -> str:
    """The Redis stream holding `pipeline`'s events (its own hash tag: one Cluster slot)."""
    return f"flowline:{{events:{pipeline}}}"


def index_key(pipeline: str) -> str:
    """The list the append script trims `pipeline`'s stream by (same hash tag)."""
    return stream_key(pipeline) + ":index"


# -- the JSON view of an event's data (one place: writers encode it, readers rebuild from it) ---


def _view(value: Any) -> Any:
    """What orjson cannot encode itself (it does dataclasses and dates) becomes plain JSON."""
    if type(value) is JobContext:
        return {
            "id": value.id,
            "topic": value.topic,
            "attempt": value.attempt,
            "queue": value.queue,
            "data": value.data,
        }
    if isinstance(value, BaseException):
        return {"type": type(value).__name__, "message": str(value)}
    return repr(value)


_dumps = orjson.dumps
_fast = functools.partial(orjson.dumps, default=_view)
# Int keys become strings, as with the standard library; a slower path, so the fallback only.
_NON_STR_KEYS = orjson.OPT_NON_STR_KEYS


def encode(event: RawEvent) -> bytes:
    """One event as the log stores it: ``[name, stage, seq, time ns, data]``, data's JSON view.

    NaN and infinities become null; a key that is not a string its str; a value orjson
    cannot encode at all (a cycle, an int past 64 bits) makes every value its repr; data
    past `MAX_EVENT` bytes is clipped (`_clipped`).
    """
    name, stage, seq, at_ns, data = event
    try:
        text = _fast(event)
    except orjson.JSONEncodeError:
        try:
            text = _fast(event, option=_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            text = _dumps((name, stage, seq, at_ns, {k: _repr(v) for k, v in data.items()}))
    if len(text) > MAX_EVENT:
        text = _dumps((name, stage, seq, at_ns, _clipped(data)))
    return text


def encode_all(events: list[RawEvent]) -> list[tuple[int, bytes]]:
    """`events` as JSON, in pieces: (how many events, their JSON arrays comma-separated).

    Each piece is one orjson call over up to `CHUNK` buffered tuples: about 0.1 us an event,
    where a call per event costs 2 us once hundreds of results are alive (measured; the
    allocator, not the encoding). A piece whose JSON passes `MAX_EVENT`, or that orjson
    refuses, is encoded event by event (`encode`: clipped, or as reprs).
    """
    pieces = []
    for i in range(0, len(events), CHUNK):
        part = events[i : i + CHUNK]
        try:
            text: bytes | None = _fast(part)
        except orjson.JSONEncodeError:
            text = None
        if text is not None and len(text) <= MAX_EVENT:  # so no event in it is larger
            pieces.append((len(part), text[1:-1]))
        else:
            pieces.append((len(part), b",".join(map(encode, part))))
    return pieces


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a value whose repr raises: note it rather than lose the event
        return f"<unrepresentable {type(value).__name__}: {exc!r}>"


def _size(value: Any) -> tuple[Any, int]:
    """`value` (or its repr, if orjson refuses it) and the length of its JSON."""
    try:
        return value, len(_dumps(value, default=_view, option=_NON_STR_KEYS))
    except orjson.JSONEncodeError:
        text = _repr(value)
        return text, len(text) + 2


def _clipped(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each large value replaced by a note of its size (a job keeps its head)."""
    out: dict[str, Any] = {}
    limit = MAX_EVENT // max(1, len(data)) - 64
    for k, v in data.items():
        v, size = _size(v)
        if size <= limit:
            out[k] = v
        elif type(v) is JobContext:
            left_out = f"<{_size(v.data)[1]} bytes of JSON, left out>"
            out[k] = {**_view(v), "data": left_out}
        else:
            out[k] = f"<{size} bytes of JSON, left out>"
    return out


# -- writing ------------------------------------------------------------------------------------


class _Buffer:
    """One pipeline's events on their way to Redis: raw until `CHUNK` gather, then JSON.

    Its `append` is the bus's sink. Encoding every `CHUNK` events, rather than at the flush,
    is what keeps the log cheap: a raw event (its tuple, its data dict, the job it names)
    that waited for a 25 ms flush outlived two of the garbage collector's young generations,
    and the full collections its survivors set off took more of the worker than everything
    else the log does (measured: 6 instead of 3 full collections in a 50,000-job run, each
    ~60 ms). The JSON pieces are bytes, which the collector never looks at.
    """

    __slots__ = ("capacity", "events", "on_drop", "pending", "pieces")

    def __init__(self, capacity: int, on_drop: Callable[[int], None]) -> None:
        self.capacity = capacity
        self.events: list[RawEvent] = []  # raw, newest last, fewer than CHUNK
        self.pieces: collections.deque[tuple[int, bytes]] = collections.deque()  # oldest first
        self.pending = 0  # events in `pieces`
        self.on_drop = on_drop

    def __len__(self) -> int:
        return self.pending + len(self.events)

    def append(self, event: RawEvent) -> None:
        events = self.events
        events.append(event)
        if len(events) >= CHUNK:
            self.seal()

    def seal(self) -> None:
        """Encode the raw events into a piece; past `capacity`, drop the oldest events."""
        events, self.events = self.events, []
        # The oldest go first: whole pieces (up to CHUNK events each), then raw events.
        excess = len(events) + self.pending - self.capacity
        while excess > 0 and self.pieces:
            excess -= self._drop_oldest()
        if excess > 0:
            self.on_drop(excess)
            events = events[excess:]
        if events:
            try:
                pieces = encode_all(events)
            except Exception as exc:  # the sink must not raise; `encode` should never get here
                log.warning("events not encoded; dropped", error=repr(exc), count=len(events))
                self.on_drop(len(events))
                return
            self.pieces.extend(pieces)
            self.pending += len(events)

    def _drop_oldest(self) -> int:
        count, _ = self.pieces.popleft()
        self.pending -= count
        self.on_drop(count)
        return count

    def take(self) -> tuple[int, list[tuple[int, bytes]]]:
        """The oldest pieces, up to `MAX_PER_ENTRY` events and `MAX_ENTRY` bytes (at least one),
        and how many events they hold."""
        taken: list[tuple[int, bytes]] = []
        count = size = 0
        pieces = self.pieces
        while pieces:
            n, body = pieces[0]
            if taken and (count + n > MAX_PER_ENTRY or size + len(body) > MAX_ENTRY):
                break
            taken.append(pieces.popleft())
            count, size = count + n, size + len(body) + 1
        self.pending -= count
        return count, taken

    def give_back(self, count: int, taken: list[tuple[int, bytes]]) -> None:
        """Put what `take` returned back in front, in order (within `capacity`)."""
        self.pieces.extendleft(reversed(taken))
        self.pending += count
        while len(self) > self.capacity and self.pieces:
            self._drop_oldest()


class EventLog:
    """This process's writer of the event log: buffers lifecycle events, appends them in batches.

    Args:
        redis: the process's client.
        process: this process's id (the runner's consumer name: host, pid, a random suffix).
        retention: how many of the newest events each pipeline's log keeps, at least.
        capacity: events each pipeline's buffer holds while Redis is slow or away (default:
            `retention`, at least 1,000); past it the oldest are dropped.
        interval: seconds events gather before a flush (doubling, up to `IDLE_WAIT`, while
            there are none).
    """

    def __init__(
        self,
        redis: Redis,
        process: str,
        retention: int,
        *,
        capacity: int | None = None,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.redis = redis
        self.process = process
        self.retention = retention
        self.capacity = capacity or max(retention, 1000)
        self.interval = interval
        self.written = 0  # events appended to Redis
        self.dropped = 0  # events lost to a full buffer
        self._buffers: dict[str, _Buffer] = {}
        self._sinks: list[tuple[EventBus, Sink]] = []
        self._append = redis.register_script(APPEND)
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._warned_at = -WARN_EVERY
        self._warned_dropped = 0

    def attach(self, pipelines: Iterable[Pipeline]) -> None:
        """Record the lifecycle events of `pipelines` from now on (buffered until `start`)."""
        for pipeline in pipelines:
            buffer = _Buffer(self.capacity, self._dropped)
            sink = buffer.append  # one bound method: `detach` finds the sink by identity
            if pipeline.bus.attach(sink):
                self._buffers[pipeline.name] = buffer
                self._sinks.append((pipeline.bus, sink))
            # else: another runner in this process records this pipeline's bus already.

    def detach(self) -> None:
        """Stop recording; what is buffered is still written by `close`."""
        for bus, sink in self._sinks:
            bus.detach(sink)
        self._sinks.clear()

    @property
    def buffered(self) -> int:
        """Events waiting for a flush."""
        return sum(map(len, self._buffers.values()))

    def _dropped(self, count: int) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            log.warning(
                "event log buffer full: oldest events dropped (Redis slow or unreachable)",
                dropped=self.dropped - self._warned_dropped,
                capacity=self.capacity,
            )
            self._warned_at = now
            self._warned_dropped = self.dropped

    def start(self) -> None:
        """Start the background task that appends buffered events."""
        self._task = asyncio.create_task(self._run(), name="eventlog")

    async def close(self, within: float = 2.0) -> None:
        """Stop recording, write what is buffered (for at most `within` seconds), stop."""
        self.detach()
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._task, within)
        except TimeoutError:
            log.warning("event log not flushed at shutdown", events=self.buffered)

    async def flush(self) -> None:
        """Write what is buffered now (the background task does it on its own)."""
        while self.buffered:
            await self._flush()

    async def _run(self) -> None:
        # Polls instead of being woken per event: waking would cost the hot path a call.
        wait, failures = self.interval, 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            if not self.buffered:
                if self._closing:
                    return
                wait = min(IDLE_WAIT, wait * 2)
                continue
            wait = self.interval
            try:
                # What gathered since the last flush, and more only while a full entry waits
                # (or at close): draining to empty would, under load, turn the interval into
                # back-to-back calls of a few events each.
                await self._flush()
                while (self._closing and self.buffered) or self._full():
                    await self._flush()
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
                log.warning("events not written; retrying", error=repr(exc), delay=delay)
                if self._closing:
                    return
                wait = delay
            if self._closing and not self.buffered:
                return

    def _full(self) -> bool:
        return any(b.pending >= MAX_PER_ENTRY for b in self._buffers.values())

    async def _flush(self) -> None:
        """Append, for each pipeline with events buffered, an entry of its oldest ones."""
        for pipeline, buffer in list(self._buffers.items()):  # awaits: a copy to iterate
            if buffer.events:
                buffer.seal()
            if buffer.pieces:
                await self._flush_one(pipeline, buffer)

    async def _flush_one(self, pipeline: str, buffer: _Buffer) -> None:
        count, taken = buffer.take()
        try:
            await self._append(
                keys=[stream_key(pipeline), index_key(pipeline)],
                args=[self.retention, self.process, count, zlib.compress(_entry_json(taken), 1)],
            )
        except BaseException:
            # Back to the front, in order: a call whose reply was lost may have gone
            # through, and its events are then written twice (same seq).
            buffer.give_back(count, taken)
            raise
        self.written += count


def _entry_json(pieces: list[tuple[int, bytes]]) -> bytes:
    """One JSON array of the events of `pieces`."""
    return b"[" + b",".join(body for _, body in pieces) + b"]"


# -- reading ------------------------------------------------------------------------------------

_SINCE = re.compile(r"^(?P<entry>\d+(-\d+)?)(/(?P<index>\d+))?$")
_LOCAL_ONLY = ("stream", "route")


def check_names(names: Sequence[str]) -> None:
    """Raise `ConfigurationError` unless each name can match an event the log records."""
    recorded = (*sorted(LIFECYCLE), "error:<stage>")
    for name in names:
        if name in ("*", "error", "job:*", "route:*", "error:*") or name in LIFECYCLE:
            continue
        if name.startswith("error:") and len(name) > 6 and "*" not in name:
            continue
        hint = (
            f"{name!r} is delivered only in the process where it happens (listen with pipeline.on)"
            if name in _LOCAL_ONLY or name.startswith("cron:")
            else f"{name!r} is not an event name or pattern the event log records"
        )
        raise ConfigurationError(f"{hint}; give *, error, job:* or one of: {', '.join(recorded)}")


def check_since(since: str) -> None:
    """Raise `ConfigurationError` unless `since` is ``$``, ``0`` or an entry or event id."""
    if since != "$" and not _SINCE.match(since):
        raise ConfigurationError(
            f"since must be $ (new events only), 0 (every event kept) or an event id like "
            f"1764600000000-0/3, got {since!r}"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """One event of the event log, and which process recorded it, when.

    Attributes:
        id: ``<entry id>/<index>``; reading ``since=id`` goes on after this event.
        process: the recording process's id (host, pid and a random suffix).
        seq: the event's number in that process and pipeline; a gap means events were lost
            (dropped by the writer, or trimmed before they were read).
        time: when the event was emitted (epoch seconds, to the millisecond).
        event: the event, its data as plain JSON values.
    """

    id: str
    process: str
    seq: int
    time: float
    event: Event


def _entry(pipeline: str, entry: bytes | str, fields: dict[bytes, bytes]) -> list[Recorded]:
    """The events of one stream entry."""
    entry_id = _decoded(entry)
    process = fields[b"process"].decode()
    out = []
    events = fields[b"events"]
    if fields.get(b"encoding") == b"zlib":
        events = zlib.decompress(events)
    for i, raw in enumerate(orjson.loads(events)):
        name, stage, seq, at_ns, data = raw
        event = Event(name, stage, pipeline, data)
        out.append(Recorded(f"{entry_id}/{i}", process, seq, at_ns / 1e9, event))
    return out


def _decoded(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _wanted(names: Sequence[str]) -> Callable[[str], bool]:
    if not names or "*" in names:
        return lambda name: True
    return lambda name: any(matches(pattern, name) for pattern in names)


def _order(event_id: str) -> tuple[int, int, int]:
    entry, _, index = event_id.partition("/")
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0), int(index or 0)


async def _last(
    redis: Redis, pipelines: Sequence[str], wanted: Callable[[str], bool], count: int
) -> list[Recorded]:
    """The last `count` wanted events of `pipelines`, oldest first (pages back through each)."""
    found: list[Recorded] = []
    for pipeline in pipelines:
        mine: list[Recorded] = []
        end = "+"
        while len(mine) < count:
            page: Any = await redis.xrevrange(stream_key(pipeline), max=end, count=50)
            for entry, fields in page:
                mine += reversed(
                    [r for r in _entry(pipeline, entry, fields) if wanted(r.event.name)]
                )
            if len(page) < 50:
                break
            end = "(" + _decoded(page[-1][0])  # exclusive: that entry is read
        found += mine[:count]
    found.sort(key=lambda r: _order(r.id))
    return found[-count:]


async def tail(
    redis: Redis,
    pipelines: Sequence[str],
    names: Sequence[str] = (),
    *,
    since: str = "$",
    last: int | None = None,
    block_ms: int = BLOCK_MS,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Recorded]:
    """Follow the event log of `pipelines`, yielding the events `names` match, forever.

    Args:
        names: patterns as the bus reads them (``job:failed``, ``job:*``, ``error``, ``*``);
            none means every event.
        since: ``$`` for events recorded from now on, ``0`` for every event still kept, or an
            event id (``<entry>/<index>``; an entry id alone: after its last event).
        last: first the last `last` matching events, then new ones (`since` is ignored).
        stop: ends the iteration within `block_ms` once set (no cancellation needed: redis-py
            can swallow a CancelledError that lands mid-command).

    Raises:
        ConfigurationError: a name is not one the log records, or `since` is not an id.
    """
    check_names(names)
    check_since(since)
    wanted = _wanted(names)
    keys = {stream_key(p): p for p in pipelines}
    cursor: dict[str, str] = {}
    if last is not None:
        for rec in await _last(redis, pipelines, wanted, last):
            yield rec
        since = "$"
    start = _SINCE.match(since)
    for key, pipeline in keys.items():
        if start is None:
            # The newest entry now, not "$": a later XREAD with "$" would miss what arrived
            # between two reads.
            newest: Any = await redis.xrevrange(key, count=1)
            cursor[key] = _decoded(newest[0][0]) if newest else "0-0"
            continue
        cursor[key] = start["entry"]
        if start["index"] is not None:  # the rest of that entry first
            rows: Any = await redis.xrange(key, min=start["entry"], max=start["entry"])
            for entry, fields in rows:
                for rec in _entry(pipeline, entry, fields)[int(start["index"]) + 1 :]:
                    if wanted(rec.event.name):
                        yield rec
    stopped = (lambda: False) if stop is None else stop.is_set
    follow = _follow_each if is_cluster(redis) and len(cursor) > 1 else _follow
    async with contextlib.aclosing(follow(redis, cursor, block_ms, stopped)) as batches:
        async for key, entries in batches:
            for entry, fields in entries:
                for rec in _entry(keys[key], entry, fields):
                    if wanted(rec.event.name):
                        yield rec


async def _follow(
    redis: Redis, cursor: dict[str, str], block_ms: int, stopped: Callable[[], bool]
) -> AsyncGenerator[tuple[str, Any], None]:
    """(stream, entries) after `cursor`'s ids, as XREAD BLOCK finds them, until `stopped`;
    waits out Redis outages."""
    failures = 0
    while not stopped():
        try:
            reply: Any = await redis.xread(cursor, count=100, block=block_ms)  # type: ignore[arg-type]
            failures = 0
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            failures += 1
            delay = min(5.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
            log.warning("reading events failed; retrying", error=repr(exc), delay=round(delay, 2))
            await asyncio.sleep(delay)
            continue
        for raw_key, entries in reply or ():
            key = _decoded(raw_key)
            if entries:
                cursor[key] = _decoded(entries[-1][0])
            yield key, entries


async def _follow_each(
    redis: Redis, cursor: dict[str, str], block_ms: int, stopped: Callable[[], bool]
) -> AsyncGenerator[tuple[str, Any], None]:
    """`_follow` on a Redis Cluster, which refuses an XREAD of keys in several slots (each
    pipeline's log has its own): one blocking reader per stream, merged as they answer, so a
    quiet log never delays a busy one."""
    batches: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=len(cursor))
    halt = asyncio.Event()

    async def read(key: str) -> None:
        async for batch in _follow(redis, {key: cursor[key]}, block_ms, halt.is_set):
            await batches.put(batch)

    readers = [asyncio.create_task(read(key), name=f"events:{key}") for key in cursor]
    try:
        while not stopped():
            for task in readers:
                if task.done() and not task.cancelled() and (failed := task.exception()):
                    raise failed  # not an outage (`_follow` waits those out): a real error
            with contextlib.suppress(TimeoutError):
                yield await asyncio.wait_for(batches.get(), block_ms / 1000)
    finally:
        halt.set()  # a reader whose cancel redis-py swallowed still ends within block_ms
        for task in readers:
            task.cancel()
        await asyncio.wait(readers, timeout=block_ms / 1000 + 1)


async def listen(
    pipeline: Pipeline | str,
    *names: str,
    settings: Settings | None = None,
    redis_url: str | None = None,
    since: str = "$",
) -> AsyncIterator[Event]:
    """Yield the lifecycle events of `pipeline` from every process, as they are recorded.

        async for event in flowline.listen(pipeline, "job:failed"):
            print(event.job["id"], event.error["message"])

    The events are those a local listener receives (``job:*``, ``dead-letter``,
    ``route:complete``, ``cron``, ``error:<stage>``), rebuilt from the pipeline's event log in
    Redis, with one difference: their data are plain JSON values. A job is a dict (``id``,
    ``topic``, ``attempt``, ``queue``, ``data``), an error ``{"type", "message"}``, a cron
    tick ``{"topic", "scheduled"}``, and anything else JSON cannot hold its repr. Best effort:
    see the README's "Events from every process" for what is promised.

    Exiting the loop closes the connection (at once with ``contextlib.aclosing``, otherwise
    when the generator is collected). While Redis is away it waits and resumes where it was.

    Args:
        pipeline: the pipeline, or its name.
        names: patterns as for `pipeline.on` (``job:failed``, ``job:*``, ``error``, ``*``);
            none means every event.
        settings: where Redis is (default: `Settings.from_env()`; `redis_url` overrides it).
        since: ``$`` for events from now on, ``0`` for every event still kept, or an event id.

    Raises:
        ConfigurationError: a name the log does not record, a bad `since`, or Redis
            unreachable at the start.
    """
    check_names(names)
    check_since(since)
    name = pipeline if isinstance(pipeline, str) else pipeline.name
    if settings is None:
        settings = Settings.from_env(redis_url=redis_url)
    elif redis_url is not None:
        settings = dataclasses.replace(settings, redis_url=redis_url)
    # Named, so an operator's CLIENT LIST tells listeners from workers (both block in XREAD).
    options = {"client_name": LISTENER_CLIENT, **settings.redis_options}
    settings = dataclasses.replace(settings, redis_options=options)
    redis = await connect_redis(settings, max_connections=2)
    try:
        async for rec in tail(redis, [name], names, since=since):
            yield rec.event
    finally:
        with contextlib.suppress(Exception):
            await redis.aclose()
