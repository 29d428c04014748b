"""What a pipeline needs from the runtime, as protocols the describe layer defines.

Stages and pipelines only describe; the runtime runs them. So that the arrows point one way
(the runtime imports the description, never the reverse), a `Pipeline` reaches the runtime only
through these two protocols, which the runtime implements:

- `Bound`: a runner the pipeline is bound to while it runs (`Runner` sets ``pipeline._runner``),
  for ``publish``, ``enqueue`` and ``queue``.
- `Local`: what needs no runner (``preview``, ``enqueue_sync``), provided once by
  `flowline.runtime` when it is imported (``import flowline`` does), through `provide`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .errors import FlowlineError

if TYPE_CHECKING:
    from ._pipeline import Pipeline
    from ._stages import Job, Queue, Source


class Bound(Protocol):
    """A runner a pipeline is bound to: publishes its events and enqueues its jobs."""

    async def publish(
        self,
        pipeline: Pipeline,
        event: Any,
        *,
        msg_id: str | None = None,
        subject: str | None = None,
    ) -> int:
        """Put `event` on the pipeline's stream (the one on `subject`); returns its sequence."""
        ...

    async def enqueue(
        self,
        pipeline: Pipeline,
        topic: str,
        data: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = 0,
        group: str | None = None,
    ) -> str:
        """Put one job on its queue without a stream; returns its id."""
        ...

    def queue_handle(self, pipeline: Pipeline, queue: Queue) -> Any:
        """A handle on `queue` (lookups, counts, enqueue): a `flowline.QueueHandle`."""
        ...


class Local(Protocol):
    """What a pipeline does without a runner."""

    def preview(
        self, pipeline: Pipeline, event: Any, *, sequence: int, source: Source | str | None
    ) -> list[Any]:
        """The jobs the router makes of `event` (`flowline.runtime.preview.Preview` each)."""
        ...

    def enqueue_sync(self, pipeline: Pipeline, job: Job, redis_url: str | None) -> str:
        """Enqueue `job` from code that is not async, over a connection of its own."""
        ...


_local: Local | None = None


def provide(local: Local) -> None:
    """Called by `flowline.runtime` at import: the implementation of `Local`."""
    global _local
    _local = local


def local() -> Local:
    """The runtime's `Local`."""
    if _local is None:  # pragma: no cover - importing flowline imports the runtime
        raise FlowlineError("flowline.runtime is not imported: import flowline first")
    return _local
