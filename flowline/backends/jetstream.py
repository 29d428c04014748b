"""`JetStreamSource`: the stream source on NATS JetStream.

Streams are file-backed with a 120 s duplicate window; consumers are durable pull consumers
with explicit acks, shared by every process that names them. The messages it hands out are
nats-py's own ``Msg`` objects: nothing is wrapped on the hot path.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats.js.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from ..errors import ConfigurationError
from .base import Consumer, StreamSource

if TYPE_CHECKING:
    from nats.js import JetStreamContext

log = structlog.get_logger("flowline.ingest")


def stream_name_for(subject: str) -> str:
    """The JetStream stream flowline creates for a subject when none captures it."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject)


async def ensure_stream(js: JetStreamContext, subject: str, replicas: int | None = None) -> str:
    """The name of the stream capturing `subject`, creating a file-backed one if none does.

    With `replicas`, the stream is created with that many copies, and an existing one with
    another count is changed to it (JetStream moves a stream's copies online); without, an
    existing stream keeps the server's count and a new one has one copy.
    """
    try:
        name = str(await js.find_stream_name_by_subject(subject))
    except nats.js.errors.NotFoundError:
        name = stream_name_for(subject)
        config = StreamConfig(
            name=name,
            subjects=[subject],
            storage=StorageType.FILE,
            duplicate_window=120.0,
            num_replicas=replicas or 1,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            try:
                # Another flowline process created it between our lookup and our create...
                name = str(await js.find_stream_name_by_subject(subject))
            except nats.js.errors.NotFoundError:
                # ...or the server refused it (replicas on a server that is not clustered).
                raise ConfigurationError(
                    f"cannot create stream {name!r}: {exc.description}"
                ) from None
        else:
            log.info("created stream", stream=name, subject=subject, replicas=replicas or 1)
            return name
    if replicas is not None:
        await _settle_replicas(js, name, replicas)
    return name


async def _settle_replicas(js: JetStreamContext, name: str, replicas: int) -> None:
    """Bring an existing stream's replica count to the stage's, or say why it stays."""
    info = await js.stream_info(name)
    have = info.config.num_replicas or 1
    if have == replicas:
        return
    try:
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    except nats.js.errors.Error as exc:
        log.warning(
            "stream replicas differ from the Stream's; the server refused the update",
            stream=name, server=have, stage=replicas, error=str(exc),
        )  # fmt: skip
    else:
        log.info("stream replicas updated to the Stream's", stream=name, was=have, now=replicas)


# The consumer settings a stage decides, compared with the server's at every start (`settle`)
# and by every readiness check (`drift`): how to show each value, by ConsumerConfig field.
SETTINGS: dict[str, Callable[[Any], str]] = {
    "ack_wait": lambda v: f"{float(v):g}s",
    "max_ack_pending": str,
    "max_deliver": str,
    "filter_subject": repr,
    "deliver_policy": lambda v: str(getattr(v, "value", v)),
}
# Those JetStream refuses to change on an existing consumer: an update keeps the server's.
FIXED = frozenset({"deliver_policy"})


def drift(wanted: ConsumerConfig, actual: ConsumerConfig) -> list[tuple[str, str, str]]:
    """The settings in which the server's consumer differs from `wanted`: (option, server's
    value, wanted value)."""
    out = []
    for name, show in SETTINGS.items():
        want, have = getattr(wanted, name), getattr(actual, name)
        if want is not None and (have is None or show(have) != show(want)):
            out.append((name, "unset" if have is None else show(have), show(want)))
    return out


def describe_drift(stream: str, durable: str, rows: list[tuple[str, str, str]]) -> list[str]:
    """One line per setting: what the server has, and what this process's stage says."""
    return [
        f"consumer {durable!r} of stream {stream!r}: {name} is {have} on the server, "
        f"{want} in this process's Stream"
        for name, have, want in rows
    ]


class JetStreamSource(StreamSource):
    """Streams on JetStream, reached through `connect` on first use (a process that only
    works queues may never need NATS).

    Args:
        connect: returns the JetStream context, connecting if need be.
    """

    def __init__(self, connect: Callable[[], Awaitable[JetStreamContext]]) -> None:
        self._connect = connect
        self._known: set[str] = set()
        # What each consumer this process set up should be: readiness compares the server's.
        self.wanted: dict[tuple[str, str], ConsumerConfig] = {}

    async def close(self) -> None:
        """Nothing: the runner owns the connection."""

    async def ensure(self, subject: str, replicas: int | None = None) -> str:
        return await ensure_stream(await self._connect(), subject, replicas)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> int:
        js = await self._connect()
        if subject not in self._known:
            await self.ensure(subject)
            self._known.add(subject)
        ack = await js.publish(subject, payload, headers=headers)
        return int(ack.seq)

    async def ack_floor(self, stream: str, durable: str) -> int:
        info = await (await self._connect()).consumer_info(stream, durable)
        return int(info.ack_floor.stream_seq) if info.ack_floor is not None else 0

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
        self.wanted[(stream, durable)] = config
        await self._settle(js, stream, durable, config)
        return sub  # type: ignore[no-any-return]  # a PullSubscription is a Consumer

    async def _settle(
        self, js: JetStreamContext, stream: str, durable: str, config: ConsumerConfig
    ) -> None:
        """Bring an existing consumer in line with the stage (nats-py leaves one it finds as it
        is): what the server can change is changed, and said; what it refuses is said."""
        info = await js.consumer_info(stream, durable)
        rows = drift(config, info.config)
        if not rows:
            return
        about = {"stream": stream, "consumer": durable}
        updatable = [r for r in rows if r[0] not in FIXED]
        if updatable:
            kept = {name: getattr(info.config, name) for name in FIXED}
            update = dataclasses.replace(config, **kept)
            try:
                await js.add_consumer(stream, config=update)  # creates, or updates, by name
            except Exception as exc:
                for name, have, want in updatable:
                    log.warning(
                        "consumer setting differs from the Stream's; the server refused the "
                        "update",
                        option=name, server=have, stage=want, error=str(exc), **about,
                    )  # fmt: skip
            else:
                for name, have, want in updatable:
                    log.info(
                        "consumer setting updated to the Stream's",
                        option=name, was=have, now=want, **about,
                    )  # fmt: skip
        for name, have, want in rows:
            if name in FIXED:
                log.warning(
                    "consumer setting differs from the Stream's; JetStream cannot change it on "
                    "an existing consumer",
                    option=name, server=have, stage=want, **about,
                )  # fmt: skip
