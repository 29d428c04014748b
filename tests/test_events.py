"""The event bus: on/once/off, wildcards, faulty and async listeners, and the Event object."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from flowline import Event, Job, Pipeline, Queue, Route, Stream
from flowline._events import EventBus


def router(event: Any) -> list[Job]:
    return []


def pipeline() -> Pipeline:
    return Stream("s", bytes) >> Route(router) >> Queue("q")


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


class TestSubscribing:
    def test_on_hears_every_matching_event(self) -> None:
        """`on` hears each event of its name, and only those."""
        bus, heard = EventBus("p"), []
        bus.on("job:complete", heard.append)
        bus.emit("job:complete", "job", id="1")
        bus.emit("job:failed", "job", id="2")
        bus.emit("job:complete", "job", id="3")
        assert [e.id for e in heard] == ["1", "3"]

    def test_event_carries_name_stage_pipeline_and_data(self) -> None:
        """An event says what happened, where, in which pipeline, with its data."""
        bus, heard = EventBus("fanbase"), []
        bus.on("route", heard.append)
        bus.emit("route", "route", jobs=[1, 2])
        assert heard == [Event("route", "route", "fanbase", {"jobs": [1, 2]})]

    def test_once_hears_only_the_next_event(self) -> None:
        """`once` is removed after its first event."""
        bus, heard = EventBus("p"), []
        bus.once("job:complete", heard.append)
        bus.emit("job:complete", "job", id="1")
        bus.emit("job:complete", "job", id="2")
        assert [e.id for e in heard] == ["1"]
        assert not bus.wants("job:complete")

    def test_once_leaves_other_listeners(self) -> None:
        """Removing a `once` listener keeps the `on` listeners of the same name."""
        bus, always, first = EventBus("p"), [], []
        bus.on("x", always.append)
        bus.once("x", first.append)
        bus.emit("x", "s")
        bus.emit("x", "s")
        assert (len(always), len(first)) == (2, 1)

    def test_off_removes_one_listener(self) -> None:
        """`off(name, listener)` removes that listener only."""
        bus, a, b = EventBus("p"), [], []
        bus.on("x", a.append)
        listener = b.append
        bus.on("x", listener)
        bus.off("x", listener)
        bus.emit("x", "s")
        assert (len(a), len(b)) == (1, 0)

    def test_off_without_listener_removes_all(self) -> None:
        """`off(name)` removes every listener of that name."""
        bus, a = EventBus("p"), []
        bus.on("x", a.append)
        bus.on("x", a.append)
        bus.off("x")
        bus.emit("x", "s")
        assert a == []
        assert not bus.wants("x")

    def test_off_unknown_is_harmless(self) -> None:
        """Removing what was never added does nothing."""
        bus = EventBus("p")
        bus.off("nothing")
        bus.off("nothing", print)
        assert not bus.wants("nothing")

    def test_star_hears_everything(self) -> None:
        """``*`` hears every event, errors included."""
        bus, heard = EventBus("p"), []
        bus.on("*", heard.append)
        bus.emit("job:complete", "job")
        bus.emit("error:route", "route", error=ValueError("x"))
        bus.emit("cron:nightly", "cron")
        assert names(heard) == ["job:complete", "error:route", "cron:nightly"]

    def test_error_hears_every_stage_error(self) -> None:
        """``error`` hears each ``error:<stage>`` and nothing else."""
        bus, heard = EventBus("p"), []
        bus.on("error", heard.append)
        bus.emit("error:decode", "decode")
        bus.emit("job:complete", "job")
        bus.emit("error:job", "job")
        assert names(heard) == ["error:decode", "error:job"]

    def test_specific_error_then_error_then_star(self) -> None:
        """An error event reaches its own listeners, then ``error``, then ``*``, once each."""
        bus, order = EventBus("p"), []
        bus.on("*", lambda e: order.append("*"))
        bus.on("error", lambda e: order.append("error"))
        bus.on("error:route", lambda e: order.append("error:route"))
        bus.emit("error:route", "route")
        assert order == ["error:route", "error", "*"]

    def test_non_callable_listener_is_refused(self) -> None:
        """A listener must be callable."""
        with pytest.raises(TypeError) as info:
            EventBus("p").on("x", 42)  # type: ignore[arg-type]
        assert str(info.value) == "listener for 'x' must be callable, got 42"


class TestWants:
    def test_false_when_nobody_listens(self) -> None:
        """With no listener, `wants` is False (hot paths skip building the event)."""
        bus = EventBus("p")
        assert not bus.wants("job:complete")
        assert not bus.wants("error:job")

    def test_true_for_named_listener(self) -> None:
        """A listener on the name makes `wants` True for that name only."""
        bus = EventBus("p")
        bus.on("job:complete", print)
        assert bus.wants("job:complete")
        assert not bus.wants("job:failed")

    def test_error_listener_wants_stage_errors_only(self) -> None:
        """An ``error`` listener wants ``error:*`` names and nothing else."""
        bus = EventBus("p")
        bus.on("error", print)
        assert bus.wants("error:decode")
        assert not bus.wants("job:complete")

    def test_star_wants_everything(self) -> None:
        """A ``*`` listener wants every name."""
        bus = EventBus("p")
        bus.on("*", print)
        assert bus.wants("job:complete")
        assert bus.wants("anything")


class TestFaultyListeners:
    def test_raising_listener_does_not_stop_others_nor_the_emitter(self) -> None:
        """A sync listener that raises is logged; later listeners still hear the event."""
        bus, heard = EventBus("p"), []

        def broken(event: Event) -> None:
            raise ValueError("listener bug")

        bus.on("x", broken)
        bus.on("x", heard.append)
        bus.on("*", heard.append)
        with capture_logs() as logs:
            bus.emit("x", "stage")
        assert names(heard) == ["x", "x"]
        assert [(log["event"], log["log_level"], log["event_name"]) for log in logs] == [
            ("listener raised", "error", "x")
        ]
        assert "broken" in logs[0]["listener"]

    async def test_raising_async_listener_is_logged(self) -> None:
        """An async listener that raises is logged when it runs; nothing reaches the emitter."""
        bus, heard = EventBus("p"), []

        async def broken(event: Event) -> None:
            raise KeyError("async listener bug")

        bus.on("x", broken)
        bus.on("x", heard.append)
        with capture_logs() as logs:
            bus.emit("x", "stage")
            await bus.drain()
        assert names(heard) == ["x"]
        assert [(log["event"], log["event_name"]) for log in logs] == [("listener raised", "x")]


class TestAsyncListeners:
    async def test_async_listener_is_scheduled_and_drain_waits(self) -> None:
        """An async listener runs in the background; `drain()` waits until it finished."""
        bus, done = EventBus("p"), []
        started = asyncio.Event()

        async def slow(event: Event) -> None:
            started.set()
            await asyncio.sleep(0.05)
            done.append(event.name)

        bus.on("x", slow)
        bus.emit("x", "stage")
        assert done == []
        await asyncio.wait_for(started.wait(), 1)
        assert done == []
        await asyncio.wait_for(bus.drain(), 2)
        assert done == ["x"]

    async def test_drain_waits_for_listeners_scheduled_while_draining(self) -> None:
        """A listener that emits again is waited for too."""
        bus, done = EventBus("p"), []

        async def first(event: Event) -> None:
            await asyncio.sleep(0.01)
            bus.emit("second", "stage")

        async def second(event: Event) -> None:
            await asyncio.sleep(0.01)
            done.append(event.name)

        bus.on("first", first)
        bus.on("second", second)
        bus.emit("first", "stage")
        await asyncio.wait_for(bus.drain(), 2)
        assert done == ["second"]

    async def test_drain_with_nothing_pending_returns(self) -> None:
        """`drain()` on an idle bus returns at once."""
        await asyncio.wait_for(EventBus("p").drain(), 1)


class TestEventObject:
    def test_attribute_access_reads_data(self) -> None:
        """`event.job` reads ``event.data["job"]``."""
        event = Event("job:complete", "job", "p", {"job": "ctx", "result": 42})
        assert (event.job, event.result) == ("ctx", 42)

    def test_fields_win_over_data(self) -> None:
        """The event's own fields are not shadowed by data keys."""
        event = Event("job:complete", "job", "p", {"name": "data-name"})
        assert event.name == "job:complete"

    def test_missing_key_is_attribute_error(self) -> None:
        """A key that is not in the data is an AttributeError naming it."""
        event = Event("x", "s", "p", {})
        with pytest.raises(AttributeError) as info:
            _ = event.job
        assert str(info.value) == "job"
        assert not hasattr(event, "error")
        assert getattr(event, "error", None) is None

    def test_event_is_frozen(self) -> None:
        """Listeners cannot change an event others will also see."""
        event = Event("x", "s", "p", {})
        with pytest.raises(AttributeError):
            event.name = "y"  # type: ignore[misc]


class TestPipelineListeners:
    def test_decorator_form(self) -> None:
        """`@pipeline.on(name)` registers the function and returns it unchanged."""
        p, heard = pipeline(), []

        @p.on("job:complete")
        def completed(event: Event) -> None:
            heard.append(event)

        assert callable(completed)
        p.bus.emit("job:complete", "job", id="1")
        assert [(e.pipeline, e.id) for e in heard] == [("s-q", "1")]

    def test_once_decorator_and_off(self) -> None:
        """`@pipeline.once` hears one event; `pipeline.off` stops a listener."""
        p, first, always = pipeline(), [], []

        @p.once("x")
        def one(event: Event) -> None:
            first.append(event)

        listener = always.append
        p.on("x", listener)
        p.bus.emit("x", "s")
        p.off("x", listener)
        p.bus.emit("x", "s")
        assert (len(first), len(always)) == (1, 1)

    def test_on_returns_the_listener(self) -> None:
        """`pipeline.on(name, fn)` returns fn, so it can be removed later."""
        p = pipeline()
        assert p.on("x", print) is print
