"""Stages as descriptions: ``>>`` chaining, validation, default names, decoders, backoff, cron."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor_pb2 import FieldDescriptorProto, FileDescriptorProto
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import (
    Backoff,
    Cron,
    Job,
    Pipeline,
    PipelineError,
    Queue,
    Route,
    SerializationError,
    Stream,
)
from flowline.runtime.cron import next_tick, previous_tick


def router(event: Any) -> list[Job]:
    return []


def other_router(event: Any) -> list[Job]:
    return []


MODULE_ROUTE = Route(lambda event: [])  # marker: module lambda


def line_of(marker: str) -> int:
    """The line of this file holding `marker` (lambdas are named by the line they are on)."""
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.endswith(f"# marker: {marker}"))


def at(*parts: int) -> float:
    """Epoch seconds of a UTC wall-clock time."""
    return datetime(*parts, tzinfo=UTC).timestamp()


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class TestChaining:
    def test_three_stages_make_one_flat_pipeline(self) -> None:
        """`a >> b >> c` is one Pipeline holding the three stages, not a nested pair."""
        s, r, q = Stream("s", FanbaseEvent), Route(router), Queue("q")
        pipeline = s >> r >> q
        assert isinstance(pipeline, Pipeline)
        assert pipeline.stages == (s, r, q)

    def test_many_queues_stay_flat(self) -> None:
        """A longer chain is still flat, in the order written."""
        s, r, a, b, c = Stream("s", bytes), Route(router), Queue("a"), Queue("b"), Queue("c")
        assert (s >> r >> a >> b >> c).stages == (s, r, a, b, c)

    def test_stage_rshift_non_stage_is_python_type_error(self) -> None:
        """`Stage >> 42` is Python's own TypeError naming both operands."""
        with pytest.raises(TypeError) as info:
            Stream("s", bytes) >> 42  # type: ignore[operator]
        assert str(info.value) == "unsupported operand type(s) for >>: 'Stream' and 'int'"

    def test_stage_returns_not_implemented_for_non_stages(self) -> None:
        """`__rshift__` hands unknown operands back to Python instead of raising itself."""
        assert Route(router).__rshift__("queue") is NotImplemented

    def test_pipeline_rshift_non_stage_is_python_type_error(self) -> None:
        """`Pipeline >> 42` and `42 >> Pipeline` are Python's TypeError too."""
        pipeline = Stream("s", bytes) >> Route(router)
        with pytest.raises(TypeError, match=r"'Pipeline' and 'int'"):
            pipeline >> 42  # type: ignore[operator]
        with pytest.raises(TypeError, match=r"'int' and 'Pipeline'"):
            42 >> pipeline  # type: ignore[operator]

    def test_pipeline_extended_with_a_stage(self) -> None:
        """A pipeline extended with a stage is a new flat pipeline; the original is unchanged."""
        s, r, a, b = Stream("s", bytes), Route(router), Queue("a"), Queue("b")
        head = s >> r
        longer = head >> a
        longest = longer >> b
        assert head.stages == (s, r)
        assert longer.stages == (s, r, a)
        assert longest.stages == (s, r, a, b)

    def test_pipeline_given_to_pipeline_is_flattened(self) -> None:
        """`Pipeline([head, Queue])` splices the head pipeline's stages in."""
        s, r, q = Stream("s", bytes), Route(router), Queue("q")
        assert Pipeline([s >> r, q]).stages == (s, r, q)

    def test_pipeline_extended_with_a_pipeline_is_flattened_and_validated(self) -> None:
        """`p >> other` splices other's stages; two complete pipelines make two sources."""
        first = Stream("a", bytes) >> Route(router)
        second = Stream("b", bytes) >> Route(other_router)
        with pytest.raises(PipelineError) as info:
            first >> second
        assert str(info.value) == (
            "Stream('b', bytes) comes after Stream('a', bytes): a pipeline's sources are "
            "joined with |, e.g. (Stream('a', bytes) | Stream('b', bytes)) >> Queue(...); "
            "or run several pipelines together with Pipelines(...)"
        )

    def test_extending_a_pipeline_with_handlers_is_refused(self) -> None:
        """Extending a pipeline that has handlers is refused, as `.named()` is: none are lost."""
        pipeline = Stream("s", bytes) >> Route(router) >> Queue("a", topics=["x"])
        pipeline.dequeue("x", router)
        with pytest.raises(PipelineError, match="before registering handlers"):
            pipeline >> Queue("b")

    def test_non_stage_in_pipeline_constructor(self) -> None:
        """`Pipeline([...])` with something that is not a stage names it."""
        with pytest.raises(PipelineError) as info:
            Pipeline([Stream("s", bytes), "route"])
        assert str(info.value) == "'route' is not a stage (Stream, Cron, Route or Queue)"


