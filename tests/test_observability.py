"""The HTTP endpoint, metrics, readiness, per-job logs and Redis pool sizing, on real servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import flowline
from flowline import Queue, Route, Settings, Stream
from flowline.backends.jetstream import ensure_stream
from flowline.errors import ConfigurationError
from flowline.observability.metrics import BUCKETS, Histogram, Metrics
from flowline.servers import LocalServers, free_port

from .conftest import ROOT, eventually, require
from .prometheus import PrometheusServer, prometheus_binary

APP = "tests.apps.observed_app:pipeline"
TOPICS = ("a", "b", "c", "d")


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    """GET `url`: (status, body), also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aget(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, url)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        v
        for (n, lbls), v in samples(text).items()
        if n == name and set(labels.items()) <= set(lbls)
    )


def names(text: str) -> set[str]:
    return {n for n, _ in samples(text)}


async def publish(js: Any, subject: str, events: list[dict[str, Any]]) -> None:
    await ensure_stream(js, subject)
    for event in events:
        await js.publish(subject, json.dumps(event).encode())


def tiny_pipeline(subject: str = "tiny") -> flowline.Pipeline:
    route = Route(lambda e: [{"topic": "t", "data": e}], name="one")
    pipeline = (Stream(subject, json.loads) >> route >> Queue("tiny", retries=0)).named(subject)

    @pipeline.dequeue("t")
    async def handle(job: flowline.JobContext) -> Any:
        if job.data.get("fail"):
            raise RuntimeError("no")
        return job.data

    return pipeline


class TestHistogram:
    def test_values_land_in_the_first_bucket_whose_bound_is_not_below_them(self):
        """Prometheus buckets are inclusive upper bounds; the last bucket is +Inf."""
        h = Histogram()
        for value in (0.0005, 0.0006, 1.0, 10_000.0):
            h.observe(value)
        cumulative = dict(h.cumulative())
        assert cumulative["0.0005"] == 1
        assert cumulative["0.001"] == 2
        assert cumulative["1.0"] == 3
        assert cumulative[str(BUCKETS[-1])] == 3
        assert cumulative["+Inf"] == 4
        assert h.sum == pytest.approx(10_001.0011)


class TestMetricsExposition:
    def test_a_fresh_registry_exposes_every_family_and_no_job_ids(self):
        """All documented families are exposed; labels are the documented bounded ones."""
        metrics = Metrics()
        stats = metrics.job("p", "q", "t")
        stats.started += 1
        stats.completed += 1
        stats.duration.observe(0.01)
        metrics.enqueued("p", "q", 3)
        metrics.error("p", "route")
        from prometheus_client import generate_latest

        text = generate_latest(metrics.registry).decode()
        for name in (
            "flowline_stream_messages_total",
            "flowline_jobs_enqueued_total",
            "flowline_jobs_started_total",
            "flowline_jobs_completed_total",
            "flowline_jobs_failed_total",
            "flowline_jobs_retried_total",
            "flowline_jobs_dead_lettered_total",
            "flowline_jobs_cancelled_total",
            "flowline_cron_ticks_total",
            "flowline_errors_total",
            "flowline_job_duration_seconds",
            "flowline_job_wait_seconds",
            "flowline_event_to_done_seconds",
            "flowline_worker_running_jobs",
        ):
            assert f"# TYPE {name} " in text, name
        assert total(text, "flowline_jobs_enqueued_total", queue="q") == 3
        assert total(text, "flowline_errors_total", stage="route") == 1
        assert total(text, "flowline_job_duration_seconds_count", topic="t") == 1
        labels = {k for (_, lbls) in samples(text) for k, _ in lbls}
        assert labels <= {"pipeline", "queue", "topic", "subject", "stage", "outcome", "le"}


