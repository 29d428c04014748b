"""`JetStreamSource`: the stream source on NATS JetStream.

Streams are file-backed with a 120 s duplicate window; consumers are durable pull consumers
with explicit acks, shared by every process that names them. The messages it hands out are
nats-py's own ``Msg`` objects: nothing is wrapped on the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats.js.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from .base import Consumer, StreamSource

if TYPE_CHECKING:
    from nats.js import JetStreamContext

log = structlog.get_logger("flowline.ingest")


def stream_name_for(subject: str) -> str:
    """The JetStream stream flowline creates for a subject when none captures it."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject)


async def ensure_stream(js: JetStreamContext, subject: str) -> str:
    """The name of the stream capturing `subject`, creating a file-backed one if none does."""
    try:
        return str(await js.find_stream_name_by_subject(subject))
    except nats.js.errors.NotFoundError:
        name = stream_name_for(subject)
        try:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=StorageType.FILE,
                    duplicate_window=120.0,
                )
            )
        except nats.js.errors.BadRequestError:
            # Another flowline process created it between our lookup and our create.
            return str(await js.find_stream_name_by_subject(subject))
        log.info("created stream", stream=name, subject=subject)
        return name


class JetStreamSource(StreamSource):
    """Streams on JetStream, reached through `connect` on first use (a process that only
    works queues may never need NATS).

    Args:
        connect: returns the JetStream context, connecting if need be.
    """

    def __init__(self, connect: Callable[[], Awaitable[JetStreamContext]]) -> None:
        self._connect = connect
        self._known: set[str] = set()

    async def close(self) -> None:
        """Nothing: the runner owns the connection."""

    async def ensure(self, subject: str) -> str:
        return await ensure_stream(await self._connect(), subject)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> int:
        js = await self._connect()
        if subject not in self._known:
            await self.ensure(subject)
            self._known.add(subject)
        ack = await js.publish(subject, payload, headers=headers)
        return int(ack.seq)

    async def consumer(
        self, stream: str, subject: str, durable: str, *, ack_wait: float, max_ack_pending: int
    ) -> Consumer:
        # max_deliver stays unlimited on the server: past the limit JetStream would drop the
        # message silently, so flowline counts deliveries itself and dead-letters instead.
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
            filter_subject=subject,
        )
        js = await self._connect()
        sub: Any = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        return sub  # type: ignore[no-any-return]  # a PullSubscription is a Consumer