class TestStageValidation:
    @pytest.mark.parametrize("name", ["has space", "", "dots.not.allowed", "colon:no", "tab\t"])
    def test_queue_name_must_be_a_plain_word(self, name: str) -> None:
        """Queue names hold only letters, digits, '-' and '_' (they become Redis keys)."""
        with pytest.raises(PipelineError) as info:
            Queue(name)
        assert str(info.value) == (
            f"Queue name {name!r} may hold only letters, digits, '-' and '_'"
        )

    @pytest.mark.parametrize("subject", ["", "two words", "line\nbreak"])
    def test_stream_subject_must_be_a_nats_subject(self, subject: str) -> None:
        """An empty subject, or one with whitespace, is refused."""
        with pytest.raises(PipelineError) as info:
            Stream(subject, bytes)
        assert str(info.value) == f"Stream subject {subject!r} must be a non-empty NATS subject"

    @pytest.mark.parametrize("option", ["max_deliver", "batch", "max_payload"])
    def test_stream_counts_must_be_positive(self, option: str) -> None:
        """Stream max_deliver, batch and max_payload below 1 are refused."""
        with pytest.raises(PipelineError, match="must be positive"):
            Stream("s", bytes, **{option: 0})

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"concurrency": 0}, "concurrency and batch must be >= 1, retries >= 0"),
            ({"batch": 0}, "concurrency and batch must be >= 1, retries >= 0"),
            ({"retries": -1}, "concurrency and batch must be >= 1, retries >= 0"),
            ({"visibility_timeout": 0.5}, "visibility_timeout must be at least 1 second"),
        ],
    )
    def test_queue_options_are_checked(self, options: dict[str, Any], message: str) -> None:
        """Queue options that cannot work are refused with the queue's name."""
        with pytest.raises(PipelineError) as info:
            Queue("q", **options)
        assert str(info.value) == f"Queue 'q': {message}"

    def test_queue_durations_accept_timedelta(self) -> None:
        """Durations are seconds or timedelta."""
        q = Queue("q", visibility_timeout=timedelta(minutes=1), timeout=timedelta(seconds=5))
        assert (q.options.visibility_timeout, q.options.timeout) == (60.0, 5.0)

    @pytest.mark.parametrize("decoder", [42, "FanbaseEvent", None, FanbaseEvent()])
    def test_decoder_must_be_protobuf_class_or_callable(self, decoder: Any) -> None:
        """A decoder that is neither a message class nor callable is refused when built."""
        with pytest.raises(PipelineError) as info:
            Stream("s", decoder)
        assert str(info.value) == (
            "Stream decoder must be a protobuf message class or a callable bytes -> object, "
            f"got {decoder!r}"
        )

    def test_route_needs_a_callable(self) -> None:
        """`Route(42)` is refused with what it got."""
        with pytest.raises(PipelineError) as info:
            Route(42)  # type: ignore[arg-type]
        assert str(info.value) == "Route needs a callable router, got 42"

    @pytest.mark.parametrize("expression", ["*/5 * * *", "61 * * * *", "every minute", ""])
    def test_invalid_cron_expression(self, expression: str) -> None:
        """A cron expression croniter cannot read is refused when built."""
        with pytest.raises(PipelineError) as info:
            Cron(expression, topic="tick")
        assert str(info.value) == f"Cron({expression!r}): not a valid cron expression"

    @pytest.mark.parametrize("interval", [0, -5, timedelta(0)])
    def test_cron_interval_must_be_positive(self, interval: float | timedelta) -> None:
        """An interval of zero or less is refused."""
        with pytest.raises(PipelineError, match="Cron interval must be positive"):
            Cron(interval, topic="tick")

    def test_cron_topic_must_be_a_plain_word(self) -> None:
        """Cron topics name Redis keys, so they follow the queue-name rule."""
        with pytest.raises(PipelineError) as info:
            Cron(60, topic="every minute")
        assert str(info.value) == (
            "Cron topic 'every minute' may hold only letters, digits, '-' and '_'"
        )

    def test_cron_unknown_time_zone(self) -> None:
        """An unknown time zone is refused when the Cron is built, not at its first tick."""
        with pytest.raises(PipelineError, match="Mars/Olympus"):
            Cron("0 9 * * *", topic="tick", tz="Mars/Olympus")


