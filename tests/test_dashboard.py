"""The web dashboard: its CLI errors, auth and CSRF over plain HTTP, and pages in a real browser.

Every dashboard here is a real `flowline dashboard` subprocess on the session's servers, and the
jobs it shows are run by real `flowline worker` subprocesses. The browser tests drive Debian's
chromium (see `tests/browser.py`) and keep screenshots of the main pages as artifacts.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from flowline.dashboard import Auth, Csrf
from flowline.dashboard.app import environment
from flowline.dashboard.diagram import layout
from flowline.dashboard.security import CSRF_COOKIE
from flowline.errors import ConfigurationError
from flowline.runtime.deadletters import job_record
from flowline.runtime.keys import QueueKeys, stream_dead_letters
from flowline.servers import LocalServers

from . import browser as _browser
from .apps.recorder import pipeline as recorder
from .browser import Browser
from .conftest import ROOT, eventually, flowline_cli, runs

chrome = _browser.chrome  # the session's Chromium, a fixture

APP = "tests.apps.recorder:pipeline"
PIPELINE = "recorder-recorder"
Q = QueueKeys("recorder")
USER, PASSWORD = "ops", "dash-pa55word"
TOKEN = "t0ken-for-the-dashboard-tests"


# -- processes and requests ------------------------------------------------------------------------


class DashboardProcess:
    """A real `flowline dashboard` subprocess; `url` is known once it serves."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowline", "dashboard", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = ""

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self, timeout: float = 20) -> DashboardProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"flowline dashboard on (http://\S+)", self.output())
            if found:
                self.url = found.group(1)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"dashboard exited: {self.proc.returncode}\n{self.output()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"dashboard not serving in {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def dashboard(servers: LocalServers, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``await dashboard("--auth", "u:p")`` serves APP on a free port and waits."""
    started: list[DashboardProcess] = []

    async def start(*args: str, target: str = APP, env: dict[str, str] | None = None) -> Any:
        full_env = {**os.environ, **servers.env(), "PYTHONPATH": str(ROOT), **(env or {})}
        full_env.pop("FLOWLINE_DASHBOARD_AUTH", None)
        proc = DashboardProcess(
            [target, "--port", "0", *args], full_env, tmp_path / f"dashboard-{len(started)}.log"
        )
        started.append(proc)
        return await proc.ready()

    yield start
    for proc in started:
        proc.stop()
        print(f"--- {proc.log_path.name}\n{proc.output()}")  # shown when the test failed


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def cookie(self, name: str) -> str | None:
        for value in self.headers.get_all("set-cookie") or []:
            key, _, rest = value.partition("=")
            if key == name:
                return rest.partition(";")[0]
        return None


def request(
    url: str,
    path: str = "/",
    *,
    method: str = "GET",
    auth: tuple[str, str] | None = (USER, PASSWORD),
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One plain HTTP request (no redirects followed, no cookies kept)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    sent = dict(headers or {})
    if auth is not None:
        sent["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    body = None
    if form is not None:
        body = urlencode(form)
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read().decode())
    finally:
        conn.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return flowline_cli("dashboard", *args, env=env)


async def bury(redis: Any, job_id: str, topic: str = "record", data: Any = None) -> None:
    """A dead letter of the recorder queue, as the FAIL script writes it."""
    record = job_record(
        job_id=job_id,
        queue="recorder",
        topic=topic,
        data=json.dumps(data).encode(),
        attempts=1,
        err=ValueError("buried by the test"),
    )
    await redis.xadd(Q.dead, {"id": job_id, "record": record})


async def publish(js: Any, *jobs: dict[str, Any]) -> int:
    ack = await js.publish("recorder", json.dumps({"jobs": list(jobs)}).encode())
    return int(ack.seq)


# -- pieces without servers ------------------------------------------------------------------------


class TestAuth:
    def test_user_and_password(self) -> None:
        """``USER:PASSWORD`` is HTTP Basic; the password may hold colons."""
        auth = Auth.parse("ops:pa:ss")
        assert (auth.user, auth.secret) == ("ops", "pa:ss")
        assert auth.accepts("Basic " + base64.b64encode(b"ops:pa:ss").decode())
        assert not auth.accepts("Basic " + base64.b64encode(b"ops:wrong").decode())
        assert not auth.accepts("Basic " + base64.b64encode(b"other:pa:ss").decode())
        assert not auth.accepts("Bearer pa:ss")
        assert not auth.accepts("Basic not-base64!")
        assert not auth.accepts(None)

    def test_token_from_the_environment(self) -> None:
        """``token`` reads FLOWLINE_DASHBOARD_TOKEN: as a bearer, or as any user's password."""
        auth = Auth.parse("token", {"FLOWLINE_DASHBOARD_TOKEN": TOKEN})
        assert auth.user is None
        assert auth.accepts(f"Bearer {TOKEN}")
        assert auth.accepts("Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode())
        assert not auth.accepts("Bearer nope")

    @pytest.mark.parametrize(
        ("value", "env", "message"),
        [
            ("ops", {}, "--auth must be USER:PASSWORD, or 'token'"),
            (":secret", {}, "--auth must be USER:PASSWORD"),
            ("ops:", {}, "--auth must be USER:PASSWORD"),
            ("token", {}, "--auth token needs the token in FLOWLINE_DASHBOARD_TOKEN"),
            ("token", {"FLOWLINE_DASHBOARD_TOKEN": "short"}, "is too short (5 characters)"),
        ],
    )
    def test_bad_values(self, value: str, env: dict[str, str], message: str) -> None:
        """A malformed --auth says what it expects."""
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            Auth.parse(value, env)

    def test_the_secret_is_not_in_its_repr(self) -> None:
        assert "pa55" not in repr(Auth.parse("ops:pa55"))


def test_csrf_tokens_are_signed_by_this_process() -> None:
    """A token is valid only as signed by the same key, and a form must repeat its cookie."""
    csrf, other = Csrf(), Csrf()
    token = csrf.new()
    assert csrf.valid(token)
    assert not other.valid(token)
    assert not csrf.valid(token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not csrf.valid("no-signature")
    assert csrf.matches(token, token)
    assert not csrf.matches(token, csrf.new())
    assert not csrf.matches(None, token)


class TestDiagram:
    def test_every_stage_topic_and_handler_is_drawn(self) -> None:
        """Source, route, queue, and one box per topic naming its handler, joined by arrows."""
        from tests.apps.recorder import pipeline

        d = layout(pipeline)
        kinds = [n.kind for n in d.nodes]
        assert kinds.count("source") == kinds.count("route") == kinds.count("queue") == 1
        topics = {n.label: n.detail for n in d.nodes if n.kind == "topic"}
        assert topics["record"] == "→ record_job"
        assert set(topics) == set(pipeline.topics)
        assert len(d.edges) == 2 + len(topics)
        inside = [n for n in d.nodes if n.x >= 0 and n.y >= 0]
        assert inside == list(d.nodes)
        assert max(n.x + n.w for n in d.nodes) <= d.width
        assert max(n.y + n.h for n in d.nodes) <= d.height
        tops = sorted(n.y for n in d.nodes if n.kind == "topic")
        assert all(b - a >= 40 for a, b in itertools.pairwise(tops))

    def test_two_sources_fan_out_to_several_queues(self) -> None:
        """Each queue is drawn level with its own topics; each source, stacked, leads to its
        own route, and every route to every queue; a cron source shows its schedule."""
        from examples.fanbase.channels import notifications

        d = layout(notifications)
        queues = {n.label: n for n in d.nodes if n.kind == "queue"}
        assert set(queues) == {"fanbase-email", "fanbase-sms", "fanbase-social"}
        assert queues["fanbase-email"].cy < queues["fanbase-sms"].cy < queues["fanbase-social"].cy
        sources = [n for n in d.nodes if n.kind == "source"]
        routes = [n for n in d.nodes if n.kind == "route"]
        assert [(n.caption, n.label) for n in sources] == [
            ("stream", "fanbase"),
            ("cron", "0 9 * * *"),
        ]
        assert [n.label for n in routes] == ["route_channels", "route_digest"]
        assert sources[0].y + sources[0].h < sources[1].y  # stacked, not overlapping
        assert len(d.edges) == 2 + 2 * 3 + sum(1 for n in d.nodes if n.kind == "topic")
        assert "stream fanbase and cron 0 9 * * *, then route route_channels and route " in (
            d.description
        )

    def test_live_counts_and_unhandled_topics(self) -> None:
        """With queue states the queue box shows its counts; a listed topic nobody handles warns."""
        from flowline import Queue, Route, Stream

        p = Stream("s", bytes) >> Route(lambda e: []) >> Queue("q", topics={"a", "b"})
        p.dequeue("a", lambda job: None)
        d = layout(p, {"q": {"ready": 3, "running": 1, "dead": 2}})
        queue = next(n for n in d.nodes if n.kind == "queue")
        assert queue.detail == "3 ready · 1 running · 2 dead"
        assert queue.warn
        b = next(n for n in d.nodes if n.label == "b")
        assert (b.detail, b.warn) == ("no handler", True)

    def test_names_are_escaped_in_the_svg(self) -> None:
        """A lambda's ``<lambda at file:line>`` name is text in the SVG, never markup."""
        from flowline import Queue, Route, Stream

        p = Stream("s", bytes) >> Route(lambda e: []) >> Queue("q")
        p.dequeue("t", lambda job: None)
        svg = environment().get_template("_diagram.html").render(d=layout(p))
        assert "&lt;lambda at" in svg
        assert "<lambda" not in svg


# -- the command's errors --------------------------------------------------------------------------


class TestCommandErrors:
    def one_line_error(self, result: subprocess.CompletedProcess[str], expected: str) -> None:
        assert result.returncode != 0
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert result.stderr.startswith("Error: ")
        assert expected in result.stderr

    def test_public_address_needs_auth(self) -> None:
        """Binding anything but loopback without --auth is refused before binding."""
        self.one_line_error(
            cli(APP, "--host", "0.0.0.0"),
            "refusing to serve the dashboard on 0.0.0.0 without --auth",
        )

    def test_bad_auth(self) -> None:
        self.one_line_error(cli(APP, "--auth", "no-colon"), "--auth must be USER:PASSWORD")

    def test_auth_token_without_a_token(self) -> None:
        env = {"FLOWLINE_DASHBOARD_TOKEN": ""}
        self.one_line_error(
            cli(APP, "--auth", "token", env=env), "needs the token in FLOWLINE_DASHBOARD_TOKEN"
        )

    def test_port_in_use(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            self.one_line_error(
                cli(APP, "--port", str(port)), f"cannot serve HTTP on 127.0.0.1:{port}: the port"
            )

    def test_unknown_pipeline(self) -> None:
        self.one_line_error(
            cli("tests.apps.recorder:nope"), "module 'tests.apps.recorder' has no attribute 'nope'"
        )
        self.one_line_error(cli("tests.apps.nothing_here:pipeline"), "cannot import")

    def test_unreachable_redis(self) -> None:
        """A server that does not answer is named, with its URL's password hidden."""
        result = cli(APP, "--port", "0", "--redis", "redis://:hunter2@127.0.0.1:1/0")
        self.one_line_error(result, "cannot connect to Redis at redis://:***@127.0.0.1:1/0")
        assert "hunter2" not in result.stderr


# -- HTTP: auth, CSRF, headers ---------------------------------------------------------------------


class TestHttp:
    async def test_every_request_needs_the_credential(self, dashboard: Any) -> None:
        """With --auth, pages, fragments and static files all answer 401 without it."""
        dash = await dashboard("--auth", f"{USER}:{PASSWORD}", "--host", "0.0.0.0")
        url = dash.url.replace("0.0.0.0", "127.0.0.1")
        for path in ("/", "/fragments/overview", "/static/htmx.min.js", f"/pipelines/{PIPELINE}"):
            assert request(url, path, auth=None).status == 401
            assert request(url, path, auth=(USER, "wrong")).status == 401
            assert request(url, path).status == 200, path
        refused = request(url, "/", auth=None)
        assert refused.headers["www-authenticate"].startswith('Basic realm="flowline dashboard"')
        assert PASSWORD not in refused.body

    async def test_a_paused_queue_is_marked(self, dashboard: Any, redis: Any) -> None:
        """The overview's queue row says paused while the queue is, and only then."""
        dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
        assert 'data-paused="recorder"' not in request(dash.url, "/fragments/overview").body
        await redis.set(Q.paused, "1")
        body = request(dash.url, "/fragments/overview").body
        assert '<span class="badge warn" data-paused="recorder">paused</span>' in body

    async def test_token_auth(self, dashboard: Any) -> None:
        """``--auth token``: the token works as a bearer and as the Basic password."""
        dash = await dashboard("--auth", "token", env={"FLOWLINE_DASHBOARD_TOKEN": TOKEN})
        assert request(dash.url, auth=None).status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert request(dash.url, auth=None, headers=bearer).status == 200
        assert request(dash.url, auth=("me", TOKEN)).status == 200
        assert TOKEN not in request(dash.url, auth=("me", TOKEN)).body

    async def test_state_changes_need_a_csrf_token(self, dashboard: Any, redis: Any) -> None:
        """A POST without the page's CSRF token (or cross-site) is 403 and changes nothing."""
        await bury(redis, "csrf:1:0")
        dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
        page = request(dash.url, "/dead-letters")
        cookie = page.cookie(CSRF_COOKIE)
        assert cookie
        field = re.search(r'name="csrf" value="([^"]+)"', page.body)
        assert field
        assert field.group(1) == cookie
        forged = Csrf().new()
        attempts = [
            ({"all": "1"}, {"Cookie": f"{CSRF_COOKIE}={cookie}"}),  # no field
            ({"all": "1", "csrf": cookie}, {}),  # no cookie
            ({"all": "1", "csrf": forged}, {"Cookie": f"{CSRF_COOKIE}={forged}"}),  # not ours
            ({"all": "1", "csrf": cookie}, {"Cookie": f"{CSRF_COOKIE}={Csrf().new()}"}),
            (
                {"all": "1", "csrf": cookie},
                {"Cookie": f"{CSRF_COOKIE}={cookie}", "Sec-Fetch-Site": "cross-site"},
            ),
            (
                {"all": "1", "csrf": cookie},
                {"Cookie": f"{CSRF_COOKIE}={cookie}", "Origin": "http://evil.example"},
            ),
        ]
        for form, headers in attempts:
            refused = request(
                dash.url, "/dead-letters/purge", method="POST", form=form, headers=headers
            )
            assert refused.status == 403, (form, headers)
        assert await redis.xlen(Q.dead) == 1
        unauthenticated = request(
            dash.url, "/dead-letters/purge", method="POST", auth=None,
            form={"all": "1", "csrf": cookie}, headers={"Cookie": f"{CSRF_COOKIE}={cookie}"},
        )  # fmt: skip
        assert unauthenticated.status == 401
        done = request(
            dash.url, "/dead-letters/purge", method="POST",
            form={"all": "1", "csrf": cookie}, headers={"Cookie": f"{CSRF_COOKIE}={cookie}"},
        )  # fmt: skip
        assert done.status == 303
        assert done.headers["location"].endswith("/dead-letters?purged=1")
        assert await redis.xlen(Q.dead) == 0

    async def test_without_auth_it_is_read_only_and_loopback_only(
        self, dashboard: Any, redis: Any
    ) -> None:
        """No --auth: pages load, every POST is refused, and a foreign Host header too."""
        await bury(redis, "ro:1:0")
        dash = await dashboard()
        page = request(dash.url, "/dead-letters", auth=None)
        assert page.status == 200
        assert "read-only" in page.body
        assert re.search(r"<button[^>]*data-action=\"replay-one\"[^>]*disabled", page.body)
        cookie = page.cookie(CSRF_COOKIE)
        assert cookie
        refused = request(
            dash.url, "/dead-letters/replay", method="POST", auth=None,
            form={"all": "1", "csrf": cookie}, headers={"Cookie": f"{CSRF_COOKIE}={cookie}"},
        )  # fmt: skip
        assert refused.status == 403
        assert "read-only" in refused.body
        assert await redis.xlen(Q.dead) == 1
        # A page whose DNS name was rebound to 127.0.0.1 arrives with its own Host.
        assert request(dash.url, auth=None, headers={"Host": "evil.example"}).status == 421
        assert request(dash.url, auth=None, headers={"Host": "localhost:8000"}).status == 200

    async def test_security_headers_and_unknown_pages(self, dashboard: Any) -> None:
        """A strict CSP on every page; unknown pipelines and jobs are 404 pages."""
        dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
        page = request(dash.url)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert request(dash.url, "/pipelines/nope").status == 404
        assert request(dash.url, "/dead-letters?pipeline=nope").status == 404
        missing = request(dash.url, "/jobs/recorder:999:0")
        assert missing.status == 404
        assert "No job" in missing.body
        lookup = request(dash.url, "/jobs?id=recorder:1:0")
        assert lookup.headers["location"] == "/jobs/recorder:1:0"


async def test_stops_at_once_with_a_feed_open(dashboard: Any) -> None:
    """SIGTERM ends an open events stream and the process at once, with exit status 0."""
    dash = await dashboard()
    parts = urlsplit(dash.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", "/events/stream")
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.readline() == b"event: ready\n"
        started = time.monotonic()
        dash.proc.terminate()
        assert await asyncio.to_thread(dash.proc.wait, 10) == 0
        assert time.monotonic() - started < 3
    finally:
        conn.close()
    assert "Traceback" not in dash.output()


@pytest.fixture(scope="module")
def secret_servers() -> Iterator[LocalServers]:
    with LocalServers(
        redis_password="r3dis-dash-secret", nats_user="flow", nats_password="n4ts-dash-secret"
    ) as s:
        yield s


async def test_no_credential_is_ever_rendered(secret_servers: LocalServers, tmp_path: Path) -> None:
    """Redis and NATS passwords show as ***, and the dashboard's own password nowhere."""
    env = {**os.environ, **secret_servers.env(), "PYTHONPATH": str(ROOT)}
    proc = DashboardProcess(
        [APP, "--port", "0", "--auth", f"{USER}:{PASSWORD}"], env, tmp_path / "d.log"
    )
    try:
        await proc.ready()
        pages = ["/", "/fragments/overview", f"/pipelines/{PIPELINE}", "/dead-letters",
                 "/events", "/jobs/x:1:0", f"/fragments/pipelines/{PIPELINE}"]  # fmt: skip
        for path in pages:
            body = request(proc.url, path).body
            for secret in ("r3dis-dash-secret", "n4ts-dash-secret", PASSWORD):
                assert secret not in body, (path, secret)
        overview = request(proc.url).body
        assert "redis ok" in re.sub(r"<[^>]+>|\s+", " ", overview).replace("  ", " ")
        assert ":***@" in overview
        assert "r3dis-dash-secret" not in proc.output()
    finally:
        proc.stop()


# -- in a real browser -----------------------------------------------------------------------------


@pytest.fixture
def browser(chrome: Any) -> Iterator[Callable[[str], Browser]]:
    """Factory: the session's browser, authenticated, pointed at one dashboard's URL."""
    opened: list[Browser] = []

    def at(url: str) -> Browser:
        b = Browser(chrome, url)
        b.console()  # what earlier tests left
        b.authenticate(USER, PASSWORD)
        opened.append(b)
        return b

    yield at
    for b in opened:
        b.leave()  # before the dashboard stops: its polls would fail in the console


def count(b: Browser, key: str) -> str:
    return b.text(f'[data-count="{key}"]')


async def test_overview_counts_change_as_jobs_complete(
    dashboard: Any, worker: Any, js: Any, browser: Any
) -> None:
    """The overview loads cleanly and its counts follow a real worker completing jobs."""
    proc = worker(APP, "--concurrency", "2")
    await proc.ready()
    dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
    b = browser(dash.url)
    b.open("/")
    assert b.find("svg.diagram")
    assert len(b.find_all("svg.diagram .node-topic")) == len(
        recorder.topics
    )  # one per topic of the app
    b.until(lambda: count(b, "processes") == "1", what="one process online")
    assert count(b, "queue:recorder.completed_1m") == "0"
    for _ in range(6):
        await publish(js, {"topic": "record", "data": {"sleep": 0.4}})
    seen = {count(b, "queue:recorder.running")}
    deadline = time.monotonic() + 30
    while (done := count(b, "queue:recorder.completed_1m")) != "6":
        assert time.monotonic() < deadline, f"completed stayed at {done}"
        seen.add(count(b, "queue:recorder.running"))
        await asyncio.sleep(0.1)
    assert "2" in seen or "1" in seen, f"never saw a job running: {seen}"
    b.until(lambda: count(b, "queue:recorder.running") == "0", what="nothing running")
    assert count(b, f"pipeline:{PIPELINE}.stream.messages") == "6"
    assert b.console_errors() == []
    b.screenshot("overview")

    b.open(f"/pipelines/{PIPELINE}")
    assert "record_job" in b.text("#topics")
    b.until(lambda: count(b, "queue:recorder.completed_1m") == "6", what="the pipeline's counts")
    assert b.console_errors() == []
    b.screenshot("pipeline")


async def test_job_page_shows_live_progress(
    dashboard: Any, worker: Any, js: Any, redis: Any, browser: Any
) -> None:
    """A running job is listed on its pipeline's page; its own page follows its progress."""
    proc = worker(APP)
    await proc.ready()
    dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
    b = browser(dash.url)
    b.open(f"/pipelines/{PIPELINE}")
    seq = await publish(js, {"topic": "progress", "data": {"step": 1.0}})
    job_id = f"recorder:{seq}:0"
    b.until(lambda: b.find_all(f'[data-running="{job_id}"] a'), what="the running job listed")
    b.find(f'[data-running="{job_id}"] a').click()
    b.until(lambda: b.driver.current_url.endswith(f"/jobs/{job_id}"), what="the job's page")
    seen: set[str] = set()

    def watch(until: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            bar = b.find_all("[data-job-progress]")
            if bar:
                seen.add(bar[0].get_attribute("data-job-progress"))
            return until()

        return check

    b.until(watch(lambda: bool(seen & {"25", "50", "75"})), what="progress below 100")
    b.screenshot("job-running")
    b.until(watch(lambda: b.text("[data-job-state]") == "completed"), what="the job completed")
    assert b.find("[data-job-progress]").get_attribute("data-job-progress") == "100"
    assert '"progressed"' in b.text("[data-job-result]")
    assert len(seen) >= 2, seen  # it moved while the page watched
    assert b.console_errors() == []
    b.screenshot("job")


async def test_replay_click_runs_the_dead_letter_to_completion(
    dashboard: Any, worker: Any, js: Any, redis: Any, browser: Any
) -> None:
    """Jobs dead-lettered by a timeout, replayed by a click once the cause is fixed, complete:
    one from the dead letters' list, one from its own page."""
    broken = worker(APP, env={"FLOWLINE_TEST_RETRIES": "0", "FLOWLINE_TEST_TIMEOUT": "0.3"})
    await broken.ready()
    seq = await publish(
        js, {"topic": "record", "data": {"sleep": 0.6}}, {"topic": "record", "data": {"sleep": 0.6}}
    )
    from_list, from_page = f"recorder:{seq}:0", f"recorder:{seq}:1"
    await js.publish("recorder", b"not json")  # and a message nobody can decode
    await eventually(lambda: _xlen_is(redis, Q.dead, 2))
    await eventually(lambda: redis.xlen(stream_dead_letters(PIPELINE).dead))
    broken.signal(15)
    await broken.wait()
    fixed = worker(APP, env={"FLOWLINE_TEST_RETRIES": "0"})  # the default 30 s timeout
    await fixed.ready()

    dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
    b = browser(dash.url)
    b.open("/dead-letters")
    row = b.find(f'tr[data-job="{from_list}"]')
    assert "ran past its 0.3s timeout" in row.text
    assert "DecodeError" in b.text('tr[data-job=""]')
    assert b.console_errors() == []
    b.screenshot("dead-letters")
    row.find_element("css selector", '[data-action="replay-one"]').click()
    b.until(lambda: "Replayed 1 dead letter" in b.text("[data-flash=replayed]"), what="the flash")
    assert b.find_all(f'tr[data-job="{from_list}"]') == []
    await eventually(lambda: _completed(redis, from_list))
    done = [r for r in await runs(redis) if r["id"] == from_list and r["event"] == "done"]
    assert len(done) == 1
    assert done[0]["pid"] == fixed.pid
    b.find(f'[data-flash=replayed] a[href="/jobs/{from_list}"]').click()
    b.until(lambda: b.text("[data-job-state]") == "completed", what="the replayed job completed")

    b.open(f"/jobs/{from_page}")
    assert b.text("[data-job-state]") == "failed"
    assert "JobTimeout" in b.text("#job details pre")
    b.screenshot("job-failed")
    b.find('[data-action="replay-job"]').click()
    b.until(
        lambda: b.text("[data-job-state]") == "completed", what="the job replayed from its page"
    )
    assert b.driver.current_url.endswith(f"/jobs/{from_page}")
    assert await _completed(redis, from_page)
    assert b.console_errors() == []


async def test_replaying_a_stream_message_republishes_it(
    dashboard: Any, worker: Any, js: Any, redis: Any
) -> None:
    """A message the router refused goes back to its stream when replayed (NATS on demand)."""
    proc = worker(APP, env={"FLOWLINE_TEST_MAX_DELIVER": "1"})
    await proc.ready()
    await js.publish("recorder", json.dumps({"raise": "not today"}).encode())
    store = stream_dead_letters(PIPELINE).dead
    await eventually(lambda: redis.xlen(store))
    dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
    page = request(dash.url, "/dead-letters")
    assert "not today" in page.body
    cookie = page.cookie(CSRF_COOKIE)
    assert cookie
    done = request(
        dash.url, "/dead-letters/replay", method="POST",
        form={"all": "1", "csrf": cookie}, headers={"Cookie": f"{CSRF_COOKIE}={cookie}"},
    )  # fmt: skip
    assert done.status == 303
    assert "replayed=1" in done.headers["location"]
    # Republished as message 2, refused again by the router: a new dead letter of it.
    info = await js.stream_info("recorder")
    assert info.state.last_seq == 2
    letters = await eventually(lambda: _letters_of_sequence(redis, store, 2))
    assert letters[0]["stage"] == "route"


async def _letters_of_sequence(redis: Any, store: str, seq: int) -> list[dict[str, Any]]:
    entries = await redis.xrange(store)
    records = [json.loads(fields[b"record"]) for _, fields in entries]
    return [r for r in records if r.get("sequence") == seq]


async def test_purge_several_then_all(dashboard: Any, redis: Any, browser: Any) -> None:
    """Checked rows are purged together after a confirmation; then 'Purge all' empties it."""
    for i in range(4):
        await bury(redis, f"purge:{i}:0")
    dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
    b = browser(dash.url)
    b.open("/dead-letters")
    assert count(b, "dead-letters") == "4"
    for job in ("purge:0:0", "purge:2:0"):
        b.find(f'tr[data-job="{job}"] input[name=selected]').click()
    b.find('[data-action="purge-selected"]').click()
    b.driver.switch_to.alert.accept()
    b.until(lambda: "Purged 2 dead letters" in b.text("[data-flash=purged]"), what="purged 2")
    assert sorted(r.get_attribute("data-job") for r in b.find_all("tr[data-letter]")) == [
        "purge:1:0",
        "purge:3:0",
    ]
    b.find('[data-action="purge-all"]').click()
    b.driver.switch_to.alert.dismiss()  # changing one's mind keeps them
    assert count(b, "dead-letters") == "2"
    b.find('[data-action="purge-all"]').click()
    b.driver.switch_to.alert.accept()
    b.until(lambda: "Purged 2 dead letters" in b.text("[data-flash=purged]"), what="purged all")
    assert await redis.xlen(Q.dead) == 0
    assert b.console_errors() == []


async def _completed(redis: Any, job_id: str) -> bool:
    return await redis.hget(Q.job(job_id), "state") == b"completed"


async def _xlen_is(redis: Any, key: str, n: int) -> bool:
    return await redis.xlen(key) == n


async def test_overview_of_several_pipelines(
    dashboard: Any, worker: Any, js: Any, redis: Any, browser: Any
) -> None:
    """Three pipelines (a fan-out to three queues, a second stream, a cron) on one page."""
    from examples.fanbase.fanbase_pb2 import FanbaseEvent

    app = "examples.fanbase.channels:app"
    proc = worker(app)
    await proc.ready()
    dash = await dashboard("--auth", f"{USER}:{PASSWORD}", target=app)
    for fan, action in [("fan-1", "followed"), ("fan-2", "followed"), ("fan-3", "unfollowed")]:
        event = FanbaseEvent(fan=fan, talent="talent-1", action=action)
        await js.publish("fanbase", event.SerializeToString())
    b = browser(dash.url)
    b.open("/")
    assert [s.get_attribute("data-pipeline") for s in b.find_all("section.pipeline")] == [
        "fanbase-channels",
        "fanbase-audit",
    ]
    # 10 notifications sent, each audited once: both streams' jobs are done.
    b.until(lambda: count(b, "queue:fanbase-audit.completed_1m") == "10", what="10 audits")
    assert count(b, "pipeline:fanbase-channels.completed_1m") == "10"
    assert b.find_all("[data-cron-fired]")
    assert b.console_errors() == []
    b.screenshot("overview-fanbase")


async def test_event_feed_from_every_process(
    dashboard: Any, worker: Any, js: Any, redis: Any, browser: Any
) -> None:
    """Events recorded by two worker processes stream in live, newest on top; filters narrow."""
    dash = await dashboard("--auth", f"{USER}:{PASSWORD}")
    b = browser(dash.url)
    b.open("/events")
    b.until(lambda: b.text("[data-feed-state]") == "live", what="the stream open")
    first = worker(APP)
    await first.ready()
    seq = await publish(js, {"topic": "record"}, {"topic": "record"})
    b.until(lambda: len(b.find_all('tr[data-event="job:complete"]')) == 2, what="2 completions")
    first.signal(15)
    await first.wait()
    second = worker(APP, env={"FLOWLINE_TEST_RETRIES": "0"})
    await second.ready()
    boom = await publish(js, {"topic": "boom"})
    b.until(lambda: b.find_all(f'tr[data-event="dead-letter"][data-job="recorder:{boom}:0"]'))
    rows = b.find_all("tbody#feed tr")
    assert rows[0].get_attribute("data-event") == "dead-letter"  # the newest is on top
    processes = {r.find_elements("css selector", "td")[-1].text for r in rows}
    assert len(processes) == 2, processes
    assert "ValueError: boom" in b.text(
        f'tr[data-event="job:failed"][data-job="recorder:{boom}:0"]'
    )
    assert b.console_errors() == []
    b.screenshot("events")

    b.open("/events?names=job:complete")
    b.until(lambda: len(b.find_all("tbody#feed tr")) == 2, what="the 2 completions, from the log")
    assert {r.get_attribute("data-job") for r in b.find_all("tbody#feed tr")} == {
        f"recorder:{seq}:0",
        f"recorder:{seq}:1",
    }
    b.find(f'tr[data-job="recorder:{seq}:1"] a').click()
    b.until(lambda: b.text("[data-job-state]") == "completed", what="the job's page")
    b.open("/events?names=no-such-event")
    assert "not started" in b.text("[data-feed-state]")
    assert "no-such-event" in b.text(".flash")
    assert b.console_errors() == []
    stream = request(dash.url, "/events/stream?names=no-such-event")
    assert stream.status == 400
    # A reconnecting browser sends the last id it got and the feed goes on after it; an id
    # that is none of ours starts it afresh, with the latest events.
    ids = await asyncio.to_thread(sse_ids, dash.url, 7)
    assert await asyncio.to_thread(sse_ids, dash.url, 6, ids[0]) == ids[1:]
    assert await asyncio.to_thread(sse_ids, dash.url, 7, "bogus") == ids


def sse_ids(url: str, n: int, last_id: str | None = None) -> list[str]:
    """The ids of the first `n` events the dashboard's feed sends."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    try:
        conn.request("GET", "/events/stream", headers=headers)
        response = conn.getresponse()
        ids: list[str] = []
        while len(ids) < n:
            line = response.readline().decode()
            if line.startswith("id: "):
                ids.append(line[4:].strip())
        return ids
    finally:
        conn.close()
