"""The fanbase example, evolved along pipelinejs's TODOs: more channels, a stream, a cron.

    flowline worker examples.fanbase.channels:app                           # everything
    flowline worker examples.fanbase.channels:app --only queue:fanbase-sms  # SMS senders only
    flowline worker examples.fanbase.channels:app --only stream --only cron # routing, digest

Two pipelines run together in one process (one NATS and one Redis connection):

    notifications  (Stream("fanbase") >> Route(route_channels)
                    | Cron("0 9 * * *", Europe/Paris) >> Route(route_digest))
                   >> channels: Queue fanbase-email >> fanbase-sms >> fanbase-social
    audit          Stream("fanbase-notifications-sent") >> Route >> Queue("fanbase-audit")

Each channel has its own queue, so a slow SMS gateway builds a backlog on its queue only, and
each channel can be scaled, or stopped, on its own. The follow events and the daily digest
both send email: they are two sources of one pipeline, feeding one email queue and its
handlers (`channels`, a `Chain`: the queues and handlers with no source of their own). Every
sender publishes a `NotificationSent` once its provider has accepted the message; the audit
pipeline consumes that stream and keeps the counters the daily digest reports to each talent.

The notifications pipeline reads the same ``fanbase`` subject as `pipeline.py` under its own
durable consumer: it replaces that pipeline rather than running beside it (both would email).

Environment knobs: FANBASE_SMS_CONCURRENCY (SMS in flight per process, default 5),
FANBASE_SMS_LATENCY (seconds per SMS, see `services`), and FANBASE_FAIL_AFTER_EMIT, a fault
drill: a comma-separated list of channels whose senders fail their first attempt right after
publishing `NotificationSent`, to show the retry neither notifies nor audits anyone twice.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flowline import (
    Chain,
    Cron,
    CronTick,
    Job,
    JobContext,
    Pipeline,
    Pipelines,
    Queue,
    Route,
    Stream,
)

from . import services as svc
from .fanbase_pb2 import FanbaseEvent
from .notifications_pb2 import NotificationSent
from .services import User

EMAIL, SMS, SOCIAL = "email", "sms", "social"
CHANNELS = frozenset({EMAIL, SMS, SOCIAL})

SMS_CONCURRENCY = int(os.environ.get("FANBASE_SMS_CONCURRENCY", "5"))
FAIL_AFTER_EMIT = frozenset(
    c.strip() for c in os.environ.get("FANBASE_FAIL_AFTER_EMIT", "").split(",") if c.strip()
)
if not FAIL_AFTER_EMIT <= CHANNELS:
    raise ValueError(
        f"FANBASE_FAIL_AFTER_EMIT names unknown channels {sorted(FAIL_AFTER_EMIT - CHANNELS)}; "
        f"choose from {sorted(CHANNELS)}"
    )

DIGEST_TOPIC = "daily-digest"
DIGEST_JOB = "send-daily-digest"
DIGEST_TZ = "Europe/Paris"
# What the digest reports: one notification of each of these topics is one follow / unfollow.
JOINED, LEFT = "notify-talent-following", "confirm-fan-unfollowing"


# -- the channels: one queue per channel, and the senders ------------------------------------------

channels: Chain = (
    Queue("fanbase-email", topics={"notify-fan-following", JOINED, LEFT, DIGEST_JOB})
    # Few at once: gateways rate-limit. Its backlog waits on this queue and delays no email.
    >> Queue(
        "fanbase-sms",
        topics={"text-fan-following", "text-fan-unfollowing"},
        concurrency=SMS_CONCURRENCY,
        timeout=30,
    )
    >> Queue("fanbase-social", topics={"post-talent-following"})
)


def channel_of(topic: str) -> str:
    """The channel a notifications topic is sent on: its queue's name without ``fanbase-``."""
    return channels.queue_for(topic).name.removeprefix("fanbase-")


# -- the follow events: one router, a job per channel and recipient -------------------------------


def route_channels(event: FanbaseEvent) -> Iterator[Job]:
    """A follow notifies on every channel; an unfollow only tells the fan (email and SMS)."""
    data = {"fan": event.fan, "talent": event.talent}
    if event.action == "followed":
        yield Job("notify-fan-following", data)  # email: welcome the fan
        yield Job(JOINED, data)  # email: tell the talent
        yield Job("text-fan-following", data)  # sms: welcome the fan
        yield Job("post-talent-following", data)  # social: tell the talent in the app
    elif event.action == "unfollowed":
        yield Job(LEFT, data)  # email: confirm with the fan
        yield Job("text-fan-unfollowing", data)  # sms: confirm with the fan
    # Any other action is ignored, as in pipeline.py.


follows = Stream("fanbase", FanbaseEvent, durable="fanbase-channels") >> Route(route_channels)


# -- audit: a second pipeline on the stream the senders publish to ---------------------------------


def route_audit(sent: NotificationSent) -> Job:
    """One audit job per `NotificationSent` (senders publish exactly one per notification)."""
    return Job(
        "audit-notification",
        {
            "notification": sent.notification,
            "channel": sent.channel,
            "topic": sent.topic,
            "recipient": sent.recipient,
            "address": sent.address,
            "talent": sent.talent,
            "sent_at_ms": sent.sent_at_ms,
        },
    )


audit = (
    Stream("fanbase-notifications-sent", NotificationSent, durable="fanbase-audit")
    >> Route(route_audit)
    >> Queue("fanbase-audit")
)