class TestEndpoint:
    async def test_runner_serves_metrics_health_and_readiness(self, settings, js):
        """/healthz is 200, /readyz 200 naming each loop, /metrics counts what was done."""
        pipeline = tiny_pipeline()
        s = Settings(nats_url=settings.nats_url, redis_url=settings.redis_url, http_port=0)
        async with flowline.Runner(pipeline, s) as app:
            assert app.http is not None
            base = app.http.url
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
            assert await aget(f"{base}/healthz") == (200, '{"status":"ok"}')
            status, body = await aget(f"{base}/readyz")
            assert status == 200, body
            assert json.loads(body) == {
                "status": "ok",
                "nats": "ok",
                "redis": "ok",
                "loops": {"stream:tiny": "running", "queue:tiny": "running"},
                "settings": [],
            }
            await publish(js, "tiny", [{"n": i} for i in range(5)] + [{"fail": True}])

            async def counted() -> str | None:
                _, text = await aget(f"{base}/metrics")
                done = total(text, "flowline_jobs_completed_total")
                dead = total(text, "flowline_jobs_dead_lettered_total")
                return text if (done, dead) == (5, 1) else None

            text = await eventually(counted)
            assert total(text, "flowline_stream_messages_total", outcome="routed") == 6
            assert total(text, "flowline_jobs_enqueued_total", queue="tiny") == 6
            assert total(text, "flowline_jobs_started_total", topic="t") == 6
            assert total(text, "flowline_jobs_failed_total", topic="t") == 1
            assert total(text, "flowline_errors_total", stage="job") == 1
            assert total(text, "flowline_job_duration_seconds_count", topic="t") == 6
            assert total(text, "flowline_event_to_done_seconds_count", topic="t") == 5
            assert total(text, "flowline_job_wait_seconds_count", topic="t") == 6

            async def gauges() -> str | None:
                # Read from the servers at most once a second: poll until they caught up.
                _, text = await aget(f"{base}/metrics")
                queue = {
                    state: total(text, "flowline_queue_jobs", queue="tiny", state=state)
                    for state in ("ready", "running", "delayed", "dead")
                }
                stream = (
                    total(text, "flowline_stream_pending", subject="tiny"),
                    total(text, "flowline_stream_ack_pending", subject="tiny"),
                )
                settled = {"ready": 0, "running": 0, "delayed": 0, "dead": 1}
                return text if (queue, stream) == (settled, (0, 0)) else None

            text = await eventually(gauges, timeout=5)
            assert (
                "flowline_worker_running_jobs",
                (("pipeline", pipeline.name), ("queue", "tiny")),
            ) in samples(text)

    async def test_the_asgi_app_mounts_in_another_app(self, settings):
        """runner.asgi() is an ASGI app another one (here Starlette) can mount under a prefix."""
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Mount, Route

        from flowline.observability.http import HttpEndpoint

        pipeline = tiny_pipeline()
        async with flowline.Runner(pipeline, settings) as app:
            outer = Starlette(
                routes=[
                    Route("/", lambda request: PlainTextResponse("my app")),
                    Mount("/flowline", app.asgi()),
                ]
            )
            server = HttpEndpoint(outer, "127.0.0.1", 0)
            await server.start()
            try:
                mine = await aget(f"{server.url}/")
                health = await aget(f"{server.url}/flowline/healthz")
                ready = await aget(f"{server.url}/flowline/readyz")
                status, text = await aget(f"{server.url}/flowline/metrics")
            finally:
                await server.stop()
        assert mine == (200, "my app")
        assert health == (200, '{"status":"ok"}')
        assert ready[0] == 200
        assert status == 200
        assert "flowline_jobs_completed_total" in names(text)

    async def test_a_port_in_use_is_a_clear_error_before_connecting(self, settings):
        """Binding fails with a ConfigurationError naming the address; nothing is started."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            s = Settings(nats_url=settings.nats_url, redis_url=settings.redis_url, http_port=port)
            runner = flowline.Runner(tiny_pipeline(), s)
            with pytest.raises(
                ConfigurationError, match=rf"127\.0\.0\.1:{port}: the port is in use"
            ):
                await runner.start()
            assert runner.redis is None

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"http_port": 70000}, "http_port must be within 0..65535, got 70000"),
            ({"http_port": -1}, "http_port must be within 0..65535, got -1"),
            ({"http_host": ""}, "http_host must not be empty"),
            ({"redis_max_connections": 1}, "redis_max_connections must be >= 4"),
        ],
    )
    def test_bad_settings_are_rejected(self, kwargs, message):
        """Each bad option is refused with a message naming it."""
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            Settings(**kwargs)

    def test_a_bad_port_in_the_environment_is_named(self, monkeypatch):
        """FLOWLINE_HTTP_PORT that is not a number names the variable."""
        monkeypatch.setenv("FLOWLINE_HTTP_PORT", "metrics")
        with pytest.raises(ConfigurationError, match="FLOWLINE_HTTP_PORT must be a port number"):
            Settings.from_env()

    async def test_an_unknown_host_is_a_clear_error(self, settings):
        """An address that does not resolve is named in the error."""
        s = Settings(
            nats_url=settings.nats_url,
            redis_url=settings.redis_url,
            http_port=0,
            http_host="no-such-host.invalid",
        )
        with pytest.raises(ConfigurationError, match=r"no-such-host\.invalid:0: unknown host"):
            await flowline.Runner(tiny_pipeline(), s).start()


class TestReadiness:
    """Readiness follows the servers: 503 within ~5 s of one going away, 200 after."""

    async def test_readyz_follows_redis_and_nats_going_away_and_back(self, tmp_path):
        with LocalServers(directory=str(tmp_path)) as own:
            pipeline = tiny_pipeline("ready")
            s = Settings(nats_url=own.nats_url, redis_url=own.redis_url, http_port=0, grace=1)
            async with flowline.Runner(pipeline, s) as app:
                assert app.http is not None
                url = f"{app.http.url}/readyz"
                metrics_url = f"{app.http.url}/metrics"
                assert (await aget(url))[0] == 200
                assert "flowline_queue_jobs" in names((await aget(metrics_url))[1])

                own.stop_redis(kill=True)
                went = time.monotonic()
                status, body = await eventually(lambda: _status_is(url, 503), timeout=10)
                assert time.monotonic() - went < 5
                doc = json.loads(body)
                assert doc["status"] == "degraded"
                assert doc["redis"] != "ok"
                assert doc["nats"] == "ok"
                # /metrics still answers, without the Redis gauges rather than with stale ones.
                await asyncio.sleep(1.1)  # past the gauges' cache
                status, text = await aget(metrics_url)
                assert status == 200
                assert "flowline_queue_jobs" not in names(text)
                assert "flowline_jobs_completed_total" in names(text)

                own.start_redis()
                back = time.monotonic()
                await eventually(lambda: _status_is(url, 200), timeout=10)
                assert time.monotonic() - back < 5

                own.stop_nats(kill=True)
                went = time.monotonic()
                _, body = await eventually(lambda: _status_is(url, 503), timeout=10)
                assert time.monotonic() - went < 5
                assert json.loads(body)["nats"] != "ok"
                own.start_nats()
                back = time.monotonic()
                await eventually(lambda: _status_is(url, 200), timeout=10)
                assert time.monotonic() - back < 5

    async def test_readyz_names_a_crashed_loop(self, settings):
        """A loop that died makes readiness 503 and says which loop and why."""
        pipeline = tiny_pipeline()
        s = Settings(nats_url=settings.nats_url, redis_url=settings.redis_url, http_port=0)
        runner = flowline.Runner(pipeline, s)
        await runner.start()
        real = runner.loops["queue:tiny"]
        try:

            async def boom() -> None:
                raise RuntimeError("kaput")

            runner.loops["queue:tiny"] = crashed = asyncio.create_task(boom())
            await asyncio.wait([crashed])
            ready, body = await runner.probe.readiness()
            assert not ready
            assert body["status"] == "degraded"
            assert body["loops"]["queue:tiny"] == "crashed: RuntimeError: kaput"
            assert body["loops"]["stream:tiny"] == "running"
        finally:
            runner.loops["queue:tiny"] = real
            await runner.stop()

    async def test_a_process_without_streams_does_not_need_nats(self, settings):
        """A cron pipeline has no stream: NATS is "not used" and the process is ready."""
        pipeline = flowline.Cron(timedelta(hours=1), topic="tick") >> Route(list) >> Queue("cr")
        pipeline.dequeue("tick")(lambda job: None)
        async with flowline.Runner(pipeline, settings) as app:
            ready, body = await app.probe.readiness()
        assert ready, body
        assert body["nats"] == "not used"


async def _status_is(url: str, status: int) -> tuple[int, str] | None:
    got = await aget(url)
    return got if got[0] == status else None


class TestWorkerProcess:
    async def test_first_log_line_says_where_it_listens_and_jobs_are_logged(self, worker, js):
        """`--http-port` serves the endpoint; INFO logs one line per finished job."""
        port = free_port()
        proc = worker(APP, "--http-port", str(port), env={"FLOWLINE_TEST_STEP": "0"})
        await proc.ready()
        first = proc.lines()[0]
        assert first["event"] == "flowline serving /metrics /healthz /readyz"
        assert first["url"] == f"http://127.0.0.1:{port}"
        await publish(js, "observed", [{"n": 1}, {"n": 2, "fail": True}])

        def finished() -> list[dict[str, Any]]:
            done = [x for x in proc.lines() if x.get("event") == "job completed"]
            dead = [x for x in proc.lines() if x.get("event") == "job dead-lettered"]
            return [*done, *dead] if (len(done), len(dead)) == (4, 4) else []

        lines = await eventually(finished)
        done = [x for x in lines if x["event"] == "job completed"]
        assert {x["topic"] for x in done} == set(TOPICS)
        for line in done:
            assert line["level"] == "info"
            assert line["pipeline"] == "observed"
            assert line["queue"] == f"observed-{line['topic']}"
            assert line["outcome"] == "completed"
            assert line["attempt"] == 1
            assert line["job"].startswith("observed:")
            assert line["duration"] >= 0
        failed = [x for x in proc.lines() if x.get("event") == "job failed"]
        assert sorted((x["outcome"], x["attempt"]) for x in failed) == [
            *[("failed", 2)] * 4,
            *[("retry", 1)] * 4,
        ]
        dead = [x for x in lines if x["event"] == "job dead-lettered"]
        assert all(x["dead_letter"] and x["error"] == "asked to fail" for x in dead)
        status, text = await aget(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert total(text, "flowline_jobs_completed_total") == 4
        assert total(text, "flowline_jobs_retried_total") == 4

    async def test_log_level_warning_silences_job_lines(self, worker, js, redis):
        """--log-level WARNING: no per-job lines, the jobs still run."""
        proc = worker(APP, "--log-level", "WARNING", env={"FLOWLINE_TEST_STEP": "0"})
        proc_started = time.monotonic()
        await publish(js, "observed", [{"n": 1}])

        async def done() -> bool:
            keys = [f"flowline:{{observed-{t}}}:job:observed:1:{i}" for i, t in enumerate(TOPICS)]
            return all([await redis.hget(k, "state") == b"completed" for k in keys])

        await eventually(done)
        assert time.monotonic() - proc_started < 30
        assert not [x for x in proc.lines() if x.get("event") == "job completed"]

    @pytest.mark.parametrize(
        ("args", "env", "message"),
        [
            (["--http-port", "70000"], {}, "'--http-port': 70000 is not in the range 0<=x<=65535"),
            (["--http-port", "web"], {}, "'--http-port': 'web' is not a valid integer"),
            ([], {"FLOWLINE_HTTP_PORT": "99999"}, "99999 is not in the range 0<=x<=65535"),
            (["--http-port", "0", "--http-host", "10.255.255.254.1"], {}, "unknown host"),
            (["--log-level", "LOUD"], {}, "'--log-level': 'LOUD' is not one of"),
        ],
    )
    def test_bad_http_options_are_one_line_errors(self, servers, args, env, message):
        """Bad endpoint options end the worker at once with a one-line error, no traceback."""
        out = subprocess.run(
            [sys.executable, "-m", "flowline", "worker", APP, *args],
            cwd=ROOT,
            env={**os.environ, **servers.env(), "PYTHONPATH": str(ROOT), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0
        assert "Traceback" not in out.stderr
        assert message in out.stderr
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("Error")]
        assert len(errors) == 1, out.stderr

    def test_a_port_in_use_ends_the_worker_with_one_line(self, servers):
        """A port another process listens on is named; the worker exits 1 without a traceback."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            out = subprocess.run(
                [sys.executable, "-m", "flowline", "worker", APP, "--http-port", str(port)],
                cwd=ROOT,
                env={**os.environ, **servers.env(), "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert out.returncode == 1
        assert "Traceback" not in out.stderr
        assert f"Error: cannot serve HTTP on 127.0.0.1:{port}: the port is in use" in out.stderr


class TestRedisConnections:
    """flowline's own Redis use never fails for want of connections (issue: MaxConnectionsError)."""

    async def test_four_full_queues_reporting_progress_all_complete(self, worker, js, redis):
        """4 queues x 50 handlers calling progress: every job completes on its first attempt."""
        proc = worker(APP, env={"FLOWLINE_TEST_STEP": "0.02"})
        await proc.ready()
        events = 200  # 800 jobs; 200 handlers at once, each writing progress 5 times
        await publish(js, "observed", [{"n": i} for i in range(events)])
        peak = 0
        mine = f"-{proc.proc.pid}-"  # the worker names its connections flowline:<host>-<pid>-<id>

        async def all_done() -> bool:
            nonlocal peak
            names = [c.get("name") or "" for c in await redis.client_list()]
            peak = max(peak, sum(1 for n in names if n.startswith("flowline:") and mine in n))
            count = 0
            for t in TOPICS:
                count += len(await redis.keys(f"flowline:{{observed-{t}}}:job:*"))
            if count < 4 * events:
                return False
            pipe = redis.pipeline(transaction=False)
            for t in TOPICS:
                for i in range(events):
                    pipe.hget(
                        f"flowline:{{observed-{t}}}:job:observed:{i + 1}:{TOPICS.index(t)}",
                        "attempt",
                    )
            return all(a == b"1" for a in await pipe.execute())

        await eventually(all_done, timeout=60, interval=0.2)
        problems = [x for x in proc.lines() if x.get("level") in ("warning", "error")]
        assert problems == []
        # The worker's pool: 32 + 4 per queue + 2 for the stream, and nothing past it.
        assert 4 < peak <= 32 + 4 * 4 + 2

    async def test_many_concurrent_enqueues_through_connect_all_succeed(self, settings, redis):
        """150 concurrent pipeline.enqueue calls through flowline.connect all succeed."""
        pipeline = tiny_pipeline()
        async with flowline.connect(pipeline, settings):
            ids = await asyncio.gather(*(pipeline.enqueue("t", {"i": i}) for i in range(150)))
        assert len(set(ids)) == 150
        assert await redis.xlen("flowline:{tiny}:jobs") == 150

    async def test_a_failed_direct_enqueue_names_the_enqueue_stage(self, tmp_path):
        """With Redis gone, pipeline.enqueue raises EnqueueError, not a handler's JobError."""
        with LocalServers(directory=str(tmp_path)) as own:
            pipeline = tiny_pipeline()
            s = Settings(nats_url=own.nats_url, redis_url=own.redis_url)
            async with flowline.connect(pipeline, s):
                own.stop_redis(kill=True)
                with pytest.raises(flowline.EnqueueError, match=r"stage 'enqueue'"):
                    await pipeline.enqueue("t", {"i": 1})


class TestWithPrometheus:
    async def test_prometheus_scrapes_two_workers_and_sees_every_job(self, worker, js, tmp_path):
        """A real Prometheus scraping two workers: completed jobs sum to the jobs made, and
        the queue depth it records rises, then drains to 0."""
        require(prometheus_binary(), "prometheus")
        ports = [free_port(), free_port()]
        env = {"FLOWLINE_TEST_STEP": "0.05"}  # slow enough that a backlog builds up
        # 8 handlers at once over 2 processes and 4 queues, 0.25 s a job: ~6 s of backlog.
        procs = [worker(APP, "--http-port", str(p), "--concurrency", "1", env=env) for p in ports]
        for proc in procs:
            await proc.ready()
        targets = [f"127.0.0.1:{p}" for p in ports]
        with PrometheusServer(targets=targets, tmp_path=tmp_path) as prom:
            await eventually(
                lambda: sorted(t["health"] for t in prom.targets()) == ["up", "up"],
                timeout=30,
            )
            events = 50  # 200 jobs
            await publish(js, "observed", [{"n": i} for i in range(events)])

            def value(expr: str) -> float | None:
                result = prom.query(expr)
                return float(result[0]["value"][1]) if result else None

            await eventually(
                lambda: value("sum(flowline_jobs_completed_total)") == 4 * events,
                timeout=60,
                interval=0.5,
            )
            # Both processes did part of the work: counters are per process.
            per_process = prom.query("sum by (instance) (flowline_jobs_completed_total)")
            assert len(per_process) == 2
            assert all(float(r["value"][1]) > 0 for r in per_process)
            depth = 'max by (queue) (flowline_queue_jobs{state=~"ready|running"})'
            await eventually(
                lambda: value(f"sum({depth})") == 0,
                timeout=20,
                interval=0.5,
            )
            assert value(f"max_over_time(sum({depth})[5m:1s])") > 0
            assert value("sum(flowline_jobs_dead_lettered_total)") == 0
            assert value("sum(flowline_job_duration_seconds_count)") == 4 * events
