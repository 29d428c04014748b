"""The recorder pipeline's queue as a taskiq broker: ``taskiq worker tests.apps.taskiq_app:broker``.

Its middleware appends ``{"hook", "task", "id", ...}`` to the Redis list ``test:taskiq`` around
every task it runs, so tests see that taskiq's middlewares wrap flowline jobs in a real worker.
"""

from __future__ import annotations

import json
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult

from flowline import compile_broker
from tests.apps.recorder import _client, pipeline


class Recording(TaskiqMiddleware):
    """Records taskiq's worker-side hooks in Redis."""

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        entry = {"hook": "pre_execute", "task": message.task_name, "id": message.task_id}
        await _client().rpush("test:taskiq", json.dumps({**entry, "args": message.args}))
        return message

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        entry = {"hook": "post_execute", "task": message.task_name, "id": message.task_id}
        value = {"result": result.return_value, "is_err": result.is_err}
        await _client().rpush("test:taskiq", json.dumps({**entry, **value}))


broker = compile_broker(pipeline).with_middlewares(Recording())
