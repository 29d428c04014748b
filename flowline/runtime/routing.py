"""Calling a router and turning whatever it returns into `Job` s."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Iterable, Mapping
from types import GeneratorType
from typing import Any

from .._stages import Job, Route
from ..errors import RouteError


async def call_router(route: Route[Any], event: Any) -> list[Job]:
    """Run `route` on `event` (sync, async, generator or async generator) and normalise.

    Raises:
        RouteError: the router raised, or returned something that is not a job.
    """
    try:
        result = route.fn(event)
        if type(result) is GeneratorType:
            # The common case (a sync generator router), without the abstract-type checks below.
            result = list(result)
        elif inspect.isawaitable(result):
            result = await result
        if isinstance(result, AsyncIterable):
            result = [item async for item in result]
    except Exception as exc:
        raise RouteError(f"router raised {type(exc).__name__}: {exc}", stage=route.name) from exc
    return normalise(result, route.name)


def normalise(result: Any, stage: str) -> list[Job]:
    """Accepts `Job`, ``{"topic", "data"}``, ``{"jobs": [...]}``, an iterable of those, or None."""
    if type(result) is list and all(type(item) is Job for item in result):
        return result  # the fast path: a list of Job objects
    if result is None:
        return []
    if isinstance(result, Mapping) and "jobs" in result and "topic" not in result:
        result = result["jobs"] or []
    if isinstance(result, (Job, Mapping)):
        result = [result]
    if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        raise RouteError(
            f"router returned {type(result).__name__}; return Job objects, "
            f"{{'topic', 'data'}} dicts, {{'jobs': [...]}} or nothing",
            stage=stage,
        )
    try:
        return [_as_job(item, stage) for item in result]
    except RouteError:
        raise
    except Exception as exc:
        raise RouteError(f"router raised {type(exc).__name__}: {exc}", stage=stage) from exc


def _as_job(item: Any, stage: str) -> Job:
    if isinstance(item, Job):
        job = item
    elif isinstance(item, Mapping) and isinstance(item.get("topic"), str):
        extra = {k: item[k] for k in ("delay", "priority", "key") if k in item}
        job = Job(item["topic"], item.get("data"), **extra)
    else:
        raise RouteError(
            f"router produced {item!r}, which is not a job: "
            f"use Job(topic, data) or {{'topic': ..., 'data': ...}}",
            stage=stage,
        )
    if not isinstance(job.topic, str) or not job.topic:
        raise RouteError(f"router produced a job without a topic: {item!r}", stage=stage)
    return job