class TestDefaultNames:
    def test_route_named_after_function_qualname(self) -> None:
        """A Route is named by its function's `__qualname__`."""

        def by_action(event: Any) -> None:
            return None

        assert Route(router).name == "router"
        assert Route(by_action).name == (
            "TestDefaultNames.test_route_named_after_function_qualname.<locals>.by_action"
        )

    def test_route_named_after_method_qualname(self) -> None:
        """A bound method keeps its class in the name."""

        class Routers:
            def fanbase(self, event: Any) -> None:
                return None

        assert Route(Routers().fanbase).name == (
            "TestDefaultNames.test_route_named_after_method_qualname.<locals>.Routers.fanbase"
        )

    def test_module_lambda_route_named_by_file_and_line(self) -> None:
        """A lambda written at module level is named ``<lambda at file:line>``."""
        line = line_of("module lambda")
        assert MODULE_ROUTE.name == f"<lambda at test_stages.py:{line}>"

    def test_lambda_route_named_by_file_and_line(self) -> None:
        """A lambda written inside a function is named ``<lambda at file:line>`` too."""
        route = Route(lambda event: [])  # marker: inner lambda
        assert route.name == f"<lambda at test_stages.py:{line_of('inner lambda')}>"

    def test_callable_object_named_after_its_class(self) -> None:
        """A callable instance without `__qualname__` is named after its class."""

        class Router:
            def __call__(self, event: Any) -> None:
                return None

        assert Route(Router()).name == (
            "TestDefaultNames.test_callable_object_named_after_its_class.<locals>.Router"
        )

    def test_explicit_name_wins(self) -> None:
        """`Route(fn, name=...)` overrides the default."""
        assert Route(router, name="fanbase-router").name == "fanbase-router"

    def test_stream_and_cron_names(self) -> None:
        """A Stream is named by its subject and a Cron by ``cron:<topic>``."""
        assert Stream("fanbase.events", bytes).name == "fanbase.events"
        assert Cron(60, topic="nightly").name == "cron:nightly"


class TestDecoder:
    def test_protobuf_class_decodes_with_from_string(self) -> None:
        """A protobuf message class decodes with its `FromString`."""
        stream = Stream("fanbase", FanbaseEvent)
        assert stream.decode == FanbaseEvent.FromString
        raw = FanbaseEvent(fan="f1", talent="t1", action="followed").SerializeToString()
        assert stream.decode(raw) == FanbaseEvent(fan="f1", talent="t1", action="followed")

    def test_any_callable_decodes(self) -> None:
        """Any callable ``bytes -> object`` is used as is."""
        stream = Stream("json", json.loads)
        assert stream.decode is json.loads
        assert stream.decode(b'{"fan": "f1"}') == {"fan": "f1"}

    def test_protobuf_stream_encodes_messages_and_dicts(self) -> None:
        """`Stream.encode` serialises a message, or a dict of its fields, to the same bytes."""
        stream = Stream("fanbase", FanbaseEvent)
        message = FanbaseEvent(fan="f1", talent="t1", action="followed")
        assert stream.encode is not None
        assert stream.encode(message) == message.SerializeToString()
        assert stream.encode({"fan": "f1", "talent": "t1", "action": "followed"}) == (
            message.SerializeToString()
        )
        assert stream.decode(stream.encode({"fan": "f2"})) == FanbaseEvent(fan="f2")

    def test_callable_decoder_has_no_encoder(self) -> None:
        """With a plain callable there is nothing to encode with: publish takes bytes."""
        assert Stream("json", json.loads).encode is None

    def test_describe_names_the_decoder(self) -> None:
        """A Stream describes itself with its subject and decoder."""
        assert repr(Stream("fanbase", FanbaseEvent)) == "Stream('fanbase', FanbaseEvent)"
        assert repr(Stream("json", json.loads)) == "Stream('json', loads)"


