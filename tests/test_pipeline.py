"""Pipelines: graph validation, the dequeue registry, names, compilation and display."""

from __future__ import annotations

from typing import Any

import pytest

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import (
    ConfigurationError,
    Cron,
    Job,
    JobContext,
    Pipeline,
    PipelineError,
    Pipelines,
    Queue,
    Route,
    Stream,
)
from flowline._compile import as_pipelines, compile_plan


def router(event: Any) -> list[Job]:
    return []


def other_router(event: Any) -> list[Job]:
    return []


async def welcome(job: JobContext) -> None:
    return None


async def engage(job: JobContext) -> None:
    return None


def fanbase() -> Pipeline:
    """A fanbase-shaped pipeline with no handlers yet."""
    return Stream("fanbase", FanbaseEvent) >> Route(router) >> Queue("notifications")


def message(info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(info.value)


class TestGraphValidation:
    def test_queue_before_stream(self) -> None:
        """A source after a Queue names both and shows the right order."""
        with pytest.raises(PipelineError) as info:
            Queue("q") >> Stream("s", bytes)
        assert message(info) == (
            "Stream('s', bytes) comes after Queue('q'): a source starts a pipeline, "
            "e.g. Stream('s', bytes) >> Queue('q')"
        )

    def test_pipeline_without_source(self) -> None:
        """`Pipeline(...)` of stages with no source names the first and shows a source."""
        with pytest.raises(PipelineError) as info:
            Pipeline([Route(router), Queue("q")])
        assert message(info) == (
            "Route(router) has no source: a pipeline starts with a Stream or a Cron, "
            "e.g. Stream('subject', Event) >> Route(router)"
        )

    def test_empty_pipeline(self) -> None:
        """A pipeline with no stages at all is refused."""
        with pytest.raises(PipelineError) as info:
            Pipeline([])
        assert message(info) == "a pipeline needs at least a Stream (or Cron)"

    def test_two_routes(self) -> None:
        """A second Route is named and the fix suggested."""
        with pytest.raises(PipelineError) as info:
            Stream("s", bytes) >> Route(router) >> Route(other_router)
        assert message(info) == (
            "Route(other_router) follows Stream('s', bytes) >> Route(router): "
            "a source has one Route; combine the routers into one"
        )

    def test_route_after_queue(self) -> None:
        """A Route after a Queue is refused and named."""
        with pytest.raises(PipelineError) as info:
            Stream("s", bytes) >> Route(router) >> Queue("q") >> Route(other_router)
        assert message(info).startswith("Route(other_router)")

    def test_queue_without_route(self) -> None:
        """A Queue right after the source names both and shows where the Route goes."""
        with pytest.raises(PipelineError) as info:
            Stream("s", bytes) >> Queue("q")
        assert message(info) == (
            "Queue('q') has no Route before it: jobs come from a router, "
            "e.g. Stream('s', bytes) >> Route(router) >> Queue('q')"
        )

    def test_two_sources_chained(self) -> None:
        """A source after a source is named, with the two ways to have both."""
        with pytest.raises(PipelineError) as info:
            Stream("s", bytes) >> Cron(60, topic="tick")
        assert message(info) == (
            "Cron('every 60s', topic='tick') comes after Stream('s', bytes): a pipeline's "
            "sources are joined with |, e.g. (Stream('s', bytes) | Cron('every 60s', "
            "topic='tick')) >> Queue(...); or run several pipelines together with Pipelines(...)"
        )

    def test_same_queue_twice(self) -> None:
        """Two queues with one name are refused."""
        with pytest.raises(PipelineError) as info:
            Stream("s", bytes) >> Route(router) >> Queue("q") >> Queue("q")
        assert message(info) == "Queue('q') appears twice; give each Queue its own name"

    def test_topic_claimed_by_two_queues(self) -> None:
        """A topic listed by two queues names the topic and both queues."""
        with pytest.raises(PipelineError) as info:
            (
                Stream("s", bytes)
                >> Route(router)
                >> Queue("fast", topics=["email"])
                >> Queue("slow", topics=["sms", "email"])
            )
        assert message(info) == (
            "topic 'email' is claimed by Queue('fast') and Queue('slow'); "
            "a topic belongs to exactly one queue"
        )

    def test_stream_and_route_alone_are_a_valid_head(self) -> None:
        """`Stream >> Route` is valid on its own, so chains can be built left to right."""
        assert [s.kind for s in (Stream("s", bytes) >> Route(router)).stages] == [
            "stream",
            "route",
        ]


class TestDequeue:
    def test_registers_handler_on_the_owning_queue(self) -> None:
        """`dequeue` records the handler with the queue's policy."""
        pipeline = fanbase()
        assert pipeline.dequeue("notify", welcome) is welcome
        topic = pipeline.topics["notify"]
        assert (topic.handler, topic.queue.name, topic.retries) == (welcome, "notifications", 3)

    def test_decorator_form(self) -> None:
        """`@pipeline.dequeue(topic, ...)` registers and returns the function."""
        pipeline = fanbase()

        @pipeline.dequeue("notify", retries=7, timeout=2.5)
        async def notify(job: JobContext) -> None:
            return None

        topic = pipeline.topics["notify"]
        assert (topic.handler, topic.retries, topic.timeout) == (notify, 7, 2.5)

    def test_topic_dequeued_twice_names_the_existing_handler(self) -> None:
        """A second handler for a topic is refused, naming the one already registered."""
        pipeline = fanbase()
        pipeline.dequeue("notify", welcome)
        with pytest.raises(PipelineError) as info:
            pipeline.dequeue("notify", engage)
        assert message(info) == (
            "topic 'notify' is already dequeued by welcome in pipeline 'fanbase-notifications'; "
            "a topic has exactly one handler"
        )
        assert pipeline.topics["notify"].handler is welcome

    def test_non_callable_handler(self) -> None:
        """A handler that cannot be called is refused with its type."""
        with pytest.raises(PipelineError) as info:
            fanbase().dequeue("notify", "welcome")  # type: ignore[call-overload]
        assert message(info) == "dequeue('notify'): handler must be callable, got str"

    @pytest.mark.parametrize("topic", ["", None, 42])
    def test_topic_must_be_a_name(self, topic: Any) -> None:
        """An empty or non-string topic is refused."""
        with pytest.raises(PipelineError) as info:
            fanbase().dequeue(topic, welcome)
        assert message(info) == f"dequeue() needs a topic name, got {topic!r}"

    def test_topic_no_queue_lists(self) -> None:
        """With only topic-listing queues, a topic none of them lists is refused."""
        pipeline = (
            Stream("s", bytes)
            >> Route(router)
            >> Queue("email", topics=["welcome"])
            >> Queue("sms", topics=["alert"])
        )
        with pytest.raises(PipelineError) as info:
            pipeline.dequeue("engage", engage)
        assert message(info) == (
            "topic 'engage' belongs to no queue of pipeline 's-email' (email, sms): "
            "list it in one Queue(topics=...) or add a Queue without topics"
        )

    def test_pipeline_without_queue(self) -> None:
        """Dequeueing on a pipeline with no Queue says to add one."""
        with pytest.raises(PipelineError) as info:
            (Stream("s", bytes) >> Route(router)).dequeue("notify", welcome)
        assert message(info) == "pipeline 's' has no Queue: add `>> Queue(name)`"

    def test_topics_go_to_the_listing_queue_else_the_catch_all(self) -> None:
        """A topic goes to the queue listing it; others go to the queue listing none."""
        pipeline = (
            Stream("s", bytes)
            >> Route(router)
            >> Queue("email", topics=["welcome"], retries=0)
            >> Queue("rest")
        )
        pipeline.dequeue("welcome", welcome)
        pipeline.dequeue("engage", engage)
        assert pipeline.queue_for("welcome").name == "email"
        assert pipeline.topics["welcome"].retries == 0
        assert pipeline.topics["engage"].queue.name == "rest"


class TestNames:
    def test_default_name_is_source_and_first_queue(self) -> None:
        """A pipeline is named ``<subject>-<first queue>``."""
        assert fanbase().name == "fanbase-notifications"

    def test_default_name_is_sanitised(self) -> None:
        """Characters a durable consumer name cannot hold become ``_``."""
        assert (Stream("app.events", bytes) >> Route(router) >> Queue("q")).name == ("app_events-q")

    def test_default_name_without_queue(self) -> None:
        """Without a Queue the name is the source's."""
        assert (Stream("app.events", bytes) >> Route(router)).name == "app_events"

    def test_cron_pipeline_named_by_topic(self) -> None:
        """A Cron pipeline is named ``<topic>-<first queue>``."""
        assert (Cron(60, topic="nightly") >> Route(router) >> Queue("reports")).name == (
            "nightly-reports"
        )

    def test_stream_durable_names_the_pipeline(self) -> None:
        """A Stream's `durable` is the pipeline's default name."""
        stream = Stream("fanbase", FanbaseEvent, durable="fanbase-v2")
        assert (stream >> Route(router) >> Queue("q")).name == "fanbase-v2"

    def test_named_returns_a_renamed_copy(self) -> None:
        """`.named()` returns a copy with the new name and the same stages."""
        pipeline = fanbase()
        renamed = pipeline.named("fans")
        assert (renamed.name, renamed.stages) == ("fans", pipeline.stages)
        assert pipeline.name == "fanbase-notifications"

    def test_named_after_handlers_is_refused(self) -> None:
        """Renaming after `dequeue` would lose the handlers, so it is refused."""
        pipeline = fanbase()
        pipeline.dequeue("notify", welcome)
        with pytest.raises(PipelineError) as info:
            pipeline.named("fans")
        assert message(info) == "name a pipeline before registering handlers on it"

    @pytest.mark.parametrize("name", ["has space", "a.b", "", "wild*", "gt>"])
    def test_named_refuses_names_a_durable_consumer_cannot_have(self, name: str) -> None:
        """A pipeline name becomes a JetStream durable, so it follows the same rule as defaults."""
        with pytest.raises(PipelineError) as info:
            fanbase().named(name)
        assert message(info) == (
            f"Pipeline name {name!r} may hold only letters, digits, '-' and '_'"
        )


class TestPipelines:
    def test_duplicate_names_are_refused(self) -> None:
        """Two pipelines with one name are refused, with the fix."""
        with pytest.raises(PipelineError) as info:
            Pipelines(fanbase(), Stream("s", bytes) >> Route(router) >> Queue("q"), fanbase())
        assert message(info) == (
            "two pipelines are named 'fanbase-notifications'; "
            "give one another name with .named(...)"
        )

    def test_iterates_like_a_tuple(self) -> None:
        """`Pipelines` iterates in order and has a length."""
        a, b = fanbase(), Cron(60, topic="tick") >> Route(router) >> Queue("reports")
        group = Pipelines(a, b)
        assert (list(group), len(group)) == ([a, b], 2)

    def test_as_pipelines_accepts_pipeline_group_or_list(self) -> None:
        """A Pipeline, a Pipelines or a list of pipelines are all accepted."""
        a, b = fanbase(), Cron(60, topic="tick") >> Route(router) >> Queue("reports")
        assert as_pipelines(a) == (a,)
        assert as_pipelines(Pipelines(a, b)) == (a, b)
        assert as_pipelines([a, b]) == (a, b)

    def test_as_pipelines_checks_names_of_a_list(self) -> None:
        """A plain list of pipelines gets the duplicate-name check too."""
        with pytest.raises(PipelineError, match="two pipelines are named"):
            as_pipelines([fanbase(), fanbase()])

    @pytest.mark.parametrize("target", [42, "pipeline", [], [1, 2]])
    def test_as_pipelines_refuses_other_things(self, target: Any) -> None:
        """Anything else is a ConfigurationError naming its type."""
        with pytest.raises(ConfigurationError) as info:
            as_pipelines(target)
        assert message(info) == (
            f"expected a Pipeline or a collection of pipelines, got {type(target).__name__}"
        )


def two_pipelines() -> tuple[Pipeline, Pipeline]:
    """A stream pipeline with two queues and a cron pipeline, every queue with a handler."""
    stream = (
        Stream("fanbase", FanbaseEvent)
        >> Route(router)
        >> Queue("email", topics=["welcome"])
        >> Queue("push")
    )
    stream.dequeue("welcome", welcome)
    stream.dequeue("engage", engage)
    cron = Cron(60, topic="nightly") >> Route(other_router) >> Queue("reports")
    cron.dequeue("report", welcome)
    return stream, cron


def parts(plan: Any) -> tuple[list[str], list[str], list[str]]:
    return (
        [s.subject for _, s in plan.streams],
        [c.topic for _, c in plan.crons],
        [q.name for _, q in plan.queues],
    )


class TestCompilePlan:
    def test_everything_by_default(self) -> None:
        """Without `only`, every stream, cron and queue runs."""
        stream, cron = two_pipelines()
        plan = compile_plan(Pipelines(stream, cron))
        assert plan.pipelines == (stream, cron)
        assert parts(plan) == (["fanbase"], ["nightly"], ["email", "push", "reports"])

    @pytest.mark.parametrize(
        ("only", "expected"),
        [
            (["stream"], (["fanbase"], [], [])),
            (["cron"], ([], ["nightly"], [])),
            (["queue"], ([], [], ["email", "push", "reports"])),
            (["queue:push"], ([], [], ["push"])),
            (["stream", "queue:reports"], (["fanbase"], [], ["reports"])),
        ],
    )
    def test_only_selects_parts(self, only: list[str], expected: tuple[list[str], ...]) -> None:
        """`only` picks streams, crons, every queue or one queue by name."""
        plan = compile_plan(Pipelines(*two_pipelines()), only=only)
        assert parts(plan) == expected

    def test_only_pairs_each_part_with_its_pipeline(self) -> None:
        """Each selected part comes with the pipeline it belongs to."""
        stream, cron = two_pipelines()
        plan = compile_plan([stream, cron], only=["queue:reports", "stream"])
        assert plan.queues == ((cron, cron.queues[0]),)
        assert plan.streams == ((stream, stream.source),)

    def test_only_unknown_lists_the_choices(self) -> None:
        """An `only` name that matches nothing is a ConfigurationError listing every choice."""
        with pytest.raises(ConfigurationError) as info:
            compile_plan(Pipelines(*two_pipelines()), only=["queue:emial"])
        assert message(info) == (
            "--only 'queue:emial' matches nothing; choose from "
            "cron, queue, queue:email, queue:push, queue:reports, stream"
        )

    def test_queue_shared_by_two_pipelines(self) -> None:
        """One queue name in two pipelines is refused, naming both pipelines."""
        a = fanbase()
        b = Stream("other", bytes) >> Route(router) >> Queue("notifications")
        with pytest.raises(PipelineError) as info:
            compile_plan([a, b])
        assert message(info) == (
            "Queue('notifications') is used by pipelines 'fanbase-notifications' and "
            "'other-notifications'; a queue belongs to one pipeline: feed it from both "
            "sources in one, (source_a >> Route(a) | source_b >> Route(b)) >> "
            "Queue('notifications')"
        )

    def test_queue_without_handler(self) -> None:
        """A queue nobody dequeues from is refused with how to fix it."""
        stream, _ = two_pipelines()
        bare = Cron(60, topic="nightly") >> Route(router) >> Queue("reports")
        with pytest.raises(PipelineError) as info:
            compile_plan([stream, bare])
        assert message(info) == (
            "Queue('reports') of pipeline 'nightly-reports' has no handler; "
            "register one with pipeline.dequeue('topic', handler)"
        )

    def test_queue_without_handler_is_fine_when_not_run_here(self) -> None:
        """A process that runs only the stream does not need the queue's handlers."""
        bare = fanbase()
        plan = compile_plan(bare, only=["stream"])
        assert parts(plan) == (["fanbase"], [], [])


class TestDisplay:
    def pipeline(self) -> Pipeline:
        stream, _ = two_pipelines()
        return stream

    def test_repr_shows_stages_and_handlers(self) -> None:
        """`repr` shows the chain and every topic -> handler."""
        assert repr(self.pipeline()) == (
            "<Pipeline 'fanbase-email': Stream('fanbase', FanbaseEvent) >> Route(router) >> "
            "Queue('email') >> Queue('push') | welcome->welcome, engage->engage>"
        )

    def test_repr_without_handlers(self) -> None:
        """Without handlers, `repr` is the chain alone."""
        assert repr(fanbase()) == (
            "<Pipeline 'fanbase-notifications': Stream('fanbase', FanbaseEvent) >> "
            "Route(router) >> Queue('notifications')>"
        )

    def test_mermaid_has_a_node_per_stage_and_topic(self) -> None:
        """The flowchart has every stage, the edges between them and every topic."""
        assert self.pipeline().to_mermaid().splitlines() == [
            "flowchart LR",
            "    s0[\"Stream('fanbase', FanbaseEvent)\"]",
            '    s1["Route(router)"]',
            "    s2[\"Queue('email')\"]",
            "    s3[\"Queue('push')\"]",
            "    s0 --> s1",
            "    s1 --> s2",
            "    s1 --> s3",
            '    t0(["welcome: welcome"])',
            "    s2 --> t0",
            '    t1(["engage: engage"])',
            "    s3 --> t1",
        ]

    def test_mermaid_escapes_quotes_and_angle_brackets(self) -> None:
        """Quotes and ``<>`` in names cannot break the diagram."""
        pipeline = Stream("s", bytes) >> Route(router, name='say "hi" <now>') >> Queue("q")
        text = pipeline.to_mermaid()
        assert '    s1["Route(say #quot;hi#quot; #lt;now#gt;)"]' in text.splitlines()
        assert '"hi"' not in text
        assert "<now>" not in text

    def test_repr_markdown_is_a_mermaid_fence(self) -> None:
        """Jupyter renders the pipeline as the mermaid diagram."""
        pipeline = self.pipeline()
        assert pipeline._repr_markdown_() == f"```mermaid\n{pipeline.to_mermaid()}\n```"

    def test_pipelines_repr_lists_each(self) -> None:
        """`repr(Pipelines(...))` shows each pipeline."""
        a, b = two_pipelines()
        assert repr(Pipelines(a, b)) == f"Pipelines({a!r}, {b!r})"
