"""Routers' results become jobs, and jobs become rows with stable ids (no server needed)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowline import (
    Job,
    JobContext,
    Pipeline,
    Queue,
    Route,
    RouteError,
    SerializationError,
    StageError,
    Stream,
    UnknownTopicError,
)
from flowline.runtime.enqueue import plan
from flowline.runtime.routing import call_router, normalise

JOBS = [Job("welcome", {"fan": "f1"}), Job("engage", {"talent": "t1"})]


def route(fn: Any, name: str = "fanbase-router") -> Route[Any]:
    return Route(fn, name=name)


async def handler(job: JobContext) -> None:
    return None


def pipeline() -> Pipeline:
    """Topics ``welcome`` on queue ``email``; ``engage`` and ``report`` on queue ``rest``."""
    p = (
        Stream("fanbase", bytes)
        >> Route(lambda event: [])
        >> Queue("email", topics=["welcome"])
        >> Queue("rest")
    )
    for topic in ("welcome", "engage", "report"):
        p.dequeue(topic, handler)
    return p


class TestRouterShapes:
    async def test_list_of_jobs(self) -> None:
        """A list of `Job` objects is taken as is."""
        assert await call_router(route(lambda e: JOBS), None) == JOBS

    async def test_single_job(self) -> None:
        """A single `Job` is one job."""
        assert await call_router(route(lambda e: JOBS[0]), None) == [JOBS[0]]

    async def test_topic_data_dicts(self) -> None:
        """``{"topic", "data"}`` dicts become jobs, options included."""
        jobs = await call_router(
            route(
                lambda e: [
                    {"topic": "welcome", "data": {"fan": "f1"}},
                    {"topic": "engage", "data": 1, "delay": 5, "priority": 2, "key": "k1"},
                    {"topic": "report"},
                ]
            ),
            None,
        )
        assert jobs == [
            Job("welcome", {"fan": "f1"}),
            Job("engage", 1, delay=5, priority=2, key="k1"),
            Job("report", None),
        ]

    async def test_single_dict(self) -> None:
        """A single ``{"topic", "data"}`` dict is one job."""
        assert await call_router(route(lambda e: {"topic": "welcome", "data": 1}), None) == [
            Job("welcome", 1)
        ]

    async def test_pipelinejs_jobs_dict(self) -> None:
        """``{"jobs": [...]}``, the pipelinejs router shape, ports unchanged."""
        result = {"jobs": [{"topic": "welcome", "data": {"fan": "f1"}}, JOBS[1]]}
        assert await call_router(route(lambda e: result), None) == JOBS

    @pytest.mark.parametrize("empty", [None, [], (), {"jobs": []}, {"jobs": None}])
    async def test_nothing_is_no_jobs(self, empty: Any) -> None:
        """None, an empty list or ``{"jobs": []}`` mean no jobs."""
        assert await call_router(route(lambda e: empty), None) == []

    async def test_generator(self) -> None:
        """A generator's yields are the jobs."""

        def gen(event: Any) -> Iterator[Job]:
            yield JOBS[0]
            yield {"topic": "engage", "data": {"talent": "t1"}}

        assert await call_router(route(gen), None) == JOBS

    async def test_async_function(self) -> None:
        """An async router is awaited."""

        async def fn(event: Any) -> list[Job]:
            return JOBS

        assert await call_router(route(fn), None) == JOBS

    async def test_async_function_returning_none(self) -> None:
        """An async router returning nothing is no jobs."""

        async def fn(event: Any) -> None:
            return None

        assert await call_router(route(fn), None) == []

    async def test_async_generator(self) -> None:
        """An async generator's yields are the jobs."""

        async def gen(event: Any) -> AsyncIterator[Job]:
            for job in JOBS:
                yield job

        assert await call_router(route(gen), None) == JOBS

    async def test_router_gets_the_event(self) -> None:
        """The router is called with the event."""
        assert await call_router(route(lambda e: Job("welcome", e)), {"fan": "f9"}) == [
            Job("welcome", {"fan": "f9"})
        ]

    def test_normalise_directly(self) -> None:
        """`normalise` applies the same rules without calling anything."""
        assert normalise(({"topic": "welcome", "data": 1},), "r") == [Job("welcome", 1)]
        assert normalise(None, "r") == []


