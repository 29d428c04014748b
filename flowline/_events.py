"""The pipeline's event bus: `on`, `once`, `off` and `emit`, stage-aware.

Emitting is on every hot path, so an event nobody listens to costs one dict lookup.
A listener that raises is logged and never breaks the pipeline.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("flowline.events")

Listener = Callable[["Event"], Awaitable[None] | None]


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
    """Listeners by event name; ``*`` hears everything, ``error`` every ``error:<stage>``."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self._listeners: dict[str, list[tuple[Listener, bool]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
            return
        kept = [(fn, once) for fn, once in self._listeners.get(name, []) if fn is not listener]
        self._listeners[name] = kept

    def _add(self, name: str, listener: Listener, *, once: bool) -> None:
        if not callable(listener):
            raise TypeError(f"listener for {name!r} must be callable, got {listener!r}")
        self._listeners.setdefault(name, []).append((listener, once))

    def wants(self, name: str) -> bool:
        """Whether emitting `name` would reach any listener (lets hot paths skip building data)."""
        ls = self._listeners
        return bool(ls.get(name) or ls.get("*") or (name.startswith("error:") and ls.get("error")))

    def emit(self, name: str, stage: str, **data: Any) -> None:
        """Deliver an event to its listeners, to ``error`` for ``error:*`` names, and to ``*``."""
        if not self.wants(name):
            return
        event = Event(name, stage, self.pipeline, data)
        self._deliver(name, event)
        if name.startswith("error:"):
            self._deliver("error", event)
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
