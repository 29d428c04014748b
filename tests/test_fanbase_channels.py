"""The extended fanbase example: channel queues, the sent-notifications stream, the cron digest."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise

from redis.asyncio import Redis

from examples.fanbase.channels import (
    DIGEST_JOB,
    app,
    audit,
    channel_of,
    channels,
    follows,
    notifications,
    route_channels,
    route_digest,
    send_digest,
)
from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import Cron, CronTick, Stream
from flowline.runtime.keys import QueueKeys

from .conftest import ROOT, eventually

APP = "examples.fanbase.channels:app"
DEMO = "examples.fanbase.extended:app"  # the same app, with the digest every second
EMAIL, SMS, SOCIAL, AUDIT = (
    QueueKeys(f"fanbase-{name}") for name in ("email", "sms", "social", "audit")
)
SENT_STREAM = "fanbase-notifications-sent"


async def publish(js, fan: str, talent: str, action: str) -> int:
    event = FanbaseEvent(fan=fan, talent=talent, action=action)
    return (await js.publish("fanbase", event.SerializeToString())).seq


async def job(redis: Redis, queue: QueueKeys, job_id: str) -> dict[str, str]:
    raw = await redis.hgetall(queue.job(job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def jobs(redis: Redis, queue: QueueKeys) -> dict[str, dict[str, str]]:
    """Every job record of `queue`, by job id."""
    found = {}
    async for key in redis.scan_iter(match=queue.job_prefix + "*", count=1000):
        job_id = key.decode().removeprefix(queue.job_prefix)
        found[job_id] = await job(redis, queue, job_id)
    return found


async def states(redis: Redis, queue: QueueKeys) -> dict[str, int]:
    """How many of `queue`'s jobs are in each state."""
    counts: dict[str, int] = defaultdict(int)
    for r in (await jobs(redis, queue)).values():
        counts[r["state"]] += 1
    return dict(counts)


async def all_completed(redis: Redis, queue: QueueKeys, n: int) -> dict[str, dict[str, str]] | None:
    """`queue`'s job records once there are exactly `n`, all completed (for `eventually`)."""
    records = await jobs(redis, queue)
    done = len(records) == n and all(r.get("state") == "completed" for r in records.values())
    return records if done else None


def iso(tick_ms: int) -> str:
    """A cron tick (epoch ms) as the ISO time the cron log and the digest jobs carry."""
    return datetime.fromtimestamp(tick_ms / 1000, UTC).isoformat()


def follow_ids(seq: int) -> dict[QueueKeys, list[str]]:
    """The jobs a follow published as `seq` becomes, by queue (ids are stream:seq:index)."""
    return {
        EMAIL: [f"fanbase:{seq}:0", f"fanbase:{seq}:1"],
        SMS: [f"fanbase:{seq}:2"],
        SOCIAL: [f"fanbase:{seq}:3"],
    }


def unfollow_ids(seq: int) -> dict[QueueKeys, list[str]]:
    return {EMAIL: [f"fanbase:{seq}:0"], SMS: [f"fanbase:{seq}:1"], SOCIAL: []}


def merge(*parts: dict[QueueKeys, list[str]]) -> dict[QueueKeys, set[str]]:
    merged: dict[QueueKeys, set[str]] = defaultdict(set)
    for part in parts:
        for queue, ids in part.items():
            merged[queue].update(ids)
    return merged