class TestRouterErrors:
    @pytest.mark.parametrize(("result", "kind"), [("welcome", "str"), (42, "int"), (b"x", "bytes")])
    async def test_not_jobs_names_the_stage(self, result: Any, kind: str) -> None:
        """A string or number is a RouteError naming what came back and the stage."""
        with pytest.raises(RouteError) as info:
            await call_router(route(lambda e: result), None)
        assert info.value.stage == "fanbase-router"
        assert str(info.value) == (
            f"router returned {kind}; return Job objects, {{'topic', 'data'}} dicts, "
            "{'jobs': [...]} or nothing [while running stage 'fanbase-router']"
        )

    @pytest.mark.parametrize("item", [42, "welcome", {"data": 1}, {"topic": 7}, None])
    async def test_item_that_is_not_a_job(self, item: Any) -> None:
        """An item that is not a job is a RouteError showing the item."""
        with pytest.raises(RouteError) as info:
            await call_router(route(lambda e: [JOBS[0], item]), None)
        assert info.value.stage == "fanbase-router"
        assert str(info.value) == (
            f"router produced {item!r}, which is not a job: "
            "use Job(topic, data) or {'topic': ..., 'data': ...} "
            "[while running stage 'fanbase-router']"
        )

    async def test_job_without_topic(self) -> None:
        """A job with an empty topic is refused."""
        with pytest.raises(RouteError, match="router produced a job without a topic"):
            await call_router(route(lambda e: Job("")), None)

    async def test_router_raising(self) -> None:
        """A router that raises is a RouteError naming the stage, caused by the original."""
        boom = ValueError("no such fan")

        def broken(event: Any) -> None:
            raise boom

        with pytest.raises(RouteError) as info:
            await call_router(Route(broken), None)
        assert info.value.__cause__ is boom
        assert info.value.stage == "TestRouterErrors.test_router_raising.<locals>.broken"
        assert str(info.value) == (
            "router raised ValueError: no such fan [while running stage "
            "'TestRouterErrors.test_router_raising.<locals>.broken']"
        )

    async def test_async_router_raising(self) -> None:
        """An async router that raises is wrapped the same way."""
        boom = KeyError("fan")

        async def broken(event: Any) -> None:
            raise boom

        with pytest.raises(RouteError) as info:
            await call_router(route(broken), None)
        assert (info.value.__cause__, info.value.stage) == (boom, "fanbase-router")

    async def test_generator_raising_midway(self) -> None:
        """A generator that raises after some yields is a RouteError: no partial job list."""
        boom = RuntimeError("half way")

        def gen(event: Any) -> Iterator[Job]:
            yield JOBS[0]
            raise boom

        with pytest.raises(RouteError) as info:
            await call_router(route(gen), None)
        assert (info.value.__cause__, info.value.stage) == (boom, "fanbase-router")

    async def test_async_generator_raising_midway(self) -> None:
        """An async generator that raises after some yields is a RouteError too."""
        boom = RuntimeError("half way")

        async def gen(event: Any) -> AsyncIterator[Job]:
            yield JOBS[0]
            raise boom

        with pytest.raises(RouteError) as info:
            await call_router(route(gen), None)
        assert (info.value.__cause__, info.value.stage) == (boom, "fanbase-router")

    def test_route_error_is_a_stage_error(self) -> None:
        """RouteError is a StageError, so `.stage` is always there."""
        assert issubclass(RouteError, StageError)


