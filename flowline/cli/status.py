"""``flowline status``: what each pipeline's stream, queues and crons hold, and who runs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .._settings import Settings
from ..runtime.status import StatusReader
from ._common import load_pipelines, nats_option, redis_option, run, tls_option
from ._main import main


@main.command()
@click.argument("target")
@nats_option
@redis_option
@tls_option
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
def status(
    target: str,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
    as_json: bool,
    watch: bool,
    interval: float,
) -> None:
    """Show streams, queues, crons and processes of the pipeline(s) at TARGET.

    Works while no worker runs. A server that does not answer is reported (its figures show as
    ?, or null in --json) and the exit status is 1.
    """
    pipelines = load_pipelines(target)

    async def go() -> None:
        # Inside `run`, so a bad FLOWLINE_* value is a one-line error like any other.
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        async with StatusReader(pipelines, settings) as reader:
            if not watch:
                doc = await reader.read()
                if as_json:
                    click.echo(json.dumps(doc, indent=2))
                else:
                    Console().print(render(doc))
                if any(v not in ("ok", "not used") for v in doc["servers"].values()):
                    raise SystemExit(1)  # reported above; scripts can tell it from the code
                return
            if as_json:
                while True:  # one document per line, for scripts that follow it
                    click.echo(json.dumps(await reader.read()))
                    await asyncio.sleep(interval)
            with Live(render(await reader.read()), auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(interval)
                    live.update(render(await reader.read()), refresh=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --watch; that is no error
        run(go)


def render(doc: dict[str, Any]) -> Group:
    """The status document as rich tables: servers, then each pipeline, then processes."""
    parts: list[Any] = []
    servers = Text("servers: ")
    for name, state in doc["servers"].items():
        servers.append(f"{name} ", style="bold")
        ok = state in ("ok", "not used")
        servers.append(state, style="green" if ok else "red")
        servers.append("   ")
    parts.append(servers)
    for p in doc["pipelines"]:
        parts.append(Text(f"\npipeline {p['name']}", style="bold cyan"))
        if p["streams"]:
            table = _table("subject", "stream", "stored", "pending", "ack pending", "redelivered",
                          "last acked", title="stream", title_justify="left")  # fmt: skip
            for s in p["streams"]:
                table.add_row(
                    s["subject"], _v(s["stream"]), _v(s["messages"]), _v(s["pending"]),
                    _v(s["ack_pending"]), _v(s["redelivered"]), _v(s["last_acked"]),
                )  # fmt: skip
            parts.append(table)
        if p["crons"]:
            table = _table("topic", "schedule", "last fired", "next tick", title="cron",
                          title_justify="left")  # fmt: skip
            for c in p["crons"]:
                table.add_row(
                    c["topic"], f"{c['schedule']} ({c['tz']})", _when(c["last_fired"]),
                    _when(c["next_tick"]),
                )  # fmt: skip
            parts.append(table)
        table = _table("queue", "topics", "ready", "running", "delayed", "dead", "done/1m",
                      "failed/1m", "jobs/s", title="queues", title_justify="left")  # fmt: skip
        for q in p["queues"]:
            name = f"{q['name']} [yellow](paused)[/]" if q.get("paused") else q["name"]
            table.add_row(
                name, ", ".join(q["topics"]), _v(q["ready"]), _v(q["running"]),
                _v(q["delayed"]), _v(q["dead"], bad=True), _v(q["completed_1m"]),
                _v(q["failed_1m"], bad=True), _v(q["jobs_per_s"]),
            )  # fmt: skip
        parts.append(table)
    table = _table("host", "pid", "version", "runs", "running", "completed", "failed",
                  "up since", "seen", title="processes online", title_justify="left")  # fmt: skip
    now = time.time()
    for proc in doc["processes"]:
        table.add_row(
            proc["host"], str(proc["pid"]), proc["version"], ", ".join(proc["parts"]),
            str(proc["running"]), str(proc["completed"]), str(proc["failed"]),
            _when(proc["started"]), f"{now - proc['heartbeat']:.0f}s ago",
        )  # fmt: skip
    if not doc["processes"]:
        table.caption = "no flowline process is running"
    parts.append(Text(""))
    parts.append(table)
    return Group(*parts)


def _table(*columns: str, **options: Any) -> Table:
    # Light borders: a status fits an 80-column terminal without truncating names.
    return Table(*columns, box=box.SIMPLE_HEAD, pad_edge=False, **options)


def _v(value: Any, *, bad: bool = False) -> Text:
    if value is None:
        return Text("?", style="yellow")
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return Text(text, style="red" if bad and value else "")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
