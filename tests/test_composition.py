"""Composition: chains without a source, several sources feeding one pipeline's queues."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import (
    Chain,
    Cron,
    Event,
    Job,
    JobContext,
    Pipeline,
    PipelineError,
    Queue,
    Route,
    Runner,
    Stream,
)
from flowline._compile import compile_plan
from flowline.runtime.emit import resolve
from flowline.runtime.status import StatusReader

from .conftest import eventually, flowline_cli


async def cli(servers: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``flowline ARGS`` against the test servers, off the event loop."""
    env = {"FLOWLINE_NATS_URL": servers.nats_url, "FLOWLINE_REDIS_URL": servers.redis_url}
    return await asyncio.to_thread(flowline_cli, *args, env=env)


def to_email(event: Any) -> Job:
    """A signup's bytes name who to email; a cron tick is the digest."""
    return Job("send-email", {"to": event.decode() if isinstance(event, bytes) else "digest"})


def to_sms(event: Any) -> Job:
    return Job("send-sms", {"to": event.decode() if isinstance(event, bytes) else "?"})


def send_email(job: JobContext) -> str:
    return f"emailed {job.data['to']}"


def send_sms(job: JobContext) -> str:
    return f"texted {job.data['to']}"


def email_chain() -> Chain:
    """`Route >> Queue` with its handler: the part after the source."""
    chain = Route(to_email) >> Queue("email")
    chain.dequeue("send-email", send_email)
    return chain