class TestDescription:
    def test_every_topic_belongs_to_exactly_one_channel_queue(self):
        """Each notifications topic is dequeued on exactly one of the three channel queues; the
        digest is sent on the email queue."""
        by_queue = defaultdict(set)
        for name, topic in notifications.topics.items():
            by_queue[topic.queue.name].add(name)
        assert dict(by_queue) == {
            "fanbase-email": {
                "notify-fan-following",
                "notify-talent-following",
                "send-daily-digest",
                "confirm-fan-unfollowing",
            },
            "fanbase-sms": {"text-fan-following", "text-fan-unfollowing"},
            "fanbase-social": {"post-talent-following"},
        }
        for queue in notifications.queues:
            assert queue.topics == by_queue[queue.name]

    def test_a_follow_fans_out_to_every_channel_and_an_unfollow_to_the_fan(self):
        """followed: email fan + talent, sms fan, social talent; unfollowed: email + sms fan."""

        def channels(action: str) -> list[tuple[str, str]]:
            event = FanbaseEvent(fan="fan-1", talent="talent-1", action=action)
            return [(channel_of(j.topic), j.topic) for j in route_channels(event)]

        assert channels("followed") == [
            ("email", "notify-fan-following"),
            ("email", "notify-talent-following"),
            ("sms", "text-fan-following"),
            ("social", "post-talent-following"),
        ]
        assert channels("unfollowed") == [
            ("email", "confirm-fan-unfollowing"),
            ("sms", "text-fan-unfollowing"),
        ]
        assert channels("blocked") == []

    def test_app_runs_notifications_and_audit(self):
        """`app` runs the notifications pipeline (two sources) and the audit pipeline."""
        assert [p.name for p in app] == ["fanbase-channels", "fanbase-audit"]
        assert audit.source.subject == SENT_STREAM

    def test_follows_and_a_daily_paris_digest_share_the_channels(self):
        """The follow stream and a 09:00 Europe/Paris cron feed one set of channel queues:
        the digest is sent by a handler on the email queue, beside the follow emails."""
        stream, cron = notifications.sources
        assert isinstance(stream, Stream)
        assert isinstance(cron, Cron)
        assert (stream.subject, stream.durable) == ("fanbase", "fanbase-channels")
        assert (cron.expression, cron.tz, cron.topic) == (
            "0 9 * * *",
            "Europe/Paris",
            "daily-digest",
        )
        assert notifications.branches[0] == follows.branches[0]
        assert notifications.route_for(cron).fn is route_digest  # type: ignore[union-attr]
        assert notifications.queues == channels.queues
        assert notifications.queue_for(DIGEST_JOB).name == "fanbase-email"
        assert notifications.topics[DIGEST_JOB].handler is send_digest
        assert notifications.topics == channels.topics  # every handler, none duplicated

    async def test_digest_router_makes_one_job_per_talent_dated_in_paris(self):
        """A tick at 23:30 UTC on Jan 1st is Jan 2nd in Paris; each talent gets one digest."""
        tick = CronTick("daily-digest", datetime(2025, 1, 1, 23, 30, tzinfo=UTC))
        routed = [j async for j in route_digest(tick)]
        assert [(j.topic, j.data) for j in routed] == [
            (
                "send-daily-digest",
                {"talent": t, "day": "2025-01-02", "scheduled": "2025-01-01T23:30:00+00:00"},
            )
            for t in ("talent-1", "talent-2")
        ]


async def test_each_channel_runs_its_jobs_on_its_own_queue(worker, js, redis):
    """Email, SMS and social jobs land on their own queue only and complete there."""
    proc = worker(APP)
    await proc.ready()
    follow = await publish(js, "fan-1", "talent-1", "followed")
    unfollow = await publish(js, "fan-2", "talent-2", "unfollowed")
    expected = merge(follow_ids(follow), unfollow_ids(unfollow))

    sent = {}
    for queue in (EMAIL, SMS, SOCIAL):
        n = len(expected[queue])
        records = await eventually(lambda q=queue, n=n: all_completed(redis, q, n))
        for job_id, r in records.items():
            sent[queue.name, job_id] = (r["topic"], r["attempt"], json.loads(r["result"])["to"])
    assert sent == {
        ("fanbase-email", f"fanbase:{follow}:0"): ("notify-fan-following", "1", "ada@example.com"),
        ("fanbase-email", f"fanbase:{follow}:1"): (
            "notify-talent-following",
            "1",
            "nina@example.com",
        ),
        ("fanbase-sms", f"fanbase:{follow}:2"): ("text-fan-following", "1", "+33600000001"),
        ("fanbase-social", f"fanbase:{follow}:3"): ("post-talent-following", "1", "@nina"),
        ("fanbase-email", f"fanbase:{unfollow}:0"): (
            "confirm-fan-unfollowing",
            "1",
            "grace@example.com",
        ),
        ("fanbase-sms", f"fanbase:{unfollow}:1"): ("text-fan-unfollowing", "1", "+33600000002"),
    }


