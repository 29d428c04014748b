"""The recorder app, plus a local listener writing each lifecycle event it hears to a file.

Lets a test compare what a remote reader got with what each process saw locally, in order.
FLOWLINE_TEST_EVENTS_FILE names the file: one JSON line per event, ``{"name", "id"}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flowline import Event
from flowline._events import is_lifecycle

from .recorder import pipeline

_PATH = os.environ.get("FLOWLINE_TEST_EVENTS_FILE")


def job_id(data: dict[str, Any]) -> Any:
    """The job an event is about: its job's id (object or dict), else its own `id`."""
    job = data.get("job")
    if job is None:
        return data.get("id")
    return job["id"] if isinstance(job, dict) else job.id


if _PATH:
    _file = open(_PATH, "a", buffering=1)  # noqa: SIM115 - lives as long as the worker

    def _write(event: Event) -> None:
        if is_lifecycle(event.name):
            _file.write(json.dumps({"name": event.name, "id": job_id(event.data)}) + "\n")

    pipeline.on("*", _write)

__all__ = ["job_id", "pipeline"]
