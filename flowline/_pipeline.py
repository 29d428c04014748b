"""`Pipeline`: a validated chain of stages plus the handlers that dequeue its topics.

A pipeline is still only a description: `flowline worker` (or `flowline.run`) compiles it
onto NATS and Redis and runs it. It is also the event bus users listen on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from . import _binding, _diagram
from ._events import EventBus, Listener
from ._stages import (
    _NAME_OK,
    Backoff,
    Cron,
    Job,
    Queue,
    Route,
    Source,
    Stage,
    Stream,
    label_from_callable,
    seconds,
)
from .errors import PipelineError

if TYPE_CHECKING:
    from datetime import timedelta

    from ._binding import Bound
    from .runtime.job import Handler
    from .runtime.preview import Preview
    from .runtime.queues import QueueHandle


@dataclass(frozen=True)
class Topic:
    """A dequeued topic: its handler, its queue and its failure policy."""

    name: str
    handler: Handler
    queue: Queue
    retries: int
    backoff: Backoff
    timeout: float | None

    @property
    def handler_name(self) -> str:
        return label_from_callable(self.handler)


class Pipeline:
    """Stages chained with ``>>``: one source, one `Route`, then one or more `Queue` s."""

    def __init__(self, stages: Sequence[Stage | Pipeline], *, name: str | None = None) -> None:
        self.stages: tuple[Stage, ...] = tuple(_flatten(stages))
        _check_order(self.stages)
        if name is not None and not _NAME_OK.match(name):
            # The name is the JetStream durable consumer's, which NATS refuses with '.', ' ', '*'.
            raise PipelineError(
                f"Pipeline name {name!r} may hold only letters, digits, '-' and '_'"
            )
        self.name = _default_name(self.stages) if name is None else name
        self.topics: dict[str, Topic] = {}
        self.bus = EventBus(self.name)
        self._runner: Bound | None = None  # set by the runtime's Runner while it runs

    # -- building -------------------------------------------------------------------------------

    def __rshift__(self, other: object) -> Pipeline:
        if not isinstance(other, (Stage, Pipeline)):
            return NotImplemented
        return Pipeline((self, other))

    def __rrshift__(self, other: object) -> Pipeline:
        if not isinstance(other, Stage):
            return NotImplemented
        return Pipeline((other, self))

    def named(self, name: str) -> Pipeline:
        """A copy of this pipeline called `name` (it names the JetStream durable consumer)."""
        if self.topics:
            raise PipelineError("name a pipeline before registering handlers on it")
        return Pipeline(self.stages, name=name)

    @property
    def source(self) -> Source:
        first = self.stages[0]
        assert isinstance(first, Source)  # guaranteed by _check_order
        return first

    @property
    def route(self) -> Route[Any] | None:
        return next((s for s in self.stages if isinstance(s, Route)), None)

    @property
    def queues(self) -> tuple[Queue, ...]:
        return tuple(s for s in self.stages if isinstance(s, Queue))

    def queue_for(self, topic: str) -> Queue:
        """The queue that owns `topic`: the one listing it, else the one listing no topics."""
        queues = self.queues
        if not queues:
            raise PipelineError(f"pipeline {self.name!r} has no Queue: add `>> Queue(name)`")
        for q in queues:
            if q.topics is not None and topic in q.topics:
                return q
        catch_all = [q for q in queues if q.topics is None]
        if not catch_all:
            names = ", ".join(q.name for q in queues)
            raise PipelineError(
                f"topic {topic!r} belongs to no queue of pipeline {self.name!r} ({names}): "
                f"list it in one Queue(topics=...) or add a Queue without topics"
            )
        return catch_all[0]

    # -- handlers -------------------------------------------------------------------------------

    @overload
    def dequeue(
        self,
        topic: str,
        handler: None = None,
        *,
        retries: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | timedelta | None = None,
    ) -> Callable[[Handler], Handler]: ...

    @overload
    def dequeue(
        self,
        topic: str,
        handler: Handler,
        *,
        retries: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | timedelta | None = None,
    ) -> Handler: ...

    def dequeue(
        self,
        topic: str,
        handler: Handler | None = None,
        *,
        retries: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | timedelta | None = None,
    ) -> Any:
        """Run `handler(job)` for every job of `topic`; usable as a decorator.

        Args:
            topic: the job topic, as a router names it.
            handler: an async (or sync) function taking a `JobContext`; its return value,
                JSON-serialisable, is stored as the job's result.
            retries: further attempts after a failure (default: the queue's).
            backoff: delays between attempts (default: the queue's).
            timeout: seconds before the handler fails with `JobTimeout` (default: the queue's).

        Raises:
            PipelineError: the topic is already dequeued, the handler is not callable, or no
                queue owns the topic.
        """
        if handler is None:
            return lambda fn: self.dequeue(
                topic, fn, retries=retries, backoff=backoff, timeout=timeout
            )
        if not isinstance(topic, str) or not topic:
            raise PipelineError(f"dequeue() needs a topic name, got {topic!r}")
        if not callable(handler):
            raise PipelineError(
                f"dequeue({topic!r}): handler must be callable, got {type(handler).__name__}"
            )
        if topic in self.topics:
            raise PipelineError(
                f"topic {topic!r} is already dequeued by "
                f"{self.topics[topic].handler_name} in pipeline {self.name!r}; "
                f"a topic has exactly one handler"
            )
        queue = self.queue_for(topic)
        opts = queue.options
        self.topics[topic] = Topic(
            name=topic,
            handler=handler,
            queue=queue,
            retries=opts.retries if retries is None else retries,
            backoff=backoff or opts.backoff,
            timeout=opts.timeout if timeout is None else seconds(timeout),
        )
        return handler

    # -- events ---------------------------------------------------------------------------------

    def on(self, name: str, listener: Listener | None = None) -> Any:
        """Listen to `name` (``*``, ``error``, ``error:<stage>``, ``job:complete``...)."""
        return self.bus.on(name, listener)

    def once(self, name: str, listener: Listener | None = None) -> Any:
        """Listen to the next `name` event only."""
        return self.bus.once(name, listener)

    def off(self, name: str, listener: Listener | None = None) -> None:
        """Stop listening."""
        self.bus.off(name, listener)

    # -- producing (needs a running `Runner`) ------------------------------------------------------

    def preview(self, event: Any = None, *, sequence: int = 1) -> list[Preview]:
        """The jobs the router makes of `event`, each with its id, queue and handler; no server.

            >>> for job in pipeline.preview({"fan": "f1", "talent": "t1", "action": "followed"}):
            ...     print(job.id, job.queue, job.handler, job.data)

        `event` is what the router receives (for a protobuf Stream also a dict of the message's
        fields, or its bytes; for a Cron a `CronTick`, default now). The ids use stream
        sequence `sequence`. Raises what the stream side would: `RouteError`,
        `UnknownTopicError`, `SerializationError`. See `flowline.runtime.preview`.
        """
        return _binding.local().preview(self, event, sequence=sequence)

    async def publish(self, event: Any, *, msg_id: str | None = None) -> int:
        """Publish `event` to this pipeline's stream, encoded with its decoder's type.

        With `msg_id`, a retried publish is stored once. Returns the stream sequence.
        """
        return await self._bound().publish(self, event, msg_id=msg_id)

    async def enqueue(
        self,
        topic: str,
        data: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = 0,
    ) -> str:
        """Put a job on its queue directly; with `key`, enqueueing it again is a no-op."""
        return await self._bound().enqueue(
            self, topic, data, key=key, delay=delay, priority=priority
        )

    def enqueue_sync(
        self,
        topic: str,
        data: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = 0,
        redis_url: str | None = None,
    ) -> str:
        """`enqueue` for code that is not async (a Django view); needs no running `Runner`.

        Args:
            redis_url: where the queue lives; default ``FLOWLINE_REDIS_URL`` or localhost.
        """
        job = Job(topic, data, delay=delay, key=key, priority=priority)
        return _binding.local().enqueue_sync(self, job, redis_url)

    def queue(self, name: str) -> QueueHandle:
        """A handle on one of this pipeline's queues (needs a running or connected `Runner`)."""
        for q in self.queues:
            if q.name == name:
                handle: QueueHandle = self._bound().queue_handle(self, q)
                return handle
        names = ", ".join(q.name for q in self.queues) or "none"
        raise PipelineError(f"pipeline {self.name!r} has no Queue({name!r}); its queues: {names}")

    def _bound(self) -> Bound:
        if self._runner is None:
            raise PipelineError(
                f"pipeline {self.name!r} is not connected: use it inside "
                f"`async with flowline.Runner(pipeline) as app:` (or flowline.connect(pipeline) "
                f"to publish and enqueue without running workers)"
            )
        return self._runner

    # -- display --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        chain = " >> ".join(s.describe() for s in self.stages)
        topics = ", ".join(f"{t}->{d.handler_name}" for t, d in self.topics.items())
        return f"<Pipeline {self.name!r}: {chain}" + (f" | {topics}>" if topics else ">")

    def to_mermaid(self) -> str:
        """The pipeline as a Mermaid flowchart (rendered by Jupyter, GitHub and most docs)."""
        return _diagram.mermaid([self])

    def to_dot(self) -> str:
        """The pipeline as a Graphviz digraph (``dot -Tsvg`` draws it)."""
        return _diagram.dot([self])

    def _repr_markdown_(self) -> str:
        return f"```mermaid\n{self.to_mermaid()}\n```"


Stage.chain = Pipeline  # what `a >> b` builds (see `Stage`)


class Pipelines:
    """Several pipelines run together by one `flowline worker`; iterate it like a tuple."""

    def __init__(self, *pipelines: Pipeline) -> None:
        names = [p.name for p in pipelines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise PipelineError(
                f"two pipelines are named {dupes[0]!r}; give one another name with .named(...)"
            )
        self.pipelines = pipelines

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(self.pipelines)

    def __len__(self) -> int:
        return len(self.pipelines)

    def __repr__(self) -> str:
        return f"Pipelines({', '.join(repr(p) for p in self.pipelines)})"


def _flatten(stages: Sequence[Any]) -> Iterator[Stage]:
    for stage in stages:
        if isinstance(stage, Pipeline):
            if stage.topics:
                # The new pipeline would silently start without the handlers (as .named would).
                raise PipelineError(
                    f"extend pipeline {stage.name!r} before registering handlers on it"
                )
            yield from stage.stages
        elif isinstance(stage, Stage):
            yield stage
        else:
            raise PipelineError(f"{stage!r} is not a stage (Stream, Cron, Route or Queue)")


def _check_order(stages: tuple[Stage, ...]) -> None:
    """Source first, then exactly one Route, then queues; every message names the stage."""
    if not stages:
        raise PipelineError("a pipeline needs at least a Stream (or Cron)")
    first = stages[0]
    if not isinstance(first, Source):
        raise PipelineError(
            f"{first.describe()} has no source: a pipeline starts with a Stream or a Cron, "
            f"e.g. Stream('subject', Event) >> {first.describe()}"
        )
    seen_route = False
    names: set[str] = set()
    for stage in stages[1:]:
        if isinstance(stage, Source):
            raise PipelineError(
                f"{stage.describe()} comes after {first.describe()}: a pipeline has one source; "
                f"run several pipelines together with Pipelines(...)"
            )
        if isinstance(stage, Route):
            if seen_route:
                raise PipelineError(
                    f"{stage.describe()}: a pipeline has one Route; combine the routers into one"
                )
            seen_route = True
        elif isinstance(stage, Queue):
            if not seen_route:
                raise PipelineError(
                    f"{stage.describe()} has no Route before it: jobs come from a router, "
                    f"e.g. {first.describe()} >> Route(router) >> {stage.describe()}"
                )
            if stage.name in names:
                raise PipelineError(
                    f"{stage.describe()} appears twice; give each Queue its own name"
                )
            names.add(stage.name)
    claimed: dict[str, str] = {}
    for q in (s for s in stages if isinstance(s, Queue)):
        for topic in q.topics or ():
            if topic in claimed:
                raise PipelineError(
                    f"topic {topic!r} is claimed by Queue({claimed[topic]!r}) and "
                    f"Queue({q.name!r}); a topic belongs to exactly one queue"
                )
            claimed[topic] = q.name


def _default_name(stages: tuple[Stage, ...]) -> str:
    source = stages[0]
    base = source.topic if isinstance(source, Cron) else source.name
    if isinstance(source, Stream):
        base = source.durable or base
    queues = [s.name for s in stages if isinstance(s, Queue)]
    raw = (
        base
        if not queues or (isinstance(source, Stream) and source.durable)
        else (f"{base}-{queues[0]}")
    )
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)