class TestPlan:
    def test_ids_are_base_and_index(self) -> None:
        """Each job's id is ``<base>:<index>``, and it goes to its topic's queue."""
        rows = plan(pipeline(), JOBS, "fanbase:17", "stream", "route")
        assert [(r.id, r.queue, r.topic) for r in rows] == [
            ("fanbase:17:0", "email", "welcome"),
            ("fanbase:17:1", "rest", "engage"),
        ]
        assert [r.origin for r in rows] == ["stream", "stream"]

    def test_key_gives_key_id(self) -> None:
        """A job with a key has id ``key:<key>``; the others keep their index."""
        jobs = [Job("welcome", 1), Job("engage", 2, key="fan-f1-welcome"), Job("report", 3)]
        rows = plan(pipeline(), jobs, "b", "direct", "enqueue")
        assert [r.id for r in rows] == ["b:0", "key:fan-f1-welcome", "b:2"]

    def test_data_is_compact_json(self) -> None:
        """Data is stored as compact JSON."""
        rows = plan(pipeline(), [Job("welcome", {"fan": "f1", "n": [1, 2]})], "b", "o", "route")
        assert rows[0].data == '{"fan":"f1","n":[1,2]}'

    def test_unknown_topic_lists_known_topics(self) -> None:
        """A topic nobody dequeues is an UnknownTopicError listing the dequeued topics."""
        with pytest.raises(UnknownTopicError) as info:
            plan(pipeline(), [JOBS[0], Job("notify")], "b", "o", "route")
        assert info.value.stage == "route"
        assert str(info.value) == (
            "no handler dequeues topic 'notify' (dequeued topics: engage, report, welcome); "
            "add @pipeline.dequeue('notify') [while running stage 'route']"
        )

    def test_non_json_data(self) -> None:
        """Data JSON cannot hold is a SerializationError naming the topic and the stage."""
        with pytest.raises(SerializationError) as info:
            plan(pipeline(), [Job("welcome", {"at": object()})], "b", "o", "route")
        assert str(info.value).startswith("data of job 'welcome' is not JSON-serialisable: ")
        assert info.value.__notes__ == ["[while running stage 'route']"]

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, b"bytes"])
    def test_values_json_would_corrupt_are_refused(self, value: Any) -> None:
        """NaN, infinities, sets and bytes are refused rather than written as invalid JSON."""
        with pytest.raises(SerializationError):
            plan(pipeline(), [Job("welcome", value)], "b", "o", "route")

    @pytest.mark.parametrize("delay", [30, 30.0, timedelta(seconds=30)])
    def test_delayed_jobs_are_due_later(self, delay: float | timedelta) -> None:
        """A delayed job's due time is now plus the delay, in milliseconds."""
        before = time.time()
        rows = plan(pipeline(), [Job("welcome", 1, delay=delay)], "b", "o", "route")
        after = time.time()
        assert int((before + 30) * 1000) <= rows[0].due_ms <= int((after + 30) * 1000)

    @pytest.mark.parametrize("delay", [None, 0, timedelta(0)])
    def test_undelayed_jobs_are_due_now(self, delay: float | timedelta | None) -> None:
        """Without a delay, due is 0: run as soon as possible."""
        rows = plan(pipeline(), [Job("welcome", 1, delay=delay)], "b", "o", "route")
        assert rows[0].due_ms == 0

    def test_no_jobs_no_rows(self) -> None:
        """Planning nothing gives nothing."""
        assert plan(pipeline(), [], "b", "o", "route") == []


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
jobs_strategy = st.lists(
    st.builds(Job, topic=st.sampled_from(["welcome", "engage", "report"]), data=json_values),
    max_size=20,
)
base_ids = st.from_regex(r"[a-z][a-z0-9.-]{0,15}:[0-9]{1,9}", fullmatch=True)


class TestPlanProperties:
    # The machine is shared with real servers and workers: time per example is not the point.
    @settings(deadline=None)
    @given(jobs=jobs_strategy, base=base_ids)
    def test_ids_unique_stable_and_indexed(self, jobs: list[Job], base: str) -> None:
        """For any jobs, ids are unique, the same on every planning, and ``<base>:<index>``."""
        p = pipeline()
        first = [r.id for r in plan(p, jobs, base, "stream", "route")]
        again = [r.id for r in plan(p, list(jobs), base, "stream", "route")]
        assert first == again
        assert len(set(first)) == len(first)
        assert first == [f"{base}:{i}" for i in range(len(jobs))]
        assert all(re.fullmatch(rf"{re.escape(base)}:\d+", i) for i in first)

    # The machine is shared with real servers and workers: time per example is not the point.
    @settings(deadline=None)
    @given(jobs=jobs_strategy)
    def test_data_round_trips(self, jobs: list[Job]) -> None:
        """What a handler will decode equals what the router produced."""
        rows = plan(pipeline(), jobs, "b:1", "stream", "route")
        assert [json.loads(r.data) for r in rows] == [j.data for j in jobs]