def message(info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(info.value)


class TestChains:
    def test_route_and_queue_without_a_source_are_a_chain(self) -> None:
        """`Route >> Queue` is a Chain: a value, with handlers, but no pipeline yet."""
        chain = email_chain()
        assert isinstance(chain, Chain)
        assert not isinstance(chain, Pipeline)
        assert [s.kind for s in chain.stages] == ["route", "queue"]
        assert chain.topics["send-email"].handler is send_email
        assert repr(chain) == "<Chain Route(to_email) >> Queue('email') | send-email->send_email>"

    def test_a_chain_attached_to_a_source_brings_its_handlers(self) -> None:
        """`Stream >> chain` is a pipeline with the chain's route, queue and handlers."""
        chain = email_chain()
        pipeline = Stream("signups", bytes) >> chain
        assert isinstance(pipeline, Pipeline)
        assert pipeline.route_for(pipeline.source).fn is to_email  # type: ignore[union-attr]
        assert pipeline.queues == chain.queues
        assert pipeline.topics == chain.topics

    def test_one_chain_attached_to_two_joined_sources(self) -> None:
        """`(A | B) >> chain`: one pipeline, two branches taking the chain's one Route."""
        chain = email_chain()
        signups, orders = Stream("signups", bytes), Stream("orders", bytes)
        pipeline = (signups | orders) >> chain
        assert pipeline.sources == (signups, orders)
        assert pipeline.route_for(signups) is pipeline.route_for(orders)
        assert pipeline.routes == (chain.stages[0],)
        assert pipeline.name == "signups-email"
        assert repr(pipeline) == (
            "<Pipeline 'signups-email': (Stream('signups', bytes) >> Route(to_email) | "
            "Stream('orders', bytes) >> Route(to_email)) >> Queue('email') | "
            "send-email->send_email>"
        )

    def test_each_joined_source_keeps_its_own_route(self) -> None:
        """`(A >> Route(a) | B >> Route(b)) >> Queue`: a route per source, queues shared."""
        stream, cron = Stream("s", bytes), Cron(60, topic="tick")
        a, b, q = Route(to_sms), Route(to_email), Queue("q")
        pipeline = (stream >> a | cron >> b) >> q
        assert (pipeline.route_for(stream), pipeline.route_for(cron)) == (a, b)
        assert pipeline.stages == (stream, a, cron, b, q)
        assert pipeline.branch("cron:tick").source is cron
        assert pipeline.branch("s").route is a

    def test_a_route_after_joined_sources_goes_to_those_without_one(self) -> None:
        """A Route after `(A >> Route(a) | B)` is B's; A keeps its own."""
        s1, s2 = Stream("s1", bytes), Stream("s2", bytes)
        a, b = Route(to_sms), Route(to_email)
        pipeline = (s1 >> a | s2) >> b >> Queue("q")
        assert (pipeline.route_for(s1), pipeline.route_for(s2)) == (a, b)

    def test_chains_compose_into_longer_chains(self) -> None:
        """A chain of queues, then a route in front of it: handlers of both carried along."""
        sms = Queue("sms", topics={"send-sms"})
        sms_chain = Queue("email") >> sms
        sms_chain.dequeue("send-sms", send_sms)
        full = Route(to_sms) >> sms_chain
        full.dequeue("send-email", send_email)
        pipeline = Stream("s", bytes) >> full
        assert sorted(pipeline.topics) == ["send-email", "send-sms"]
        assert pipeline.topics["send-sms"].queue is sms

    def test_pipeline_of_several_sources_needs_them_named_for_single_source_helpers(
        self,
    ) -> None:
        """`source` and `route` are for one source; with two, the error says where to look."""
        pipeline = (
            Stream("a", bytes) >> Route(to_sms) | Cron(5, topic="t") >> Route(to_email)
        ) >> (Queue("q"))
        with pytest.raises(PipelineError) as info:
            _ = pipeline.source
        assert message(info) == (
            "pipeline 'a-q' has 2 sources (Stream('a', bytes), Cron('every 5s', topic='t')); "
            "see pipeline.branches"
        )
        with pytest.raises(PipelineError) as info:
            _ = pipeline.route
        assert message(info) == "pipeline 'a-q' has a Route per source; see pipeline.branches"
        with pytest.raises(PipelineError) as info:
            pipeline.branch()
        assert message(info) == "pipeline 'a-q' has several sources; say which: 'a', 'cron:t'"
        with pytest.raises(PipelineError) as info:
            pipeline.branch("b")
        assert message(info) == "'b' is not a source of pipeline 'a-q'; its sources: 'a', 'cron:t'"

    def test_the_stream_to_publish_to(self) -> None:
        """One Stream is the one; with two, the subject picks; a wrong one lists them."""
        one = (Stream("a", bytes) | Cron(5, topic="t")) >> Route(to_sms) >> Queue("q")
        assert one.stream().subject == "a"
        two = (Stream("a", bytes) | Stream("b", bytes)) >> Route(to_sms) >> Queue("q")
        assert two.stream("b").subject == "b"
        with pytest.raises(PipelineError) as info:
            two.stream()
        assert message(info) == "pipeline 'a-q' reads several streams ('a', 'b'); say which subject"
        with pytest.raises(PipelineError) as info:
            two.stream("c")
        assert (
            message(info) == "pipeline 'a-q' has no Stream on subject 'c'; its subjects: 'a', 'b'"
        )
        cron = Cron(5, topic="t") >> Route(to_sms) >> Queue("q")
        with pytest.raises(PipelineError) as info:
            cron.stream()
        assert message(info) == "pipeline 't-q' has no Stream to publish to"

    def test_diagram_draws_every_source_to_its_route_and_every_route_to_every_queue(
        self,
    ) -> None:
        """The Mermaid edges: s0->r0, s1->r1, then each route to both queues."""
        p = (
            (Stream("a", bytes) >> Route(to_sms) | Cron(5, topic="t") >> Route(to_email))
            >> Queue("x", topics={"send-sms"})
            >> Queue("y")
        )
        edges = [line.strip() for line in p.to_mermaid().splitlines() if "-->" in line]
        assert edges == ["s0 --> s1", "s2 --> s3", "s1 --> s4", "s1 --> s5", "s3 --> s4",
                         "s3 --> s5"]  # fmt: skip

    def test_compile_plan_runs_every_source(self) -> None:
        """The plan has each Stream and each Cron of the pipeline, paired with it."""
        stream, cron = Stream("a", bytes), Cron(5, topic="t")
        p = (stream | cron) >> email_chain()
        plan = compile_plan(p)
        assert (plan.streams, plan.crons) == (((p, stream),), ((p, cron),))


class TestCompositionChecks:
    def test_sources_joined_after_their_queues_are_refused(self) -> None:
        """`|` joins sources before queues; the message shows the form that works."""
        with_queue = Stream("a", bytes) >> Route(to_sms) >> Queue("q")
        with pytest.raises(PipelineError) as info:
            _ = with_queue | Stream("b", bytes)
        assert message(info) == (
            "join sources before their queues, e.g. "
            "(Stream('a', A) >> Route(ra) | Cron(...) >> Route(rc)) >> Queue('q')"
        )

    def test_a_route_where_every_source_has_one_names_the_last(self) -> None:
        """A third Route after two routed sources: which branch already has one."""
        with pytest.raises(PipelineError) as info:
            _ = (Stream("a", bytes) >> Route(to_sms) | Stream("b", bytes) >> Route(to_email)) >> (
                Route(send_sms)
            )
        assert message(info) == (
            "Route(send_sms) follows Stream('b', bytes) >> Route(to_email): a source has one "
            "Route; combine the routers into one"
        )

    def test_a_joined_source_without_a_route_before_queues_is_named(self) -> None:
        """Queues after `(A >> Route | B)`: B makes no jobs, so the Queue names it."""
        with pytest.raises(PipelineError) as info:
            _ = (Stream("a", bytes) >> Route(to_sms) | Stream("b", bytes)) >> Queue("q")
        assert message(info) == (
            "Queue('q') has no Route before it: jobs come from a router, "
            "e.g. Stream('b', bytes) >> Route(router) >> Queue('q')"
        )

    def test_two_sources_on_one_subject_are_refused(self) -> None:
        """Their jobs would get the same ids, so one would be taken for the other's."""
        with pytest.raises(PipelineError) as info:
            _ = Stream("a", bytes) | Stream("a", str)
        assert message(info) == (
            "Stream('a', str) and Stream('a', bytes) share the subject 'a' in one pipeline: "
            "their jobs would get the same ids; join each source once"
        )

    def test_two_crons_on_one_topic_are_refused(self) -> None:
        """One cron topic is one tick mark and one job id space."""
        with pytest.raises(PipelineError) as info:
            _ = Cron(5, topic="t") | Cron("0 9 * * *", topic="t")
        assert message(info).startswith(
            "Cron('0 9 * * *', topic='t') and Cron('every 5s', topic='t') share the cron topic 't'"
        )

    def test_a_topic_two_chains_dequeue_names_both_handlers(self) -> None:
        """Two chains each with a handler for topic 'x' cannot make one pipeline."""
        first = Chain([Queue("a", topics={"x"})])
        first.dequeue("x", send_email)
        second = Chain([Queue("b")])
        second.dequeue("x", send_sms)
        with pytest.raises(PipelineError) as info:
            _ = Stream("s", bytes) >> Route(to_email) >> first >> second
        assert message(info) == (
            "topic 'x' is dequeued by send_email on Queue('a') and by send_sms on Queue('b'); "
            "a topic has exactly one handler"
        )

    def test_a_handler_on_a_queue_another_queue_owns_here_is_refused(self) -> None:
        """A chain's catch-all queue handles 'x'; a Queue in front listing 'x' would take it."""
        chain = Chain([Queue("catch-all")])
        chain.dequeue("x", send_email)
        with pytest.raises(PipelineError) as info:
            _ = Stream("s", bytes) >> Route(to_sms) >> Queue("front", topics={"x"}) >> chain
        assert message(info) == (
            "topic 'x' is dequeued on Queue('catch-all') by send_email, but Queue('front') "
            "owns it here; list it in Queue('catch-all', topics=...)"
        )

    def test_handlers_added_to_a_chain_after_it_was_used_are_refused(self) -> None:
        """A pipeline built from a chain has its handlers as they were: later ones are refused."""
        chain = Route(to_email) >> Queue("q")
        Stream("s", bytes) >> chain
        with pytest.raises(PipelineError) as info:
            chain.dequeue("late", send_email)
        assert message(info) == (
            "dequeue('late'): chain Route(to_email) >> Queue('q') is already part of a pipeline "
            "or another chain, which would not get the handler; register handlers first"
        )

    def test_handlers_added_to_a_pipeline_after_it_was_extended_are_refused(self) -> None:
        """The same for a pipeline: the longer one was built without the late handler."""
        head = Stream("s", bytes) >> Route(to_email) >> Queue("q")
        _ = head >> Queue("more")
        with pytest.raises(PipelineError) as info:
            head.dequeue("send-email", send_email)
        assert message(info) == (
            "dequeue('send-email'): pipeline 's-q' is already part of a pipeline or another "
            "chain, which would not get the handler; register handlers first"
        )

    def test_a_source_after_a_chain_is_refused(self) -> None:
        """`chain >> Stream`: a source starts a pipeline; the message shows it."""
        with pytest.raises(PipelineError) as info:
            _ = email_chain() >> Stream("s", bytes)
        assert message(info) == (
            "Stream('s', bytes) comes after Route(to_email) >> Queue('email'): a source starts "
            "a pipeline, e.g. Stream('s', bytes) >> Route(to_email) >> Queue('email')"
        )

    def test_a_topic_a_chain_has_no_queue_for(self) -> None:
        """dequeue on a chain whose queues all list topics names the chain and its queues."""
        chain = Route(to_email) >> Queue("a", topics={"x"})
        with pytest.raises(PipelineError) as info:
            chain.dequeue("y", send_email)
        assert message(info) == (
            "topic 'y' belongs to no queue of chain Route(to_email) >> Queue('a') (a): "
            "list it in one Queue(topics=...) or add a Queue without topics"
        )

    def test_a_pipeline_of_two_sources_still_needs_a_handler_per_queue(self) -> None:
        """The compile checks hold for joined sources: a queue with no handler is named."""
        p = (Stream("a", bytes) | Cron(5, topic="t")) >> Route(to_email) >> Queue("bare")
        with pytest.raises(PipelineError) as info:
            compile_plan(p)
        assert message(info).startswith("Queue('bare') of pipeline 'a-bare' has no handler")


class TestRunning:
    async def test_a_stream_and_a_cron_feed_one_queue_and_its_handler(self, settings) -> None:
        """One chain, two sources: a signup and a cron tick both become jobs on the one
        queue, run by its one handler, each with its source's job id, on the one bus."""
        chain = Route(to_email) >> Queue("comp-email")
        chain.dequeue("send-email", send_email)
        pipeline = (Stream("comp-signups", bytes) | Cron(0.5, topic="comp-digest")) >> chain
        completed: list[Event] = []
        pipeline.on("job:complete", completed.append)

        def both() -> bool:
            ids = [e.id for e in completed]
            return "comp-signups:1:0" in ids and any(i.startswith("cron:comp-digest:") for i in ids)

        async with Runner(pipeline, settings):
            await pipeline.publish(b"ada")
            await eventually(both)
        results = {e.id.split(":")[0]: e.result for e in completed}
        assert results == {"comp-signups": "emailed ada", "cron": "emailed digest"}
        assert {e.pipeline for e in completed} == {"comp-signups-comp-email"}
        tick = next(e.id for e in completed if e.id.startswith("cron:"))
        assert tick.endswith(":0")
        assert int(tick.split(":")[2]) % 500 == 0  # tick ms, index 0

    async def test_two_streams_each_routed_by_its_own_route(self, settings) -> None:
        """Publishing names the subject; each stream's events take their own Route."""
        a, b = Stream("comp-a", bytes), Stream("comp-b", bytes)
        pipeline = (a >> Route(to_email) | b >> Route(to_sms)) >> Queue("comp-q")
        pipeline.dequeue("send-email", send_email)
        pipeline.dequeue("send-sms", send_sms)
        completed: list[Event] = []
        pipeline.on("job:complete", completed.append)
        async with Runner(pipeline, settings):
            with pytest.raises(PipelineError, match="reads several streams"):
                await pipeline.publish(b"who?")
            assert await pipeline.publish(b"ada", subject="comp-a") == 1
            assert await pipeline.publish(b"bob", subject="comp-b") == 1
            await eventually(lambda: len(completed) == 2)
            async with StatusReader((pipeline,), settings) as reader:
                doc = (await reader.read())["pipelines"][0]
        assert {e.id: e.result for e in completed} == {
            "comp-a:1:0": "emailed ada",
            "comp-b:1:0": "texted bob",
        }
        streams = [(s["subject"], s["messages"], s["durable"]) for s in doc["streams"]]
        assert streams == [("comp-a", 1, "comp-a-comp-q"), ("comp-b", 1, "comp-a-comp-q")]
        assert doc["stream"] == doc["streams"][0]

    def test_preview_takes_the_source_by_name(self) -> None:
        """`preview(event, source=...)` routes as that source would, with its ids."""
        pipeline = (
            Stream("pa", bytes) >> Route(to_email) | Cron(5, topic="pt") >> (Route(to_sms))
        ) >> Queue("pq")
        pipeline.dequeue("send-email", send_email)
        pipeline.dequeue("send-sms", send_sms)
        [signup] = pipeline.preview(b"ada", source="pa", sequence=7)
        assert (signup.id, signup.topic, signup.data) == ("pa:7:0", "send-email", {"to": "ada"})
        [tick] = pipeline.preview(source="cron:pt")
        assert tick.id.startswith("cron:pt:")
        assert tick.topic == "send-sms"
        assert [j.id for j in pipeline.preview(b"ada")] == ["pa:1:0"]  # the one Stream's
        two = (Stream("s1", bytes) | Stream("s2", bytes)) >> Route(to_email) >> Queue("q2")
        two.dequeue("send-email", send_email)
        with pytest.raises(PipelineError) as info:
            two.preview(b"ada")
        assert message(info) == "pipeline 's1-q2' has several sources; say which: 's1', 's2'"


class TestCommands:
    async def test_publish_picks_the_stream_by_subject(self, servers, js) -> None:
        """With two streams, `flowline publish` needs --subject; a missing or unknown one is a
        one-line error and publishes nothing."""
        target = "tests.apps.joined:pipeline"
        event = '{"fan": "ada"}'
        missing = await cli(servers, "publish", target, "--json", event)
        assert (missing.returncode, missing.stderr.strip().splitlines()[-1]) == (
            2,
            "Error: pipeline 'joined-signups-joined-email' reads several streams "
            "('joined-signups', 'joined-orders'); say which subject",
        )
        wrong = await cli(servers, "publish", target, "--json", event, "--subject", "nope")
        assert wrong.returncode == 2
        assert "has no Stream on subject 'nope'" in wrong.stderr
        assert "Traceback" not in missing.stderr + wrong.stderr
        assert [s.config.name for s in await js.streams_info()] == []  # nothing was sent
        ok = await cli(servers, "publish", target, "--json", event, "--subject", "joined-orders")
        assert ok.stdout.strip() == "published as sequence 1", ok.stderr
        assert (await js.stream_info("joined-orders")).state.messages == 1

    async def test_a_worker_runs_every_source_into_the_shared_queue(
        self, worker, servers, redis, js
    ) -> None:
        """A real `flowline worker`: both streams' messages become jobs on the one queue."""
        proc = worker("tests.apps.joined:pipeline")
        await proc.ready()
        await js.publish("joined-signups", FanbaseEvent(fan="ada").SerializeToString())
        await js.publish("joined-orders", FanbaseEvent(fan="bob").SerializeToString())
        key = "flowline:{joined-email}:job:"

        async def done() -> dict[str, bytes] | None:
            results = {
                job_id: await redis.hget(key + job_id, "result")
                for job_id in ("joined-signups:1:0", "joined-orders:1:0")
            }
            return results if all(results.values()) else None

        results = await eventually(done)
        assert results == {
            "joined-signups:1:0": b'"emailed ada"',
            "joined-orders:1:0": b'"emailed bob"',
        }
        status = await cli(servers, "status", "tests.apps.joined:pipeline", "--json")
        doc = json.loads(status.stdout)["pipelines"][0]
        assert [s["subject"] for s in doc["streams"]] == ["joined-signups", "joined-orders"]
        assert [c["topic"] for c in doc["crons"]] == ["joined-digest"]
        # Each job knows the stream message it came from, subject included.
        shown = await cli(
            servers, "jobs", "tests.apps.joined:pipeline", "joined-orders:1:0", "--json"
        )
        message = json.loads(shown.stdout)["message"]
        assert message == {"stream": "joined-orders", "sequence": 1, "subject": "joined-orders"}


class TestEmit:
    def test_emit_to_a_pipeline_of_two_streams_names_the_subject(self) -> None:
        """`job.emit(pipeline, event, subject=...)` encodes with that Stream; without it, the
        error says to choose; subject= with a subject target is refused."""
        two = (Stream("e1", FanbaseEvent) | Stream("e2", bytes)) >> Route(to_email) >> Queue("eq")
        event = FanbaseEvent(fan="ada")
        assert resolve(two, event, "e1") == ("e1", event.SerializeToString())
        assert resolve(two, b"raw", "e2") == ("e2", b"raw")
        with pytest.raises(PipelineError) as info:
            resolve(two, event)
        assert (
            message(info)
            == "pipeline 'e1-eq' reads several streams ('e1', 'e2'); say which subject"
        )
        with pytest.raises(PipelineError) as info:
            resolve("e1", event, "e2")
        assert message(info) == "emit to subject 'e1': subject= is for a pipeline target"
