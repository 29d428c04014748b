"""The dashboard's pages: a Starlette app rendering Jinja templates, refreshed by htmx polling.

Every page is complete HTML as served; the live parts are fragments (``/fragments/...``) that
htmx fetches again every second and swaps in; the events page streams (`feed`). Reads come
from the runtime's own doors: the status document (`StatusReader`), `runtime.jobs`, the
dead-letter store, the event log. Actions are POSTs of plain HTML forms (they work without
JavaScript), checked by `security.guard`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
import structlog
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._settings import redact
from ..errors import ConfigurationError
from ..runtime import deadletters, eventlog, jobs
from ..runtime.jobs import JobInfo
from ..runtime.keys import QueueKeys
from ..runtime.registry import version
from . import diagram, feed
from .security import CSRF_FIELD, Auth, Csrf, form, guard, token_for

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from .._settings import Settings
    from ..runtime.runner import Runner
    from ..runtime.status import StatusReader

log = structlog.get_logger("flowline.dashboard")

HERE = Path(__file__).parent
FINAL_STATES = frozenset({"completed", "failed"})
MAX_SHOWN = 500  # dead letters listed on one page
MAX_PAYLOAD = 4000  # characters of a payload shown
JOBS_LISTED = 20  # running, delayed and failed jobs listed on a pipeline's page


@dataclass(frozen=True)
class Letter:
    """A dead letter as the page shows it, with the key its checkbox submits."""

    pipeline: str
    letter: deadletters.DeadLetter

    @property
    def key(self) -> str:
        return f"{self.letter.id}@{self.letter.store}"

    @property
    def what(self) -> str:
        rec = self.letter.record
        if self.letter.kind == "job":
            return str(rec.get("topic"))
        return f"{rec.get('subject')} #{rec.get('sequence')}"

    @property
    def payload(self) -> str:
        rec = self.letter.record
        if "data" in rec:
            return _shorten(str(rec["data"]))
        raw = rec.get("data_b64") or rec.get("payload_b64") or ""
        try:
            data = base64.b64decode(raw)
        except (binascii.Error, ValueError):
            return "(unreadable payload)"
        try:
            return _shorten(data.decode())
        except UnicodeDecodeError:
            return f"({len(data)} bytes, not text) {_shorten(raw)}"


class Dashboard:
    """The app's state: the pipelines, a connected runner for actions, the status reader."""

    def __init__(
        self,
        pipelines: tuple[Pipeline, ...],
        runner: Runner,
        status: StatusReader,
        settings: Settings,
        auth: Auth | None,
    ) -> None:
        self.pipelines = {p.name: p for p in pipelines}
        self.queues = jobs.queues_of(pipelines)
        self.owner = {n: p for p in pipelines for q in p.queues for n in q.shard_names}
        self.runner = runner
        self.status = status
        self.auth = auth
        # Shown in the footer, with any password or token replaced by ***.
        self.servers = {"redis": redact(settings.redis_url), "nats": redact(settings.nats_url)}
        self.templates = environment()
        self.closing = asyncio.Event()  # set when the server stops: open feeds end

    # -- rendering ------------------------------------------------------------------------------

    def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response:
        page = self.templates.get_template(name).render(
            base=request.scope.get("root_path", ""),
            csrf_field=Markup('<input type="hidden" name="{}" value="{}">').format(
                CSRF_FIELD, token_for(request)
            ),
            read_only=self.auth is None,
            version=version(),
            servers=self.servers,
            pipelines=list(self.pipelines.values()),
            path=request.url.path,
            **context,
        )
        return HTMLResponse(page, status_code)

    async def overview_context(self, only: str | None = None) -> dict[str, Any]:
        doc = await self.status.read()
        cards = []
        for entry in doc["pipelines"]:
            if only is not None and entry["name"] != only:
                continue
            p = self.pipelines[entry["name"]]
            queues = {q["name"]: q for q in entry["queues"]}
            cards.append({"doc": entry, "pipeline": p, "diagram": diagram.layout(p, queues)})
        return {"doc": doc, "cards": cards, "now": time.time()}

    # -- reading --------------------------------------------------------------------------------

    async def letters(self, pipeline: str | None) -> list[Letter]:
        """Dead letters, newest first: every pipeline's, or `pipeline`'s."""
        assert self.runner.redis is not None
        chosen = [p for p in self.pipelines.values() if pipeline in (None, p.name)]
        found = await jobs.dead_letters(self.runner.redis, chosen, MAX_SHOWN)
        owner = {store: p.name for p in chosen for store in deadletters.stores(p)}
        return [Letter(owner[x.store], x) for x in found]

    async def job(self, job_id: str) -> tuple[Pipeline, JobInfo] | None:
        """The job with `job_id` in any queue of any pipeline, with its pipeline."""
        assert self.runner.redis is not None
        found = await jobs.find(self.runner.redis, self.queues, job_id)
        if not found:
            return None
        info = found[0]
        return self.owner[info.queue or ""], info

    async def job_lists(self, pipeline: Pipeline) -> dict[str, list[JobInfo]]:
        """The pipeline's running, delayed (or retrying) and failed jobs, a page of each."""
        assert self.runner.redis is not None
        redis, queues = self.runner.redis, jobs.queues_of([pipeline])
        running, delayed, failed = await asyncio.gather(
            jobs.running(redis, queues, JOBS_LISTED),
            jobs.delayed(redis, queues, JOBS_LISTED),
            jobs.failed(redis, queues, JOBS_LISTED),
        )
        return {"running": running, "delayed": delayed, "failed": failed}


