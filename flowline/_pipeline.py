"""`Pipeline`: a validated chain of stages plus the handlers that dequeue its topics.

A pipeline is still only a description: `flowline worker` (or `flowline.run`) compiles it
onto NATS and Redis and runs it. It is also the event bus users listen on.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import _binding, _diagram
from ._chain import Assembly, Branch, Chain, Join
from ._events import EventBus, Listener
from ._stages import _NAME_OK, Cron, Job, Route, Source, Stage, Stream
from .errors import PipelineError

if TYPE_CHECKING:
    from datetime import timedelta

    from ._binding import Bound
    from .runtime.cron import CronTick
    from .runtime.preview import Preview
    from .runtime.queues import QueueHandle


class Pipeline(Assembly):
    """Sources, each with its `Route`, then the `Queue` s their jobs share, and the handlers.

    ``Stream >> Route >> Queue`` is a pipeline of one source. Sources joined with ``|`` make
    one pipeline that several sources feed, one queue and its handlers for all of them::

        follows = Stream("fanbase", FanbaseEvent) >> Route(route_follows)
        digest = Cron("0 9 * * *", topic="daily-digest") >> Route(route_digest)
        pipeline = (follows | digest) >> Queue("email")

    It has one name, one event bus and one event log, whatever its number of sources.
    """

    def __init__(
        self, stages: Sequence[Stage | Assembly | Join], *, name: str | None = None
    ) -> None:
        if not stages:
            raise PipelineError("a pipeline needs at least a Stream (or Cron)")
        super().__init__(stages)
        if not self.branches:
            first = self.stages[0]
            raise PipelineError(
                f"{first.describe()} has no source: a pipeline starts with a Stream or a Cron, "
                f"e.g. Stream('subject', Event) >> {first.describe()}"
            )
        if name is not None and not _NAME_OK.match(name):
            # The name is the JetStream durable consumer's, which NATS refuses with '.', ' ', '*'.
            raise PipelineError(
                f"Pipeline name {name!r} may hold only letters, digits, '-' and '_'"
            )
        self.name = _default_name(self) if name is None else name
        self.bus = EventBus(self.name)
        self._runner: Bound | None = None  # set by the runtime's Runner while it runs

    # -- building -------------------------------------------------------------------------------

    def __rshift__(self, other: object) -> Pipeline:
        if not isinstance(other, (Stage, Assembly)):
            return NotImplemented
        return Pipeline((self, other))

    def __rrshift__(self, other: object) -> Pipeline:
        if not isinstance(other, Stage):
            return NotImplemented
        return Pipeline((other, self))

    def __or__(self, other: object) -> Pipeline:
        """These sources and `other`'s (a source, or sources with their routes) in one pipeline."""
        if isinstance(other, Source):
            other = Pipeline((other,))
        if not isinstance(other, Pipeline):
            return NotImplemented
        return Pipeline((self, Join(other)))

    def named(self, name: str) -> Pipeline:
        """A copy of this pipeline called `name` (it names the JetStream durable consumer)."""
        if self._own:
            raise PipelineError("name a pipeline before registering handlers on it")
        return Pipeline((self,), name=name)

    @property
    def sources(self) -> tuple[Source, ...]:
        """Every source, in order."""
        return tuple(b.source for b in self.branches)

    @property
    def source(self) -> Source:
        """The source of a pipeline that has one (see `branches` for several)."""
        if len(self.branches) > 1:
            raise PipelineError(
                f"pipeline {self.name!r} has {len(self.branches)} sources "
                f"({', '.join(s.describe() for s in self.sources)}); see pipeline.branches"
            )
        return self.branches[0].source

    @property
    def route(self) -> Route[Any] | None:
        """The Route of a pipeline with one source, or the one all its sources share."""
        routes = {id(b.route): b.route for b in self.branches}
        if len(routes) > 1:
            raise PipelineError(
                f"pipeline {self.name!r} has a Route per source; see pipeline.branches"
            )
        return next(iter(routes.values()))

    @property
    def routes(self) -> tuple[Route[Any], ...]:
        """Every distinct Route, in order."""
        out: list[Route[Any]] = []
        for b in self.branches:
            if b.route is not None and b.route not in out:
                out.append(b.route)
        return tuple(out)

    def route_for(self, source: Source) -> Route[Any] | None:
        """The Route the events of `source` take (None: they make no jobs)."""
        return self.branch(source).route

    def branch(self, source: Source | str | None = None) -> Branch:
        """The branch of `source` (the stage, or its name): the only one when None.

        Raises:
            PipelineError: `source` is none of this pipeline's, or None and there are several.
        """
        for b in self.branches:
            if source is b.source or source == b.source.name:
                return b
        names = ", ".join(repr(b.source.name) for b in self.branches)
        if source is None:
            if len(self.branches) == 1:
                return self.branches[0]
            raise PipelineError(f"pipeline {self.name!r} has several sources; say which: {names}")
        shown = source.describe() if isinstance(source, Source) else repr(source)
        raise PipelineError(
            f"{shown} is not a source of pipeline {self.name!r}; its sources: {names}"
        )

    def stream(self, subject: str | None = None) -> Stream[Any]:
        """The Stream events are published to: the only one, or the one reading `subject`.

        Raises:
            PipelineError: the pipeline has no Stream, several and no `subject`, or none
                reading `subject`.
        """
        streams = [s for s in self.sources if isinstance(s, Stream)]
        if subject is not None:
            for stream in streams:
                if stream.subject == subject:
                    return stream
        elif len(streams) == 1:
            return streams[0]
        subjects = ", ".join(repr(s.subject) for s in streams)
        if not streams:
            raise PipelineError(f"pipeline {self.name!r} has no Stream to publish to")
        if subject is None:
            raise PipelineError(
                f"pipeline {self.name!r} reads several streams ({subjects}); say which subject"
            )
        raise PipelineError(
            f"pipeline {self.name!r} has no Stream on subject {subject!r}; its subjects: {subjects}"
        )

    def describe(self) -> str:
        """The chain as code: ``(A >> Route(a) | B >> Route(b)) >> Queue('q')``."""
        heads = " | ".join(b.describe() for b in self.branches)
        if len(self.branches) > 1 and self.queues:
            heads = f"({heads})"
        return " >> ".join([heads, *(q.describe() for q in self.queues)])

    def _label(self) -> str:
        return f"pipeline {self.name!r}"

    def cron(
        self,
        topic: str,
        schedule: str | float | timedelta,
        on_emit: Callable[[CronTick], Any] | None = None,
        *,
        tz: str = "UTC",
        catch_up: bool = True,
    ) -> Cron:
        """A repeatable job (pipelinejs's ``pipe.cron(topic, repeat, onEmit?)``): on every tick
        of `schedule`, one job of `topic` on the queue that owns it.

        The same as adding ``Cron(schedule, topic=topic) >> Route(...)`` to the pipeline, with
        the same guarantee: each tick enqueues exactly one job across all processes, under the
        id ``cron:<topic>:<tick ms>:0``. Register the handler with ``dequeue(topic)``.

        Args:
            schedule: a cron expression (``"*/5 * * * *"``) or an interval (seconds, `timedelta`).
            on_emit: called with the `CronTick` (sync or async) in the process that fires it;
                what it returns is the job's data (default: ``{"scheduled": <ISO time>}``).
            tz: time zone of a cron expression.
            catch_up: on start, fire the most recent tick missed while no process ran (once).

        Raises:
            PipelineError: no queue owns `topic`, the pipeline has a cron of `topic` already,
                it runs already or is part of another one, or the schedule is not valid.
        """
        if self._used or self._runner is not None:
            raise PipelineError(
                f"cron({topic!r}): {self._label()} is running or part of another pipeline; "
                "add crons before"
            )
        self.queue_for(topic)  # the job needs a queue, named in the error if none owns it
        if any(isinstance(s, Cron) and s.topic == topic for s in self.sources):
            raise PipelineError(f"{self._label()} has a cron of topic {topic!r} already")
        source = Cron(schedule, topic=topic, tz=tz, catch_up=catch_up)

        async def tick_job(tick: CronTick) -> Job:
            data: Any = {"scheduled": tick.scheduled.isoformat()}
            if on_emit is not None:
                data = on_emit(tick)
                if inspect.isawaitable(data):
                    data = await data
            return Job(topic, data)

        route = Route(tick_job, name=f"cron:{topic}")
        self.branches = (*self.branches, Branch(source, route))
        return source

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

    def preview(
        self, event: Any = None, *, sequence: int = 1, source: Source | str | None = None
    ) -> list[Preview]:
        """The jobs the router makes of `event`, each with its id, queue and handler; no server.

            >>> for job in pipeline.preview({"fan": "f1", "talent": "t1", "action": "followed"}):
            ...     print(job.id, job.queue, job.handler, job.data)

        `event` is what the router receives (for a protobuf Stream also a dict of the message's
        fields, or its bytes; for a Cron a `CronTick`, default now). The ids use stream
        sequence `sequence`. With several sources, `source` says which (the stage, or its
        name). Raises what the stream side would: `RouteError`, `UnknownTopicError`,
        `SerializationError`. See `flowline.runtime.preview`.
        """
        return _binding.local().preview(self, event, sequence=sequence, source=source)

    async def publish(
        self, event: Any, *, msg_id: str | None = None, subject: str | None = None
    ) -> int:
        """Publish `event` to this pipeline's stream, encoded with its decoder's type.

        With `msg_id`, a retried publish is stored once. A pipeline with several streams
        needs the `subject` of the one to publish to. Returns the stream sequence.
        """
        return await self._bound().publish(self, event, msg_id=msg_id, subject=subject)

    async def enqueue(
        self,
        topic: str,
        data: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = 0,
        group: str | None = None,
    ) -> str:
        """Put a job on its queue directly; with `key`, enqueueing it again is a no-op; with
        `group`, it runs under its queue's `group_limit` (`Job.group`)."""
        return await self._bound().enqueue(
            self, topic, data, key=key, delay=delay, priority=priority, group=group
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
        group: str | None = None,
    ) -> str:
        """`enqueue` for code that is not async (a Django view); needs no running `Runner`.

        Args:
            redis_url: where the queue lives; default ``FLOWLINE_REDIS_URL`` or localhost.
        """
        job = Job(topic, data, delay=delay, key=key, priority=priority, group=group)
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
        chain = self.describe()
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


def _chain(parts: Sequence[Stage | Assembly]) -> Pipeline | Chain:
    """What `a >> b` builds: a pipeline when it starts with a source, else a chain."""
    first = parts[0]
    if isinstance(first, (Source, Pipeline)):
        return Pipeline(parts)
    return Chain(parts)


Stage.chain = staticmethod(_chain)  # what `a >> b` builds (see `Stage`)
Stage.composites = (Assembly,)


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


def _default_name(pipeline: Pipeline) -> str:
    """From the first source: its durable, else its subject (or cron topic) and first queue."""
    source = pipeline.branches[0].source
    base = source.topic if isinstance(source, Cron) else source.name
    if isinstance(source, Stream):
        base = source.durable or base
    queues = [q.name for q in pipeline.queues]
    raw = (
        base
        if not queues or (isinstance(source, Stream) and source.durable)
        else (f"{base}-{queues[0]}")
    )
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)
