"""Jobs publishing follow-up events to streams, at most once per job however often it retries.

The n-th emit of a job gets the message id ``<job id>:emit:<n>`` and, once JetStream has stored
it, a mark ``emitted:<n>`` on the job's record. A retried job that reaches its n-th emit again
finds the mark and skips the publish; a crash between publish and mark is covered by
JetStream's duplicate window, which drops the second publish with the same id.

With tracing on, the follow-up continues the job's trace: the job's span is current while its
handler runs, and the publish puts the current context in the message's headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import PipelineError

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from ..backends.base import JobStore


class Emitter:
    """Publishes on behalf of jobs; shared by every worker of a process."""

    def __init__(
        self, publish: Callable[[str, bytes, str | None], Awaitable[int]], store: JobStore
    ) -> None:
        self._publish = publish
        self._store = store

    async def emit(
        self,
        queue: str,
        job_id: str,
        n: int,
        target: Pipeline | str,
        event: Any,
        subject: str | None = None,
    ) -> int:
        """Publish `event` as the `n`-th emit of a job; returns the stream sequence."""
        subject, payload = resolve(target, event, subject)
        done = await self._store.emitted(queue, job_id, n)
        if done is not None:
            return done
        seq = await self._publish(subject, payload, f"{job_id}:emit:{n}")
        await self._store.mark_emitted(queue, job_id, n, seq)
        return seq


def resolve(target: Pipeline | str, event: Any, subject: str | None = None) -> tuple[str, bytes]:
    """The subject `event` goes to and its bytes: the pipeline's Stream (the one on `subject`,
    when it reads several) encodes it, or it goes to the subject `target` names.

    Raises:
        PipelineError: no such Stream, several and no `subject`, or an event it cannot encode.
    """
    from .._pipeline import Pipeline

    if isinstance(target, Pipeline):
        stream = target.stream(subject)
        if isinstance(event, bytes):
            return stream.subject, event
        if stream.encode is None:
            raise PipelineError(
                f"{stream.describe()} cannot encode {type(event).__name__}; emit bytes"
            )
        return stream.subject, stream.encode(event)
    if subject is not None:
        raise PipelineError(f"emit to subject {target!r}: subject= is for a pipeline target")
    if isinstance(event, bytes):
        return target, event
    serialize = getattr(event, "SerializeToString", None)
    if serialize is None:
        raise PipelineError(f"emit to subject {target!r} needs bytes or a protobuf message")
    return target, serialize()
