"""The stock taskiq app of the worker figure: a Redis stream broker and one no-op task.

taskiq names a task by its module and function, so the process that kicks and the one that
receives must import the same module; the broker reads the Redis URL from the environment
variable the benchmark sets.
"""

from __future__ import annotations

import os

from taskiq_redis import RedisStreamBroker

URL_ENV = "FLOWLINE_BENCH_REDIS_URL"

broker = RedisStreamBroker(
    os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"),
    queue_name="bench-taskiq",
    # Read from the start: the jobs are kicked before the receiver's group exists.
    consumer_id="0",
)


@broker.task
async def noop() -> None:
    return None
