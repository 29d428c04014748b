"""The fanbase notifications pipeline, as in pipelinejs's README, in flowline.

Run its workers with ``flowline worker examples.fanbase.pipeline:pipeline``.
"""

from __future__ import annotations

from typing import Any

from flowline import Job, JobContext, Queue, Route, Stream

from . import services as svc
from .fanbase_pb2 import FanbaseEvent


# Functional requirement 1: turn FanbaseEvents into jobs.
def router(event: FanbaseEvent) -> Any:
    data = {"fan": event.fan, "talent": event.talent}
    if event.action == "followed":
        yield Job("notify-fan-following", data)  # business logic 1: welcome the fan
        yield Job("notify-talent-following", data)  # business logic 2: tell the talent
    elif event.action == "unfollowed":
        yield Job("confirm-fan-unfollowing", data)  # business logic 3: confirm with the fan
    # Any other action is ignored: no jobs. (Raise to dead-letter it instead.)


# Functional requirement 2: the pipeline.
pipeline = Stream("fanbase", FanbaseEvent) >> Route(router) >> Queue("fanbase-notifications")


# Functional requirement 4: the workers.
@pipeline.dequeue("notify-fan-following")
async def welcome_fan(job: JobContext) -> dict[str, object]:
    fan = await svc.users.find_by_id(job.data["fan"])
    await job.progress(5)
    talent = await svc.users.find_by_id(job.data["talent"])
    await job.progress(10)
    subject = f"You've started following {talent.name}!"
    message = f"Hey {fan.name}, thanks for following {talent.name}!"
    await job.progress(15)
    confirmation = await svc.email.send(fan.email, subject, message)
    await job.progress(99)
    return confirmation


@pipeline.dequeue("notify-talent-following")
async def engage_talent(job: JobContext) -> dict[str, object]:
    fan = await svc.users.find_by_id(job.data["fan"])
    await job.progress(5)
    talent = await svc.users.find_by_id(job.data["talent"])
    await job.progress(10)
    subject = f"{fan.name} started following you!"
    message = f"Congratulations {talent.name}, {fan.name} just joined your fanclub!"
    await job.progress(15)
    confirmation = await svc.email.send(talent.email, subject, message)
    await job.progress(99)
    return confirmation


@pipeline.dequeue("confirm-fan-unfollowing")
async def confirm_unfollow(job: JobContext) -> dict[str, object]:
    fan = await svc.users.find_by_id(job.data["fan"])
    await job.progress(5)
    talent = await svc.users.find_by_id(job.data["talent"])
    await job.progress(10)
    subject = f"You've stopped following {talent.name}!"
    message = (
        f"Hey {fan.name}, we just wanted to confirm that you've stopped following {talent.name}."
    )
    await job.progress(15)
    confirmation = await svc.email.send(fan.email, subject, message)
    await job.progress(99)
    return confirmation
