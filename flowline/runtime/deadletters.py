"""The dead-letter store: what could not be processed, kept with everything needed to replay it.

Stream messages that cannot be decoded or routed go to the pipeline's stream-side store;
jobs that exhaust their attempts go to their queue's ``dead`` stream (written atomically with
the job's removal by the FAIL script). Both hold one JSON record per entry.
"""

from __future__ import annotations

import base64
import json
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .keys import QueueKeys, stream_dead_letters
from .scripts import Scripts

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from redis.asyncio import Redis

    from .._pipeline import Pipeline
    from ..backends.base import JobStore
    from ..backends.base import Message as Msg


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: where it came from, why, and its original payload."""

    id: str
    store: str
    record: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.record.get("kind"))


def describe_error(err: BaseException) -> dict[str, Any]:
    return {
        "error": f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(err)),
    }


def job_record(
    *,
    job_id: str,
    queue: str,
    topic: str,
    data: bytes,
    attempts: int,
    err: BaseException,
    created: str | None = None,
    now: float | None = None,
) -> str:
    """The JSON record of a job that exhausted its attempts.

    The payload is kept verbatim: as ``data`` when it is text, else as ``data_b64``.
    """
    try:
        payload: dict[str, str] = {"data": data.decode()}
    except UnicodeDecodeError:
        payload = {"data_b64": base64.b64encode(data).decode()}
    return json.dumps(
        {
            "kind": "job",
            "stage": "job",
            "job_id": job_id,
            "queue": queue,
            "topic": topic,
            **payload,
            "attempts": attempts,
            "created": created,
            "failed_at": time.time() if now is None else now,
            **describe_error(err),
        }
    )


async def bury_message(
    store: JobStore,
    pipeline: str,
    msg: Msg,
    err: BaseException,
    stage: str,
    deliveries: int,
    stream_name: str,
) -> str:
    """Store an undecodable or unroutable stream message; returns the dead letter's id."""
    record = {
        "kind": "message",
        "stage": stage,
        "pipeline": pipeline,
        "subject": msg.subject,
        "stream": stream_name,
        "sequence": msg.metadata.sequence.stream,
        "payload_b64": base64.b64encode(msg.data).decode(),
        "attempts": deliveries,
        "failed_at": store.clock.time(),
        **describe_error(err),
    }
    return await store.bury(pipeline, json.dumps(record))


def stores(pipeline: Pipeline) -> list[str]:
    """Every dead-letter stream of a pipeline: its stream side, then each queue."""
    return [
        stream_dead_letters(pipeline.name).dead,
        *(QueueKeys(name).dead for q in pipeline.queues for name in q.shard_names),
    ]


async def replay(
    redis: Redis, js: JetStreamContext | None, pipeline: Pipeline, letter: DeadLetter
) -> None:
    """Send a dead letter back through the normal path and remove it from the store.

    A job goes back on its queue as attempt 1 under the same id; a message is republished to
    its subject (with a message id, so a repeated replay is stored once by JetStream).
    """
    record = letter.record
    if letter.kind == "job":
        keys = QueueKeys(record["queue"])
        await Scripts(redis).replay(
            keys=[keys.jobs, keys.dead],
            args=[
                keys.job_prefix,
                int(time.time() * 1000),
                letter.id,
                record["job_id"],
                record["topic"],
                record["data"] if "data" in record else base64.b64decode(record["data_b64"]),
            ],
        )
        return
    if js is None:
        raise RuntimeError("replaying a stream message needs a NATS connection")
    payload = base64.b64decode(record["payload_b64"])
    await js.publish(
        record["subject"],
        payload,
        headers={"Nats-Msg-Id": f"replay:{record['stream']}:{record['sequence']}:{letter.id}"},
    )
    await redis.xdel(letter.store, letter.id)


async def purge(redis: Redis, letters: list[DeadLetter]) -> int:
    """Delete dead letters for good; returns how many were removed."""
    removed = 0
    for letter in letters:
        removed += int(await redis.xdel(letter.store, letter.id))
    return removed


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
