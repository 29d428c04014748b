"""What ``>>`` and ``|`` build from stages, and every check on the order of stages.

    Stream("a", A) >> Route(r) >> Queue("q")        a Pipeline: one branch, one queue
    Route(r) >> Queue("q")                          a Chain: the part after the source
    (Stream("a", A) | Stream("b", B)) >> chain      a Pipeline: two branches, one route, one queue
    (Stream("a", A) >> Route(ra) | Cron(...) >> Route(rc)) >> Queue("q")
                                                    a Pipeline: two branches, two routes

A *branch* is a source and the Route its events take. A pipeline has one branch or more, then
its queues, which the jobs of every branch share: one queue and its handlers fed by several
sources. A `Chain` is what comes after the sources (a Route, queues, or both) with handlers
of its own: attach it to a source with ``>>``, or to several at once by joining them with
``|`` first. A Route that follows joined sources is the route of each that has none yet.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from ._stages import (
    Backoff,
    Cron,
    Queue,
    Rate,
    Route,
    Source,
    Stage,
    label_from_callable,
    seconds,
)
from .errors import PipelineError

if TYPE_CHECKING:
    from datetime import timedelta

    from .runtime.job import Handler


@dataclass(frozen=True)
class Topic:
    """A dequeued topic: its handler, its queue and its failure policy."""

    name: str
    handler: Handler
    queue: Queue
    retries: int
    backoff: Backoff
    timeout: float | None
    rate: Rate | None = None

    @property
    def handler_name(self) -> str:
        return label_from_callable(self.handler)


@dataclass(frozen=True)
class Branch:
    """One source of a pipeline and the Route its events take (None: they make no jobs)."""

    source: Source
    route: Route[Any] | None

    def describe(self) -> str:
        parts = [self.source] if self.route is None else [self.source, self.route]
        return " >> ".join(s.describe() for s in parts)


class Assembly(abc.ABC):
    """What pipelines and chains share: branches, a pending Route, queues and handlers."""

    branches: tuple[Branch, ...]
    queues: tuple[Queue, ...]
    topics: dict[str, Topic]

    def __init__(self, parts: Sequence[object]) -> None:
        built = _Builder()
        for part in parts:
            built.add(part)
        built.finish()
        self.branches = tuple(Branch(s, r) for s, r in built.branches)
        self.pending_route = built.route  # a Chain's Route, waiting for its sources
        self.queues = tuple(built.queues)
        self.topics = built.topics
        self._own: set[str] = set()  # topics dequeued here, not carried in from a Chain
        # Part of another pipeline or chain, which copied the handlers: no more may be added.
        self._used = False

    @property
    def stages(self) -> tuple[Stage, ...]:
        """Every stage once, in order: each branch's source and route, then the queues."""
        out: list[Stage] = []
        for branch in self.branches:
            out += [s for s in (branch.source, branch.route) if s is not None and s not in out]
        if self.pending_route is not None:
            out.append(self.pending_route)
        return (*out, *self.queues)

    def queue_for(self, topic: str) -> Queue:
        """The queue that owns `topic`: the one listing it, else the one listing no topics."""
        return _owner(self.queues, topic, self._label())

    @abc.abstractmethod
    def _label(self) -> str:
        """How errors name it: ``pipeline 'name'``, ``chain Route(r) >> Queue('q')``."""

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
        rate: Rate | str | None = None,
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
        rate: Rate | str | None = None,
    ) -> Handler: ...

    def dequeue(
        self,
        topic: str,
        handler: Handler | None = None,
        *,
        retries: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | timedelta | None = None,
        rate: Rate | str | None = None,
    ) -> Any:
        """Run `handler(job)` for every job of `topic`; usable as a decorator.

        Args:
            topic: the job topic, as a router names it.
            handler: an async (or sync) function taking a `JobContext`; its return value,
                JSON-serialisable, is stored as the job's result.
            retries: further attempts after a failure (default: the queue's).
            backoff: delays between attempts (default: the queue's).
            timeout: seconds before the handler fails with `JobTimeout` (default: the queue's).
            rate: at most this many starts of the topic's jobs per period across every process
                (`Rate`, or ``"10/s"``), besides the queue's own rate; its jobs past it wait.

        Raises:
            PipelineError: the topic is already dequeued, the handler is not callable, or no
                queue owns the topic.
        """
        if handler is None:
            return lambda fn: self.dequeue(
                topic, fn, retries=retries, backoff=backoff, timeout=timeout, rate=rate
            )
        if not isinstance(topic, str) or not topic:
            raise PipelineError(f"dequeue() needs a topic name, got {topic!r}")
        if not callable(handler):
            raise PipelineError(
                f"dequeue({topic!r}): handler must be callable, got {type(handler).__name__}"
            )
        if self._used:
            raise PipelineError(
                f"dequeue({topic!r}): {self._label()} is already part of a pipeline or "
                f"another chain, which would not get the handler; register handlers first"
            )
        if topic in self.topics:
            raise PipelineError(
                f"topic {topic!r} is already dequeued by "
                f"{self.topics[topic].handler_name} in {self._label()}; "
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
            rate=Rate.of(rate),
        )
        self._own.add(topic)
        return handler


