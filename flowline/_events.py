"""The pipeline's event bus: `on`, `once`, `off` and `emit`, stage-aware.

Emitting is on every hot path, so an event nobody listens to costs one dict lookup.
A listener that raises is logged and never breaks the pipeline. A sink (the runtime's Redis
event log) may be attached: it is handed every lifecycle event, listened to or not.

Names a listener may give: an event's name, ``*`` (every event), ``error`` (every
``error:<stage>``) and ``<family>:*`` (every ``<family>:<anything>``, e.g. ``job:*``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("flowline.events")
_now = time.time_ns

Listener = Callable[["Event"], Awaitable[None] | None]
# A lifecycle event as a sink receives it: (name, stage, seq, time ns, data), seq counting the
# bus's recorded events from 1. The sink must not raise (the event log's catches what it could).
RawEvent = tuple[str, str, int, int, dict[str, Any]]
Sink = Callable[[RawEvent], None]

# What happened to a job, a message's jobs or a cron tick: what the event log records of every
# process, with every ``error:<stage>``. Not ``stream`` and ``route`` (one per message, carrying
# the decoded event: listen locally for those) nor ``cron:<topic>`` (a copy of ``cron``).
LIFECYCLE = frozenset(
    {
        "job:start",
        "job:progress",
        "job:complete",
        "job:retry",
        "job:failed",
        "job:cancelled",
        "dead-letter",
        "route:complete",
        "cron",
    }
)


def is_lifecycle(name: str) -> bool:
    """Whether `name` is a lifecycle event (see `LIFECYCLE`), ``error:<stage>`` included."""
    return name in LIFECYCLE or name.startswith("error:")


def matches(pattern: str, name: str) -> bool:
    """Whether a listener of `pattern` hears an event called `name` (the bus's rules)."""
    if pattern == name or pattern == "*":
        return True
    if pattern == "error":
        return name.startswith("error:")
    return pattern.endswith(":*") and name.startswith(pattern[:-1])


def _family(name: str) -> str:
    """``job:start`` -> ``job:*``; names without a colon have no family."""
    head, colon, _ = name.partition(":")
    return f"{head}:*" if colon else ""


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in a pipeline.

    Attributes:
        name: the event's name, e.g. ``job:complete`` or ``error:route``.
        stage: the stage it happened in: ``stream``, ``decode``, ``route``, ``enqueue``, ``job``...
        pipeline: the pipeline's name.
        data: what it is about: ``event``, ``job``, ``error``, ``jobs``, ``progress``, ``result``...
    """

    name: str
    stage: str
    pipeline: str
    data: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, item: str) -> Any:
        # Lets listeners write `event.job` or `event.error` instead of `event.data["job"]`.
        try:
            return self.data[item]
        except KeyError:
            raise AttributeError(item) from None


class EventBus:
    """Listeners by event name; ``*`` hears everything, ``error`` every ``error:<stage>``,
    ``job:*`` every ``job:<anything>``."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self._listeners: dict[str, list[tuple[Listener, bool]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._families = 0  # how many ``<family>:*`` names have listeners: 0 skips the lookup
        self.sink: Sink | None = None
        self.recorded = 0  # lifecycle events handed to a sink so far

    def attach(self, sink: Sink) -> bool:
        """Hand every lifecycle event to `sink` from now on; False if another is attached."""
        if self.sink is not None:
            return False
        self.sink = sink
        return True

    def detach(self, sink: Sink) -> None:
        """Stop handing events to `sink` (if it is the one attached)."""
        if self.sink is sink:
            self.sink = None

    def on(self, name: str, listener: Listener | None = None) -> Any:
        """Call `listener` for every event called `name`; usable as a decorator."""
        if listener is None:
            return lambda fn: self.on(name, fn)
        self._add(name, listener, once=False)
        return listener

    def once(self, name: str, listener: Listener | None = None) -> Any:
        """Call `listener` for the next event called `name` only; usable as a decorator."""
        if listener is None:
            return lambda fn: self.once(name, fn)
        self._add(name, listener, once=True)
        return listener

    def off(self, name: str, listener: Listener | None = None) -> None:
        """Remove `listener` from `name`, or every listener of `name` when none is given."""
        if listener is None:
            self._listeners.pop(name, None)
        else:
            kept = [(fn, once) for fn, once in self._listeners.get(name, []) if fn is not listener]
            self._listeners[name] = kept
        self._count_families()

    def _add(self, name: str, listener: Listener, *, once: bool) -> None:
        if not callable(listener):
            raise TypeError(f"listener for {name!r} must be callable, got {listener!r}")
        self._listeners.setdefault(name, []).append((listener, once))
        self._count_families()

    def _count_families(self) -> None:
        self._families = sum(1 for k, v in self._listeners.items() if v and k.endswith(":*"))

    def wants(self, name: str) -> bool:
        """Whether emitting `name` would reach any listener or the sink (lets hot paths skip
        building data)."""
        if self.sink is not None and (name in LIFECYCLE or name.startswith("error:")):
            return True
        return self._heard(name)

    def _heard(self, name: str) -> bool:
        ls = self._listeners
        return bool(
            ls.get(name)
            or ls.get("*")
            or (name.startswith("error:") and ls.get("error"))
            or (self._families and ls.get(_family(name)))
        )

    def emit(self, name: str, stage: str, **data: Any) -> None:
        """Deliver an event to its listeners, to ``error`` for ``error:*`` names, to
        ``<family>:*``, to ``*``, and a lifecycle event to the sink."""
        sink = self.sink
        if sink is not None and (name in LIFECYCLE or name.startswith("error:")):
            # The sink only keeps the tuple: what it costs to encode is paid off the hot path.
            self.recorded += 1
            sink((name, stage, self.recorded, _now(), data))
        if not self._listeners or not self._heard(name):
            return
        event = Event(name, stage, self.pipeline, data)
        self._deliver(name, event)
        if name.startswith("error:"):
            self._deliver("error", event)
        if self._families:
            family = _family(name)
            if family:
                self._deliver(family, event)
        self._deliver("*", event)

    def _deliver(self, key: str, event: Event) -> None:
        entries = self._listeners.get(key)
        if not entries:
            return
        if any(once for _, once in entries):
            self._listeners[key] = [(fn, once) for fn, once in entries if not once]
        for listener, _ in entries:
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(self._guard(result, event, listener))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("listener raised", event_name=event.name, listener=repr(listener))

    async def _guard(self, result: Awaitable[None], event: Event, listener: Listener) -> None:
        try:
            await result
        except Exception:
            log.exception("listener raised", event_name=event.name, listener=repr(listener))

    async def drain(self) -> None:
        """Wait for async listeners still running (used on shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