async def test_a_slow_sms_gateway_never_holds_up_email(worker, js, redis):
    """With SMS at concurrency 1 and 2 s each, emails all finish while SMS has a backlog."""
    latency = 2.0
    proc = worker(APP, env={"FANBASE_SMS_CONCURRENCY": "1", "FANBASE_SMS_LATENCY": str(latency)})
    await proc.ready()
    seqs = [
        await publish(js, fan, talent, "followed")
        for fan, talent in (("fan-1", "talent-1"), ("fan-2", "talent-1"), ("fan-3", "talent-2"))
    ]
    expected = merge(*(follow_ids(s) for s in seqs))

    emails = await eventually(lambda: all_completed(redis, EMAIL, 6))
    sms_then = await jobs(redis, SMS)
    assert set(emails) == expected[EMAIL]
    assert set(sms_then) == expected[SMS]
    waiting = [i for i, r in sms_then.items() if r["state"] != "completed"]
    assert len(waiting) >= 2, sms_then  # the backlog: at most one SMS has gone out

    sms = await eventually(lambda: all_completed(redis, SMS, 3), timeout=latency * 3 + 10)
    finished = sorted(int(r["finished"]) for r in sms.values())
    # One at a time: each SMS finished a full gateway latency after the previous one.
    gaps = [b - a for a, b in pairwise(finished)]
    assert all(gap >= latency * 1000 - 100 for gap in gaps), gaps


async def test_notification_sent_is_audited_once_even_when_the_sender_retries(worker, js, redis):
    """Senders that fail right after emitting are retried; each notification is audited once."""
    proc = worker(APP, env={"FANBASE_FAIL_AFTER_EMIT": "email,sms,social"})
    await proc.ready()
    follow_1 = await publish(js, "fan-1", "talent-1", "followed")
    follow_2 = await publish(js, "fan-2", "talent-2", "followed")
    unfollow = await publish(js, "fan-1", "talent-1", "unfollowed")
    expected = merge(follow_ids(follow_1), follow_ids(follow_2), unfollow_ids(unfollow))
    notification_ids = set().union(*expected.values())
    assert len(notification_ids) == 10

    for queue in (EMAIL, SMS, SOCIAL):
        records = await eventually(
            lambda q=queue: all_completed(redis, q, len(expected[q])), timeout=20
        )
        assert set(records) == expected[queue]
        for job_id, r in records.items():
            # The drill failed attempt 1 after its emit; attempt 2 completed.
            assert (r["attempt"], "fault drill" in r["error"]) == ("2", True), (job_id, r)

    # Every emit happened before its job completed: the stream is final now.
    info = await js.stream_info(SENT_STREAM)
    assert info.state.messages == 10
    audits = await eventually(lambda: all_completed(redis, AUDIT, 10))
    assert set(audits) == {f"{SENT_STREAM}:{seq}:0" for seq in range(1, 11)}
    audited = [json.loads(r["result"])["notification"] for r in audits.values()]
    assert sorted(audited) == sorted(notification_ids)
    channels = sorted(json.loads(r["result"])["channel"] for r in audits.values())
    assert channels == ["email"] * 5 + ["sms"] * 3 + ["social"] * 2