def environment() -> jinja2.Environment:
    """The pages' templates: autoescaped, and an undefined name is an error, not a blank."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, ago=_ago, clock=_clock, n=_number, g=_general, pretty=_pretty)
    return env


def create_app(dashboard: Dashboard, csrf: Csrf | None = None) -> Any:
    """The dashboard as an ASGI app, behind `security.guard`."""
    d = dashboard

    async def overview(request: Request) -> Response:
        return d.render(request, "overview.html", **await d.overview_context())

    async def overview_fragment(request: Request) -> Response:
        return d.render(request, "_overview.html", **await d.overview_context())

    async def pipeline_page(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in d.pipelines:
            return _not_found(d, request, f"no pipeline named {name!r}")
        context = await d.overview_context(only=name)
        letters = await d.letters(name)
        return d.render(
            request,
            "pipeline.html",
            pipeline=d.pipelines[name],
            card=context["cards"][0],
            dead=len(letters),
            lists=await d.job_lists(d.pipelines[name]),
            **context,
        )

    async def pipeline_fragment(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in d.pipelines:
            return _not_found(d, request, f"no pipeline named {name!r}")
        context = await d.overview_context(only=name)
        lists = await d.job_lists(d.pipelines[name])
        return d.render(
            request, "_pipeline_live.html", card=context["cards"][0], lists=lists, **context
        )

    async def job_lookup(request: Request) -> Response:
        job_id = request.query_params.get("id", "").strip()
        if not job_id:
            return RedirectResponse(f"{_root(request)}/", 303)
        return RedirectResponse(f"{_root(request)}/jobs/{job_id}", 303)

    async def job_page(request: Request) -> Response:
        context = await _job_context(d, request.path_params["job_id"])
        return d.render(request, "job.html", 200 if context["info"] is not None else 404, **context)

    async def job_fragment(request: Request) -> Response:
        context = await _job_context(d, request.path_params["job_id"])
        return d.render(request, "_job.html", **context)

    async def dead_letters(request: Request) -> Response:
        only = request.query_params.get("pipeline") or None
        if only is not None and only not in d.pipelines:
            return _not_found(d, request, f"no pipeline named {only!r}")
        q = request.query_params
        done = {
            "replayed": _int(q.get("replayed")),
            "purged": _int(q.get("purged")),
            "missing": _int(q.get("missing")),
            "jobs": q.getlist("job")[:20],
            "nothing": "nothing" in q,
        }
        return d.render(
            request, "dead_letters.html", letters=await d.letters(only), only=only, done=done
        )

    async def act(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("replay", "purge"):
            return _not_found(d, request, f"no action {action!r}: replay or purge")
        fields = form(request)
        only = fields.get("pipeline", [""])[0] or None
        if only is not None and only not in d.pipelines:
            return _not_found(d, request, f"no pipeline named {only!r}")
        letters = await d.letters(only)
        if fields.get("one"):
            wanted = {fields["one"][0]}
        elif fields.get("all"):
            wanted = {x.key for x in letters}
        else:
            wanted = set(fields.get("selected", []))
        chosen = [x for x in letters if x.key in wanted]
        params: list[tuple[str, str]] = [("pipeline", only)] if only else []
        if not wanted:
            params.append(("nothing", "1"))
        elif action == "replay":
            assert d.runner.redis is not None
            # A stream message goes back through NATS: connected before anything is replayed,
            # so an unreachable NATS replays nothing (as `flowline dlq replay`).
            needs_nats = any(x.letter.kind != "job" for x in chosen)
            js = await d.runner.jetstream() if needs_nats else None
            for x in chosen:
                await deadletters.replay(d.runner.redis, js, d.pipelines[x.pipeline], x.letter)
            params.append(("replayed", str(len(chosen))))
            params.extend(("job", str(x.letter.record["job_id"])) for x in chosen[:20]
                          if x.letter.kind == "job")  # fmt: skip
        else:
            assert d.runner.redis is not None
            removed = await deadletters.purge(d.runner.redis, [x.letter for x in chosen])
            params.append(("purged", str(removed)))
        if len(chosen) < len(wanted):
            # Replayed or purged meanwhile, by another tab or `flowline dlq`.
            params.append(("missing", str(len(wanted) - len(chosen))))
        elif fields.get("then") == ["job"] and action == "replay" and len(chosen) == 1:
            # From a job's page, back to it: to watch the replay run.
            job_id = chosen[0].letter.record.get("job_id")
            if job_id:
                return RedirectResponse(f"{_root(request)}/jobs/{job_id}", 303)
        return RedirectResponse(f"{_root(request)}/dead-letters?{urlencode(params)}", 303)

    def feed_filter(request: Request) -> tuple[str | None, list[str], str | None]:
        only = request.query_params.get("pipeline") or None
        patterns = feed.names(request.query_params.get("names", ""))
        problem = None
        if only is not None and only not in d.pipelines:
            problem = f"no pipeline named {only!r}"
        else:
            try:
                eventlog.check_names(patterns)
            except ConfigurationError as exc:
                problem = str(exc)
        return only, patterns, problem

    async def events(request: Request) -> Response:
        only, patterns, problem = feed_filter(request)
        query = urlencode({"pipeline": only or "", "names": " ".join(patterns)})
        return d.render(
            request,
            "events.html",
            only=only,
            patterns=patterns,
            problem=problem,
            query=query,
            backlog=feed.BACKLOG,
        )

    async def events_stream(request: Request) -> Response:
        only, patterns, problem = feed_filter(request)
        if problem is not None:
            return PlainTextResponse(problem, 400)
        assert d.runner.redis is not None
        body = feed.stream(
            d.runner.redis,
            [only] if only else list(d.pipelines),
            patterns,
            d.templates.get_template("_event_row.html"),
            _resume_from(request.headers.get("last-event-id")),
            d.closing,
            base=_root(request),
        )
        return StreamingResponse(body, media_type="text/event-stream")

    async def failed(request: Request, exc: Exception) -> Response:
        # A server that stopped answering mid-request (reads of the status document never
        # raise): say what failed instead of a bare 500. Redis and NATS errors name hosts, not
        # credentials.
        log.warning("dashboard request failed", path=request.url.path, error=repr(exc))
        message = f"{request.method} {request.url.path} failed: {type(exc).__name__}: {exc}"
        return d.render(request, "not_found.html", 503, message=message, title="Not done")

    async def favicon(request: Request) -> Response:
        return RedirectResponse(f"{_root(request)}/static/favicon.svg", 301)

    app = Starlette(
        routes=[
            Route("/", overview, methods=["GET"]),
            Route("/fragments/overview", overview_fragment, methods=["GET"]),
            Route("/pipelines/{name}", pipeline_page, methods=["GET"]),
            Route("/fragments/pipelines/{name}", pipeline_fragment, methods=["GET"]),
            Route("/jobs", job_lookup, methods=["GET"]),
            Route("/jobs/{job_id:path}", job_page, methods=["GET"]),
            Route("/fragments/jobs/{job_id:path}", job_fragment, methods=["GET"]),
            Route("/dead-letters", dead_letters, methods=["GET"]),
            Route("/dead-letters/{action:str}", act, methods=["POST"]),
            Route("/events", events, methods=["GET"]),
            Route("/events/stream", events_stream, methods=["GET"]),
            Route("/favicon.ico", favicon, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={Exception: failed},
    )
    return guard(app, d.auth, csrf or Csrf())


async def _job_context(d: Dashboard, job_id: str) -> dict[str, Any]:
    found = await d.job(job_id)
    if found is None:
        return {"job_id": job_id, "info": None, "pipeline": None, "final": False}
    pipeline, info = found
    return {
        "job_id": job_id,
        "info": info,
        "pipeline": pipeline,
        "letter_store": QueueKeys(info.queue or "").dead,
        "final": info.state in FINAL_STATES,
    }


def _resume_from(last_event_id: str | None) -> str | None:
    """Where a reconnecting feed goes on: the id its browser last got, if it is one."""
    if not last_event_id:
        return None
    try:
        eventlog.check_since(last_event_id)
    except ConfigurationError:
        return None  # not ours (or mangled): start again with the latest events
    return last_event_id


def _not_found(d: Dashboard, request: Request, message: str) -> Response:
    return d.render(request, "not_found.html", 404, message=message, title="Not found")


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_PAYLOAD else text[:MAX_PAYLOAD] + f"… ({len(text)} characters)"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(ts: float) -> str:
    """The time of day (UTC) to the millisecond: the feed's rows are a few ms apart."""
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


def _ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    delta = (now or time.time()) - ts
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{delta:.0f} s"
    elif delta < 3600:
        text = f"{delta / 60:.0f} min"
    elif delta < 86400:
        text = f"{delta / 3600:.1f} h"
    else:
        text = f"{delta / 86400:.1f} d"
    return f"in {text}" if future else f"{text} ago"


def _number(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def _general(value: float) -> str:
    return f"{value:g}"


def _pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)
