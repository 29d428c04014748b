"""The live feed of events from every process: the event log, sent to the page as it grows.

``/events/stream`` is a Server-Sent Events response: `eventlog.tail` follows the pipelines'
event logs (the last `BACKLOG` events first, then each as it is recorded) and every event goes
out as one server-rendered table row. The browser's `EventSource` (``dashboard.js``) puts each
row on top, and on a dropped connection reconnects by itself with the last id it saw, from
which the feed goes on (``Last-Event-ID``), so no event is shown twice or skipped.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..runtime import eventlog

if TYPE_CHECKING:
    import jinja2
    from redis.asyncio import Redis

    from ..runtime.eventlog import Recorded

T = TypeVar("T")

BACKLOG = 50  # events a new page starts with
BAD = frozenset({"job:failed", "dead-letter"})


@dataclass(frozen=True)
class Row:
    """What one row shows of an event."""

    record: Recorded
    job: str | None  # the job it is about, linked to its page
    about: list[str]  # short facts: topic, attempt, progress, error...
    bad: bool

    @property
    def event(self) -> Any:
        return self.record.event


def row(record: Recorded) -> Row:
    """The facts of an event worth a glance; the rest of its data is in the row's details."""
    event = record.event
    data: dict[str, Any] = event.data
    job = data.get("job")
    job_id = job.get("id") if isinstance(job, dict) else data.get("id")
    about = []
    if isinstance(job, dict):
        about.append(f"{job.get('topic')} attempt {job.get('attempt')}")
    for key, label in (("progress", "progress {}%"), ("delay", "retry in {:.2f}s")):
        if isinstance(data.get(key), int | float):
            about.append(label.format(data[key]))
    error = data.get("error")
    if isinstance(error, dict):
        about.append(f"{error.get('type')}: {error.get('message')}")
    elif error is not None:
        about.append(str(error))
    if event.name == "job:complete" and "result" in data:
        text = json.dumps(data["result"])
        about.append(f"result {text if len(text) <= 60 else text[:59] + '…'}")
    if isinstance(data.get("jobs"), list):
        about.append(f"{len(data['jobs'])} jobs")
    tick = data.get("event")
    if event.name == "cron" and isinstance(tick, dict):
        about.append(f"tick {tick.get('scheduled')}")
    bad = event.name in BAD or event.name.startswith("error")
    return Row(record, str(job_id) if job_id else None, about, bad)


def names(raw: str) -> list[str]:
    """Patterns from the filter box: separated by spaces or commas."""
    return [n for n in re.split(r"[\s,]+", raw) if n]


async def stream(
    redis: Redis,
    pipelines: list[str],
    patterns: list[str],
    template: jinja2.Template,
    since: str | None,
    closing: asyncio.Event,
    **context: Any,
) -> AsyncIterator[str]:
    """Server-Sent Events, one per recorded event: ``id`` its log id, ``data`` its row.

    Ends when `closing` is set: a stopping dashboard does not wait for its open feeds.
    """
    if since:
        source = eventlog.tail(redis, pipelines, patterns, since=since)
    else:
        source = eventlog.tail(redis, pipelines, patterns, last=BACKLOG)
    # Tells the page the stream is open even while no event comes.
    yield "event: ready\ndata: \n\n"
    async for record in _until(closing, source):
        html = template.render(r=row(record), **context)
        lines = "".join(f"data: {line}\n" for line in html.splitlines() if line.strip())
        yield f"id: {record.id}\nevent: row\n{lines}\n"


# Reads of the log being cancelled: kept until they end (a blocked XREAD ends within a second).
_ending: set[asyncio.Future[Any]] = set()


async def _until(stop: asyncio.Event, source: AsyncIterator[T]) -> AsyncIterator[T]:
    """`source`'s items until `stop` is set or the reader goes away; then `source` is closed.

    A wait for the next item is cancelled rather than waited for: the log's reader blocks in
    Redis for up to a second, and neither a stopping server nor a closed page should wait.
    """
    stopping = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[T] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(source))
            await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                return
            done, step = step, None
            try:
                item = done.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stopping.cancel()
        if step is not None and not step.done():
            step.cancel()  # the source ends with it: cancelled inside its wait
            _ending.add(step)
            step.add_done_callback(_ending.discard)
        else:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
