"""A pipeline of two streams and a cron sharing one queue (composition tests)."""

from __future__ import annotations

from typing import Any

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import Cron, CronTick, Job, JobContext, Queue, Route, Stream


def to_email(event: Any) -> Job:
    who = "digest" if isinstance(event, CronTick) else event.fan
    return Job("send-email", {"to": who})


signups = Stream("joined-signups", FanbaseEvent) >> Route(to_email)
orders = Stream("joined-orders", FanbaseEvent) >> Route(to_email)
digest = Cron(3600, topic="joined-digest", catch_up=False) >> Route(to_email)
pipeline = (signups | orders | digest) >> Queue("joined-email")


@pipeline.dequeue("send-email")
def send_email(job: JobContext) -> str:
    return f"emailed {job.data['to']}"