class Chain(Assembly):
    """Stages without a source (a Route, queues, or both) and their handlers.

    Attach it to a source, or to sources joined with ``|``, with ``>>``; every pipeline built
    from it gets its handlers::

        email = Queue("email")
        send = Route(to_emails) >> email
        send.dequeue("send-email", send_email)
        pipelines = Pipelines(Stream("signups", Signup) >> send, Stream("orders", Order) >> send)

    (Those are two pipelines, so they could not share the queue ``email``: see `Pipeline` for
    one pipeline with two sources.)
    """

    def __rshift__(self, other: object) -> Chain:
        if not isinstance(other, (Stage, Chain)):
            return NotImplemented
        if isinstance(other, Source):
            raise PipelineError(
                f"{other.describe()} comes after {self.describe()}: a source starts a "
                f"pipeline, e.g. {other.describe()} >> {self.describe()}"
            )
        return Chain((self, other))

    def describe(self) -> str:
        return " >> ".join(s.describe() for s in self.stages)

    def __repr__(self) -> str:
        topics = ", ".join(f"{t}->{d.handler_name}" for t, d in self.topics.items())
        return f"<Chain {self.describe()}" + (f" | {topics}>" if topics else ">")

    def _label(self) -> str:
        return f"chain {self.describe()}"


def _owner(queues: Sequence[Queue], topic: str, label: str) -> Queue:
    if not queues:
        raise PipelineError(f"{label} has no Queue: add `>> Queue(name)`")
    for q in queues:
        if q.topics is not None and topic in q.topics:
            return q
    catch_all = [q for q in queues if q.topics is None]
    if not catch_all:
        names = ", ".join(q.name for q in queues)
        raise PipelineError(
            f"topic {topic!r} belongs to no queue of {label} ({names}): "
            f"list it in one Queue(topics=...) or add a Queue without topics"
        )
    return catch_all[0]


@dataclass(frozen=True)
class Join:
    """A part whose sources join those before it (what ``a | b`` builds from `b`)."""

    sources: Assembly


