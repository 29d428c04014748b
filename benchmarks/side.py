"""One measured side in a fresh process, so no side inherits another's garbage or loop state.

The parent calls `run`, or starts a `Running` side when it must act while it runs; the child is
``python -m benchmarks.side FIGURE SIDE PARAMS_JSON``: it imports ``benchmarks.FIGURE``, awaits
``SIDES[SIDE](**params)`` and prints the result as the last line of stdout. A side that must be
ready before the parent goes on (the latency figure's publisher waits for it) prints
``{"ready": true}`` first. A side that logs as production does gets ``stderr=PATH``: its
process's stderr (fd 2, where `flowline._logging` writes) goes to that file, not the terminal,
and the parent reads the file after the process has exited, so every line is on disk.
"""

from __future__ import annotations

import asyncio
import cProfile
import importlib
import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

# Set by the parent with --profile: the child runs under cProfile and writes stats there.
PROFILE_ENV = "FLOWLINE_BENCH_PROFILE"


class SideFailed(RuntimeError):
    """Raised when a side's process exits non-zero or prints no result."""


def ready() -> None:
    """Tell the parent this side is connected and consuming."""
    print(json.dumps({"ready": True}), flush=True)


class Running:
    """A side's process, started and not yet finished."""

    def __init__(
        self,
        figure: str,
        side: str,
        params: dict[str, Any],
        profile: str | None = None,
        stderr: Path | None = None,
    ) -> None:
        self.name = f"{figure}/{side}"
        self.stderr = stderr
        env = dict(os.environ)
        env.pop(PROFILE_ENV, None)
        if profile:
            env[PROFILE_ENV] = profile
        self._err: IO[bytes] | None = stderr.open("wb") if stderr is not None else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.side", figure, side, json.dumps(params)],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=env,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the side printed its ready line."""
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        if not line or json.loads(line) != {"ready": True}:
            self.proc.kill()
            self.proc.wait()
            raise SideFailed(f"{self.name} did not get ready (printed {line!r}){self._tail()}")

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the side to finish and return what it printed last."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise SideFailed(
                f"{self.name} ran past {timeout:g} s and was killed{self._tail()}"
            ) from None
        lines = out.strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            where = self._tail() or "; see stderr above"
            raise SideFailed(f"{self.name} exited with {self.proc.returncode}{where}")
        return json.loads(lines[-1])  # type: ignore[no-any-return]

    def kill(self) -> None:
        """Make sure the process is gone (it may still run after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._err is not None:
            self._err.close()

    def _tail(self, lines: int = 20) -> str:
        """The end of the side's stderr file, for an error message (it is not on the terminal)."""
        if self.stderr is None:
            return ""
        text = self.stderr.read_text(errors="replace").splitlines()[-lines:]
        return f"; the end of its stderr ({self.stderr}):\n" + "\n".join(text)


def run(
    figure: str,
    side: str,
    params: dict[str, Any],
    *,
    timeout: float,
    profile: str | None = None,
    stderr: Path | None = None,
) -> dict[str, Any]:
    """Run one side to completion in a fresh interpreter; returns its result."""
    running = Running(figure, side, params, profile, stderr)
    try:
        return running.result(timeout)
    finally:
        running.kill()


def main() -> None:
    figure, side, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    from flowline import _logging

    # Quiet: only warnings reach stderr, and nothing but results reaches stdout. flowline's
    # sides configure logging again, as production would (`common.observe`).
    _logging.configure(level="WARNING")
    module = importlib.import_module(f"benchmarks.{figure}")
    fn = module.SIDES[side]
    profile = os.environ.get(PROFILE_ENV)
    if profile:
        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, fn(**params))
        profiler.dump_stats(profile)
    else:
        result = asyncio.run(fn(**params))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