async def test_only_queue_sms_runs_only_sms_jobs(worker, js, redis):
    """`--only queue:fanbase-sms` sends the SMS; email, social and audit jobs stay queued."""
    sms_worker = worker(APP, "--only", "queue:fanbase-sms")
    router = worker(APP, "--only", "stream")
    await sms_worker.ready()
    await router.ready()
    started = next(x for x in sms_worker.lines() if x.get("event") == "flowline started")
    assert (started["queues"], started["streams"], started["crons"]) == (["fanbase-sms"], [], [])

    follow_1 = await publish(js, "fan-1", "talent-1", "followed")
    follow_2 = await publish(js, "fan-2", "talent-2", "followed")
    unfollow = await publish(js, "fan-1", "talent-1", "unfollowed")
    expected = merge(follow_ids(follow_1), follow_ids(follow_2), unfollow_ids(unfollow))

    sms = await eventually(lambda: all_completed(redis, SMS, 3))
    assert set(sms) == expected[SMS]

    # The router also ingested the SMS senders' NotificationSent: 3 audit jobs, never run.
    async def audits_queued() -> bool:
        return await states(redis, AUDIT) == {"queued": 3}

    await eventually(audits_queued)
    await asyncio.sleep(0.5)  # give a wrongly started email/social worker time to show up
    for queue in (EMAIL, SOCIAL):
        records = await jobs(redis, queue)
        assert set(records) == expected[queue]
        assert {(r["state"], r["attempt"]) for r in records.values()} == {("queued", "1")}
        assert await redis.xlen(queue.jobs) == len(expected[queue])
    assert await states(redis, AUDIT) == {"queued": 3}


async def test_digest_fires_each_tick_once_across_three_cron_processes(worker, redis):
    """Three `--only cron` processes: every 1 s tick fires once, ticks are consecutive."""
    crons = [worker(DEMO, "--only", "cron") for _ in range(3)]
    queues = worker(DEMO, "--only", "queue")
    for proc in (*crons, queues):
        await proc.ready()
    await asyncio.sleep(4.5)
    for proc in crons:
        proc.signal(signal.SIGTERM)
    for proc in crons:
        assert await proc.wait() == 0, proc.output()

    fired = sorted(
        line["scheduled"]
        for proc in crons
        for line in proc.lines()
        if line.get("event") == "cron fired"
    )
    by_tick: dict[int, set[int]] = defaultdict(set)
    for job_id in await jobs(redis, EMAIL):
        m = re.fullmatch(r"cron:daily-digest:(\d+):(\d+)", job_id)
        assert m, job_id
        by_tick[int(m[1])].add(int(m[2]))
    ticks = sorted(by_tick)
    assert len(ticks) >= 3, (ticks, fired)
    assert all(indexes == {0, 1} for indexes in by_tick.values()), by_tick  # one per talent
    assert [b - a for a, b in pairwise(ticks)] == [1000] * (len(ticks) - 1)
    # Fired once each: one "cron fired" log line per tick, across all three processes.
    assert fired == [iso(t) for t in ticks]

    records = await eventually(lambda: all_completed(redis, EMAIL, 2 * len(ticks)))
    for job_id, r in records.items():
        _, _, tick_ms, index = job_id.split(":")
        result = json.loads(r["result"])
        assert result["scheduled"] == iso(int(tick_ms))
        assert result["talent"] == ("talent-1", "talent-2")[int(index)]
        assert r["attempt"] == "1"


def test_extended_example_runs_end_to_end():
    """`python -m examples.fanbase.extended` sends, audits and digests, then exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.fanbase.extended"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "sent 18 notifications: 9 email, 5 sms, 4 social" in out
    assert out.count("✓ ") == 18
    assert "✓ sms    text-fan-following" in out
    assert "-> @nina: Ada (@ada) joined your fanclub" in out
    audited = re.search(r"audited (\d+) notifications, each exactly once", out)
    assert audited, out
    assert int(audited[1]) >= 20  # 18 channel notifications and at least one tick's 2 digests
    assert out.count("≡ audit") >= int(audited[1])
    assert re.search(r"✉ digest cron:daily-digest:\d+:0 +-> nina@example.com: Your fanbase", out)
    assert "digests for 2 talents on " in out
