"""``flowline dev``: run a target on throwaway local servers and watch its jobs run.

It starts a nats-server and a redis-server of its own (`flowline.servers.LocalServers`: the
embedded default), prints their URLs so other terminals can publish to them, runs every part of
the target, and shows each job as it starts, progresses and ends: rich progress bars in a
terminal, one line per change otherwise. Ctrl-C stops the workers (jobs in flight finish) and
then the servers, whose data goes with them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .. import _logging
from .._events import Event
from .._pipeline import Pipeline
from .._settings import Settings
from ..runtime.runner import Runner
from ..servers import LocalServers
from ._common import load_pipelines, run
from ._main import main


@main.command()
@click.argument("target")
def dev(target: str) -> None:
    """Run the pipeline(s) at TARGET on throwaway local servers, showing jobs as they run.

    Publish from another terminal with the URLs it prints, for example:
    FLOWLINE_NATS_URL=... flowline publish TARGET --json '{...}'
    """
    pipelines = load_pipelines(target)  # a bad target fails before any server starts
    _logging.configure(level="ERROR")  # what a job does is shown below; crashes still log
    console = Console(highlight=False, soft_wrap=True)
    with LocalServers() as servers:
        console.print(f"nats   {servers.nats_url}")
        console.print(f"redis  {servers.redis_url}")
        env = " ".join(f"{k}={v}" for k, v in servers.env().items())
        console.print(f"in another terminal: export {env}")

        async def go() -> None:
            settings = Settings.from_env(nats_url=servers.nats_url, redis_url=servers.redis_url)
            with JobView(console, pipelines):
                await Runner(pipelines, settings).serve()

        run(go)
    console.print("stopped; the servers and their data are gone")


class JobView:
    """Shows the jobs of `pipelines` from their buses: bars in a terminal, else lines."""

    def __init__(self, console: Console, pipelines: Sequence[Pipeline]) -> None:
        self.console = console
        self.pipelines = pipelines
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, tuple[TaskID | None, float]] = {}
        # Bound once: `off` removes a listener by identity.
        self.listeners: dict[str, Any] = {
            "job:start": self.started,
            "job:progress": self.progressed,
            "job:complete": self.completed,
            "job:retry": self.retried,
            "job:failed": self.failed,
        }

    def __enter__(self) -> JobView:
        for p in self.pipelines:
            for name, listener in self.listeners.items():
                p.bus.on(name, listener)
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()
        for p in self.pipelines:
            for name, listener in self.listeners.items():
                p.bus.off(name, listener)

    def _say(self, text: str) -> None:
        (self.progress.console if self.live else self.console).print(text)

    def started(self, event: Event) -> None:
        job = event.data["job"]
        task = self.progress.add_task(f"{job.topic} {job.id}", total=100) if self.live else None
        self.tasks[job.id] = (task, time.monotonic())
        if not self.live:
            self._say(f"started    {job.topic} {job.id} (attempt {job.attempt})")

    def progressed(self, event: Event) -> None:
        job, percent = event.data["job"], event.data["progress"]
        task, _ = self.tasks.get(job.id, (None, 0.0))
        if task is not None:
            self.progress.update(task, completed=percent)
        elif not self.live:
            self._say(f"progress   {job.topic} {job.id} {percent:g}%")

    def _end(self, job_id: str) -> str:
        task, began = self.tasks.pop(job_id, (None, time.monotonic()))
        if task is not None:
            self.progress.remove_task(task)
        return f"{(time.monotonic() - began) * 1000:.0f} ms"

    def completed(self, event: Event) -> None:
        d = event.data
        took = self._end(d["id"])
        self._say(f"[green]completed[/]  {d['topic']} {d['id']} in {took}: {d['result']!r}")

    def retried(self, event: Event) -> None:
        d = event.data
        self._end(d["id"])
        job = d["job"]
        self._say(
            f"[yellow]retry[/]      {job.topic} {d['id']} in {d['delay']:.2f} s: {d['error']}"
        )

    def failed(self, event: Event) -> None:
        d = event.data
        self._end(d["id"])
        self._say(f"[red]failed[/]     {d['job'].topic} {d['id']}: {d['error']}")
