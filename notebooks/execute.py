"""Execute every notebook in notebooks/ and check that each printed what it promises.

    python notebooks/execute.py [NAME.ipynb ...]

Each notebook runs top to bottom in a fresh python3 kernel of this interpreter, with notebooks/
as its working directory. The run fails if a cell raises, if a notebook's output lacks the lines
listed for it in `EXPECTED` (a notebook that silently did nothing must not pass), or if a
notebook is committed with outputs (they bloat diffs).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

HERE = Path(__file__).resolve().parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # IPython colours tracebacks; CI logs want plain text
CELL_TIMEOUT = 120  # seconds; the slowest cell waits for jobs with its own, shorter timeout

# Lines each notebook must print; a notebook missing here fails, so new ones get checks too.
EXPECTED: dict[str, tuple[str, ...]] = {
    "fanbase.ipynb": (
        "flowchart LR",
        "in memory: fanbase:1:1  notify-talent-following  attempt 2 -> nina@example.com",
        "retried: ['notify-talent-following']; dead letters: 0",
        "published #5: fan-2 followed talent-2",
        "all 9 notifications sent",
        "fanbase:5:1  notify-talent-following  #################### 100%",
        "dead letters: 0",
        "stopped",
    ),
}


class NotebookFailed(Exception):
    """Raised when a notebook is committed with outputs or does not print what it promises."""


def kernel_specs(directory: Path) -> KernelSpecManager:
    """A kernelspec manager that knows one kernel, python3, running this very interpreter.

    Jupyter's usual lookup searches user, environment and system directories, where a stale
    ``python3`` spec may point at another interpreter without flowline; a private spec cannot.
    """
    write_kernel_spec(directory / "python3")  # its argv starts with sys.executable
    return KernelSpecManager(kernel_dirs=[str(directory)], ensure_native_kernel=False)


def text_of(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook's code cells printed or displayed, as one string."""
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.extend(str(v) for k, v in out.data.items() if k.startswith("text/"))
    return "\n".join(parts)


def reap(pgid: int | None) -> None:
    """Stop whatever the kernel left running in its process group (servers of a failed run)."""
    if pgid is None or pgid == os.getpgrp():
        return  # never signal our own group (a kernel launched without a session of its own)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def run(path: Path, specs: KernelSpecManager) -> None:
    """Execute `path` in memory (the file is not rewritten) in notebooks/ and check its outputs."""
    nb = nbformat.read(path, as_version=4)
    stale = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    if stale:
        raise NotebookFailed(f"committed with outputs in cells {stale}: clear them first")
    expected = EXPECTED.get(path.name)
    if not expected:
        raise NotebookFailed(f"no expected output listed for it in EXPECTED in {__file__}")
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT)
    # A private TMPDIR: whatever a failed notebook leaves there (server data) is removed with it.
    with tempfile.TemporaryDirectory(prefix="flowline-notebook-") as tmp:
        pgid: int | None = None
        try:
            # cleanup_kc: shut the kernel down afterwards, which nbclient skips when given a `km`.
            with client.setup_kernel(
                cwd=str(HERE), env={**os.environ, "TMPDIR": tmp}, cleanup_kc=True
            ):
                # The kernel leads its own process group; servers a notebook starts join it.
                pgid = getattr(km.provisioner, "pgid", None)
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
        finally:
            reap(pgid)
    printed = text_of(nb)
    missing = [line for line in expected if line not in printed]
    if missing:
        raise NotebookFailed(f"ran, but never printed {missing}; it printed:\n{printed}")


def main(argv: list[str]) -> int:
    paths = [HERE / name for name in argv] if argv else sorted(HERE.glob("*.ipynb"))
    if not paths:
        print(f"no notebooks in {HERE}", file=sys.stderr)
        return 1
    failed = 0
    with tempfile.TemporaryDirectory(prefix="flowline-kernels-") as tmp:
        specs = kernel_specs(Path(tmp))
        for path in paths:
            started = time.monotonic()
            try:
                run(path, specs)
            except (
                CellExecutionError,
                CellTimeoutError,
                DeadKernelError,
                NotebookFailed,
                OSError,
                RuntimeError,  # nbclient: the kernel did not start or answer
            ) as exc:
                failed += 1
                print(
                    f"{path.name}: FAILED after {time.monotonic() - started:.1f}s\n"
                    + ANSI.sub("", str(exc)),
                    file=sys.stderr,
                )
            else:
                print(f"{path.name}: ok in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