class TestBackoff:
    def test_grows_exponentially_without_jitter(self) -> None:
        """Attempt n waits base * factor**(n-1)."""
        backoff = Backoff(base=0.5, factor=3.0, cap=1000.0, jitter=False)
        assert [backoff.delay(n, 0.0) for n in range(1, 6)] == [0.5, 1.5, 4.5, 13.5, 40.5]

    def test_is_capped(self) -> None:
        """No delay exceeds the cap."""
        backoff = Backoff(base=1.0, factor=2.0, cap=10.0, jitter=False)
        assert [backoff.delay(n, 0.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]

    def test_cap_holds_for_any_attempt(self) -> None:
        """Even after thousands of attempts (retries that never give up) the delay is the cap."""
        assert Backoff(cap=300.0, jitter=False).delay(5000, 0.5) == 300.0
        assert Backoff(cap=300.0).delay(5000, 0.5) == 150.0

    def test_jitter_scales_by_the_given_random(self) -> None:
        """With jitter, the delay is the ceiling times the given random in [0, 1)."""
        backoff = Backoff(base=1.0, factor=2.0, cap=300.0)
        assert backoff.delay(4, 0.0) == 0.0
        assert backoff.delay(4, 0.25) == 2.0
        assert backoff.delay(4, 0.5) == 4.0
        assert 7.99 < backoff.delay(4, 0.999999) < 8.0

    def test_attempt_zero_is_treated_as_first(self) -> None:
        """Attempts below 1 never shrink the delay under `base`."""
        backoff = Backoff(base=2.0, jitter=False)
        assert backoff.delay(0, 0.0) == backoff.delay(1, 0.0) == 2.0

    def test_default_policy(self) -> None:
        """The default is 1 s doubling, capped at 5 minutes, with jitter."""
        assert Backoff() == Backoff(base=1.0, factor=2.0, cap=300.0, jitter=True)


class TestCronTicks:
    def test_interval_ticks_are_aligned_to_the_epoch(self) -> None:
        """Interval ticks fall on multiples of the interval."""
        cron = Cron(60, topic="minutely")
        now = at(2024, 1, 15, 12, 7, 30)
        assert utc(previous_tick(cron, now)) == datetime(2024, 1, 15, 12, 7, tzinfo=UTC)
        assert utc(next_tick(cron, now)) == datetime(2024, 1, 15, 12, 8, tzinfo=UTC)

    def test_interval_at_a_tick(self) -> None:
        """At a tick, previous is that tick and next is strictly after it."""
        cron = Cron(timedelta(minutes=5), topic="five")
        now = at(2024, 1, 15, 12, 5)
        assert previous_tick(cron, now) == now
        assert next_tick(cron, now) == now + 300

    def test_cron_expression_between_ticks(self) -> None:
        """`*/5 * * * *` at 12:07:30 has ticks 12:05 and 12:10."""
        cron = Cron("*/5 * * * *", topic="five")
        now = at(2024, 1, 15, 12, 7, 30)
        assert utc(previous_tick(cron, now)) == datetime(2024, 1, 15, 12, 5, tzinfo=UTC)
        assert utc(next_tick(cron, now)) == datetime(2024, 1, 15, 12, 10, tzinfo=UTC)

    def test_cron_expression_at_and_just_after_a_tick(self) -> None:
        """At 12:05:00 (and 12:05:00.5) the previous tick is 12:05 itself, the next 12:10."""
        cron = Cron("*/5 * * * *", topic="five")
        for now in (at(2024, 1, 15, 12, 5), at(2024, 1, 15, 12, 5) + 0.5):
            assert utc(previous_tick(cron, now)) == datetime(2024, 1, 15, 12, 5, tzinfo=UTC)
            assert utc(next_tick(cron, now)) == datetime(2024, 1, 15, 12, 10, tzinfo=UTC)

    def test_cron_expression_just_before_a_tick(self) -> None:
        """A millisecond before 12:05, the previous tick is 12:00 and the next 12:05."""
        cron = Cron("*/5 * * * *", topic="five")
        now = at(2024, 1, 15, 12, 5) - 0.001
        assert utc(previous_tick(cron, now)) == datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
        assert utc(next_tick(cron, now)) == datetime(2024, 1, 15, 12, 5, tzinfo=UTC)

    def test_time_zone_follows_daylight_saving(self) -> None:
        """`0 9 * * *` in Paris is 08:00 UTC in winter and 07:00 UTC in summer."""
        cron = Cron("0 9 * * *", topic="morning", tz="Europe/Paris")
        winter, summer = at(2024, 1, 15, 12), at(2024, 7, 15, 12)
        assert utc(previous_tick(cron, winter)) == datetime(2024, 1, 15, 8, tzinfo=UTC)
        assert utc(next_tick(cron, winter)) == datetime(2024, 1, 16, 8, tzinfo=UTC)
        assert utc(previous_tick(cron, summer)) == datetime(2024, 7, 15, 7, tzinfo=UTC)
        assert utc(next_tick(cron, summer)) == datetime(2024, 7, 16, 7, tzinfo=UTC)

    def test_half_hour_time_zone(self) -> None:
        """Hourly ticks in Kolkata (UTC+05:30) fall on the half hour in UTC."""
        cron = Cron("0 * * * *", topic="hourly", tz="Asia/Kolkata")
        now = at(2024, 7, 15, 7, 10)
        assert utc(previous_tick(cron, now)) == datetime(2024, 7, 15, 6, 30, tzinfo=UTC)
        assert utc(next_tick(cron, now)) == datetime(2024, 7, 15, 7, 30, tzinfo=UTC)

    def test_hourly_ticks_stay_hourly_across_daylight_saving(self) -> None:
        """Across the autumn change in Paris, hourly ticks are one hour apart in real time."""
        cron = Cron("0 * * * *", topic="hourly", tz="Europe/Paris")
        t, ticks = at(2024, 10, 26, 23, 30), []
        for _ in range(4):
            t = next_tick(cron, t)
            ticks.append(t)
        assert [b - a for a, b in pairwise(ticks)] == [3600.0] * 3
        assert utc(ticks[0]) == datetime(2024, 10, 27, 0, tzinfo=UTC)

    # The machine is shared with real servers and workers: time per example is not the point.
    @settings(deadline=None)
    @given(
        now=st.floats(min_value=1.6e9, max_value=2.0e9, allow_nan=False),
        schedule=st.sampled_from(
            [
                ("*/5 * * * *", "UTC"),
                ("0 9 * * *", "Europe/Paris"),
                ("15 1 * * *", "America/New_York"),
                ("*/7 * * * *", "Asia/Kolkata"),
                (45.0, "UTC"),
                (3600.0, "UTC"),
            ]
        ),
    )
    def test_now_lies_between_previous_and_next(
        self, now: float, schedule: tuple[str | float, str]
    ) -> None:
        """For any time, previous_tick(now) <= now < next_tick(now)."""
        cron = Cron(schedule[0], topic="tick", tz=schedule[1])
        assert previous_tick(cron, now) <= now < next_tick(cron, now)


class TestPublishingADict:
    """A dict published to a protobuf stream is read with protobuf's JSON mapping."""

    def test_nested_messages_enums_and_repeated_fields(self) -> None:
        stream = Stream("schemas", FileDescriptorProto)
        assert stream.encode is not None
        event = {
            "name": "a.proto",
            "dependency": ["b.proto", "c.proto"],
            "messageType": [{"name": "M", "field": [{"name": "f", "type": "TYPE_STRING"}]}],
        }
        decoded = FileDescriptorProto.FromString(stream.encode(event))
        assert decoded.name == "a.proto"
        assert list(decoded.dependency) == ["b.proto", "c.proto"]
        assert decoded.message_type[0].field[0].type == FieldDescriptorProto.TYPE_STRING

    @pytest.mark.parametrize(
        ("event", "message"),
        [
            ({"fan": 5}, "not a FanbaseEvent: Failed to parse fan field: expected string"),
            ({"fann": "x"}, 'not a FanbaseEvent: Message type "fanbase.FanbaseEvent" has no field'),
            ({"fan": ["a"]}, "not a FanbaseEvent: Failed to parse fan field"),
        ],
    )
    def test_a_wrong_field_is_one_line_naming_it(self, event: Any, message: str) -> None:
        stream = Stream("fanbase", FanbaseEvent)
        assert stream.encode is not None
        with pytest.raises(SerializationError) as raised:
            stream.encode(event)
        assert str(raised.value).startswith(message)
        assert "\n" not in str(raised.value)