@audit.dequeue("audit-notification")
async def record_notification(job: JobContext) -> dict[str, Any]:
    sent: dict[str, Any] = job.data
    keys: list[tuple[str, ...]] = [("channel", sent["channel"])]
    if sent["talent"]:
        keys.append(("talent", sent["talent"], sent["topic"]))
    # Counted by notification id, so a retried audit job does not count twice.
    await svc.analytics.record(sent["notification"], keys)
    return sent


# -- the senders -----------------------------------------------------------------------------------


async def deliver(job: JobContext, channel: str, to: User, text: str, body: str = "") -> Any:
    """Send `text` to `to` on `channel`, then publish the `NotificationSent` the audit reads.

    The job id is the provider's idempotency key and `job.emit` publishes once per job, so a
    retry after either step (the emit failing, or the drill below) notifies nobody twice.
    """
    await job.progress(20)
    if channel == EMAIL:
        confirmation = await svc.email.send(to.email, text, body, key=job.id)
    elif channel == SMS:
        confirmation = await svc.sms.send(to.phone, text, key=job.id)
    else:
        confirmation = await svc.social.send(to.handle, text, key=job.id)
    await job.progress(80)
    sent = NotificationSent(
        notification=job.id,
        channel=channel,
        topic=job.topic,
        recipient=to.id,
        address=str(confirmation["to"]),
        subject=text,
        provider_id=str(confirmation["id"]),
        fan=job.data.get("fan", ""),
        talent=job.data.get("talent", ""),
        sent_at_ms=int(confirmation["sent_at_ms"]),
    )
    await job.emit(audit, sent)
    if channel in FAIL_AFTER_EMIT and job.attempt == 1:
        raise ConnectionError(f"fault drill: {channel} sender failed after publishing {job.id}")
    return confirmation


async def people(job: JobContext) -> tuple[User, User]:
    """The job's fan and talent."""
    return (
        await svc.users.find_by_id(job.data["fan"]),
        await svc.users.find_by_id(job.data["talent"]),
    )


@channels.dequeue("notify-fan-following")
async def email_fan_following(job: JobContext) -> Any:
    fan, talent = await people(job)
    subject = f"You've started following {talent.name}!"
    return await deliver(job, EMAIL, fan, subject, f"Hey {fan.name}, thanks for following!")


@channels.dequeue(JOINED)
async def email_talent_following(job: JobContext) -> Any:
    fan, talent = await people(job)
    body = f"Congratulations {talent.name}, {fan.name} just joined your fanclub!"
    return await deliver(job, EMAIL, talent, f"{fan.name} started following you!", body)


@channels.dequeue(LEFT)
async def email_fan_unfollowing(job: JobContext) -> Any:
    fan, talent = await people(job)
    body = f"Hey {fan.name}, we just wanted to confirm that you've stopped following {talent.name}."
    return await deliver(job, EMAIL, fan, f"You've stopped following {talent.name}!", body)


@channels.dequeue("text-fan-following")
async def text_fan_following(job: JobContext) -> Any:
    fan, talent = await people(job)
    return await deliver(job, SMS, fan, f"Welcome to {talent.name}'s fanclub, {fan.name}!")


@channels.dequeue("text-fan-unfollowing")
async def text_fan_unfollowing(job: JobContext) -> Any:
    fan, talent = await people(job)
    return await deliver(job, SMS, fan, f"You've left {talent.name}'s fanclub. See you soon!")


@channels.dequeue("post-talent-following")
async def post_talent_following(job: JobContext) -> Any:
    fan, talent = await people(job)
    return await deliver(job, SOCIAL, talent, f"{fan.name} ({fan.handle}) joined your fanclub")


# -- the daily digest ------------------------------------------------------------------------------


async def route_digest(tick: CronTick) -> AsyncIterator[Job]:
    """One digest per talent for the tick's day (in Paris, where the fan-club app lives)."""
    day = tick.scheduled.astimezone(ZoneInfo(DIGEST_TZ)).date().isoformat()
    for talent in await svc.users.talents():
        scheduled = tick.scheduled.isoformat()
        yield Job(DIGEST_JOB, {"talent": talent.id, "day": day, "scheduled": scheduled})


@channels.dequeue(DIGEST_JOB)
async def send_digest(job: JobContext) -> Any:
    talent = await svc.users.find_by_id(job.data["talent"])
    joined = await svc.analytics.get("talent", talent.id, JOINED)
    left = await svc.analytics.get("talent", talent.id, LEFT)
    subject = f"Your fanbase on {job.data['day']}: {joined} joined, {left} left"
    confirmation = await deliver(job, EMAIL, talent, subject)
    return {**confirmation, "talent": talent.id, "scheduled": job.data["scheduled"]}


# -- the pipelines ---------------------------------------------------------------------------------


def notifications_pipeline(digest_schedule: str | float | timedelta) -> Pipeline:
    """Follow events and the digest on `digest_schedule`, both sent through `channels`.

    The schedule is a cron expression (Paris time) or an interval: the app uses
    ``"0 9 * * *"``; the runnable demo and the tests, which cannot wait a day, use seconds.
    Either way each tick fires once across every process running ``cron``.
    """
    digest = Cron(digest_schedule, topic=DIGEST_TOPIC, tz=DIGEST_TZ) >> Route(route_digest)
    return (follows | digest) >> channels


notifications = notifications_pipeline("0 9 * * *")

app = Pipelines(notifications, audit)