class _Builder:
    """Reads parts left to right; each mistake is named by the stages involved."""

    def __init__(self) -> None:
        self.branches: list[list[Any]] = []  # [source, route or None]
        self.route: Route[Any] | None = None  # a Route with no source before it (a Chain's)
        self.queues: list[Queue] = []
        self.topics: dict[str, Topic] = {}
        self.last: Stage | None = None  # the stage before the one being added, for messages

    def add(self, part: object) -> None:
        if isinstance(part, Join):
            self._join(part.sources)
        elif isinstance(part, Assembly):
            self._assembly(part)
        elif isinstance(part, Stage):
            self._stage(part)
        else:
            raise PipelineError(f"{part!r} is not a stage (Stream, Cron, Route or Queue)")

    def _join(self, part: Assembly) -> None:
        for side in (self, part):
            if side.queues or side.topics or not side.branches:
                raise PipelineError(
                    "join sources before their queues, e.g. "
                    "(Stream('a', A) >> Route(ra) | Cron(...) >> Route(rc)) >> Queue('q')"
                )
        self.branches += [[b.source, b.route] for b in part.branches]
        part._used = True

    def _assembly(self, part: Assembly) -> None:
        part._used = True
        if not isinstance(part, Chain) and part._own:
            # The new pipeline would silently start without the handlers (as .named would).
            raise PipelineError(f"extend {part._label()} before registering handlers on it")
        if part.branches and self.branches:
            first, later = self.branches[0][0], part.branches[0].source
            raise PipelineError(
                f"{later.describe()} comes after {first.describe()}: a pipeline's sources are "
                f"joined with |, e.g. ({first.describe()} | {later.describe()}) >> Queue(...); "
                f"or run several pipelines together with Pipelines(...)"
            )
        self.branches += [[b.source, b.route] for b in part.branches]
        if part.pending_route is not None:
            self._stage(part.pending_route)
        for queue in part.queues:
            self._stage(queue)
        for name, topic in part.topics.items():
            mine = self.topics.get(name)
            if mine is not None and mine != topic:
                raise PipelineError(
                    f"topic {name!r} is dequeued by {mine.handler_name} on "
                    f"Queue({mine.queue.name!r}) and by {topic.handler_name} on "
                    f"Queue({topic.queue.name!r}); a topic has exactly one handler"
                )
            self.topics[name] = topic

    def _stage(self, stage: Stage) -> None:
        if isinstance(stage, Source):
            self._source(stage)
        elif isinstance(stage, Route):
            self._route(stage)
        elif isinstance(stage, Queue):
            self._queue(stage)
        self.last = stage

    def _source(self, source: Source) -> None:
        if self.branches or self.route is not None or self.queues:
            before = self.branches[0][0] if self.branches else self.last
            assert before is not None
            if isinstance(before, Source):
                raise PipelineError(
                    f"{source.describe()} comes after {before.describe()}: a pipeline's sources "
                    f"are joined with |, e.g. ({before.describe()} | {source.describe()}) >> "
                    f"Queue(...); or run several pipelines together with Pipelines(...)"
                )
            raise PipelineError(
                f"{source.describe()} comes after {before.describe()}: a source starts a "
                f"pipeline, e.g. {source.describe()} >> {before.describe()}"
            )
        self.branches.append([source, None])

    def _route(self, route: Route[Any]) -> None:
        if self.queues:
            raise PipelineError(
                f"{route.describe()} comes after Queue({self.queues[-1].name!r}): a Route "
                f"comes before the queues it feeds"
            )
        if not self.branches:
            if self.route is not None:
                raise PipelineError(
                    f"{route.describe()} follows {self.route.describe()}: a source has one "
                    f"Route; combine the routers into one"
                )
            self.route = route
            return
        open_branches = [b for b in self.branches if b[1] is None]
        if not open_branches:
            raise PipelineError(
                f"{route.describe()} follows {Branch(*self.branches[-1]).describe()}: a source "
                f"has one Route; combine the routers into one"
            )
        for branch in open_branches:
            branch[1] = route

    def _queue(self, queue: Queue) -> None:
        if any(q.name == queue.name for q in self.queues):
            raise PipelineError(f"{queue.describe()} appears twice; give each Queue its own name")
        if self.route is None and not self.queues:
            routeless = [b[0] for b in self.branches if b[1] is None]
            if routeless:
                source = routeless[0].describe()
                raise PipelineError(
                    f"{queue.describe()} has no Route before it: jobs come from a router, "
                    f"e.g. {source} >> Route(router) >> {queue.describe()}"
                )
        self.queues.append(queue)

    def finish(self) -> None:
        """The checks that need every part: topics of queues, sources of branches."""
        claimed: dict[str, str] = {}
        for q in self.queues:
            for listed in q.topics or ():
                if listed in claimed:
                    raise PipelineError(
                        f"topic {listed!r} is claimed by Queue({claimed[listed]!r}) and "
                        f"Queue({q.name!r}); a topic belongs to exactly one queue"
                    )
                claimed[listed] = q.name
        for name, topic in self.topics.items():
            owner = _owner(self.queues, name, "this pipeline")
            if owner is not topic.queue:
                raise PipelineError(
                    f"topic {name!r} is dequeued on Queue({topic.queue.name!r}) by "
                    f"{topic.handler_name}, but Queue({owner.name!r}) owns it here; list it in "
                    f"Queue({topic.queue.name!r}, topics=...)"
                )
        _check_sources([b[0] for b in self.branches])


def _check_sources(sources: Iterable[Source]) -> None:
    """Two branches reading one subject, or one cron topic, would make jobs with one id."""
    seen: dict[str, Source] = {}  # by name: a Stream's is its subject, a Cron's cron:<topic>
    for source in sources:
        if source.name in seen:
            shared = (
                f"the cron topic {source.topic!r}"
                if isinstance(source, Cron)
                else f"the subject {source.name!r}"
            )
            raise PipelineError(
                f"{source.describe()} and {seen[source.name].describe()} share {shared} in one "
                f"pipeline: their jobs would get the same ids; join each source once"
            )
        seen[source.name] = source
