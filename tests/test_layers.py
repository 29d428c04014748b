"""The arrows point one way: no import circle in the package, and the describe layer never
imports the runtime (it reaches it through `flowline._binding`'s protocols).

Imports are read from the source (every ``import`` statement, inside functions too, but not
under ``if TYPE_CHECKING:``), so a function-local import counts as the dependency it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "flowline"
# Describing pipelines: what `Stream >> Route >> Queue` and `pipeline.dequeue` need.
DESCRIBE = {
    "flowline._binding",
    "flowline._diagram",
    "flowline._events",
    "flowline._pipeline",
    "flowline._settings",
    "flowline._stages",
    "flowline.errors",
}
RUNS = ("flowline.runtime", "flowline.cli", "flowline.dashboard", "flowline.observability")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports at run time."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
                full = ".".join(p for p in (base, node.module or "") if p)
                subs = {f"{full}.{a.name}" for a in node.names} & known.keys()
                out.update(subs if len(subs) == len(node.names) else {full, *subs})
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in known)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit(inner)

    visit(ast.parse(path.read_text()).body)
    return (out & known.keys()) - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert circles(graph()) == []


def test_the_describe_layer_imports_nothing_that_runs() -> None:
    g = graph()
    assert g.keys() >= DESCRIBE
    leaks = {m: sorted(i for i in g[m] if i.startswith(RUNS)) for m in DESCRIBE}
    assert {m: i for m, i in leaks.items() if i} == {}


def test_the_checks_see_a_circle_and_a_leak() -> None:
    """The two tests above can fail: a made-up graph with both is caught."""
    g = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert circles(g) == [["a", "b"]]
    assert imports("flowline._pipeline", PACKAGE / "_pipeline.py", modules()) >= {
        "flowline._binding",
        "flowline._stages",
    }
