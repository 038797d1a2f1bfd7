"""The shape of the source tree: the import graph of every module under ``src/splitpriv`` has no cycle, every import
runs down the one layer table below, and modules stay small.

The graph counts every ``import`` statement, at module level or inside a function (a deferred import is still a
dependency), and resolves ``from package import name`` to the submodule ``name`` when there is one.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "splitpriv"

# Bottom to top. A module may import its own unit and the units of lower rows; units of one row never import each
# other. "__init__" is the package's own module (version, the three public names).
LAYERS: list[tuple[str, ...]] = [
    ("registry", "seeding", "metrics", "batching", "data", "_moved"),  # foundations: no model, no party
    ("models", "privacy"),  # model families; mechanisms and privatizers
    ("parts",),  # the split's pieces
    ("tuning", "candidates", "tasks", "__init__"),  # what trains the top; the k = 0 kernel; task entries
    ("contract", "provenance"),  # sessions, messages, limits, errors: what the parties agree on
    ("config",),
    ("roles",),  # customer and vendor: the contract and a transport interface, never HTTP
    ("transport",),  # in-process and HTTP transports to a vendor
    ("service", "simulation"),  # the vendor over HTTP; the customer played on public text
    ("runs", "attacks"),  # a run end to end; what the vendor can infer from the wire
    ("audit", "experiments"),
    ("cli",),
]
# Third-party packages a unit must not import, on top of the table: only the service knows HTTP.
FORBIDDEN = {unit: ("fastapi", "starlette", "uvicorn") for row in LAYERS for unit in row if unit != "service"}
FORBIDDEN.update({unit: FORBIDDEN[unit] + ("httpx",) for unit in
                  ("models", "privacy", "parts", "tuning", "candidates", "tasks", "roles")})


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = ["splitpriv", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str) -> str | None:
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@lru_cache(maxsize=None)
def imports(module: str) -> tuple[set[str], set[str]]:
    """``(splitpriv modules, other top-level packages)`` that ``module`` imports."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    own, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "splitpriv":
                other.add(target.split(".")[0])
            elif (resolved := _resolve(target)) and resolved != module:
                own.add(resolved)
    return own, other


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rank(name: str) -> int:
    for i, row in enumerate(LAYERS):
        if name in row:
            return i
    raise AssertionError(f"{name} is in no row of LAYERS: place it in tests/test_architecture.py")


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph = {m: sorted(imports(m)[0]) for m in modules()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter[0]
                counter[0] += 1
                stack.append(node)
                on.add(node)
            for j in range(i, len(graph[node])):
                nxt = graph[node][j]
                if nxt not in index:
                    work += [(node, j + 1), (nxt, 0)]
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
    return out


def test_the_graph_covers_every_module():
    assert len(modules()) > 100 and "splitpriv.parts.split" in modules()
    for module in modules():
        rank(unit(module))


def test_no_import_cycle_between_any_two_modules():
    assert cycles() == []


def test_imports_run_down_the_layer_table():
    bad = []
    for module in modules():
        here = unit(module)
        for target in imports(module)[0]:
            there = unit(target)
            if there != here and (rank(there) > rank(here) or rank(there) == rank(here)):
                bad.append(f"{module} -> {target}")
    assert bad == []


def test_third_party_imports_stay_in_their_layer():
    bad = {m: sorted(imports(m)[1] & set(FORBIDDEN.get(unit(m), ()))) for m in modules()}
    assert {m: v for m, v in bad.items() if v} == {}


def test_attacks_see_the_wire_not_the_parties():
    """No attack imports a role or the in-process transport; only the evaluator (which plays the customer on public
    text) reaches the simulation harness."""
    for module in (m for m in modules() if unit(m) == "attacks"):
        own = imports(module)[0]
        assert not {t for t in own if unit(t) == "roles" or t == "splitpriv.transport.inprocess"}, module
        if module != "splitpriv.attacks.evaluation":
            assert "splitpriv.simulation" not in own, module


def test_nothing_in_the_repository_imports_a_moved_path():
    """Old module paths (splitpriv/_moved.py) are for users' code; ours imports the new ones."""
    from splitpriv._moved import MOVED

    old = {}
    for folder in ("src", "tests", "benchmarks", "scripts"):
        for path in (SRC.parents[1] / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                hits = [n for n in names if any(n == m or n.startswith(m + ".") for m in MOVED)]
                if hits:
                    old.setdefault(str(path.relative_to(SRC.parents[1])), []).extend(hits)
    assert old == {}


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    graph = {"splitpriv.a": {"splitpriv.b"}, "splitpriv.b": {"splitpriv.a"}, "splitpriv.c": set()}
    monkeypatch.setattr(__import__(__name__), "modules", lambda: dict.fromkeys(graph, tmp_path))
    monkeypatch.setattr(__import__(__name__), "imports", lambda m: (graph[m], set()))
    assert cycles() == [["splitpriv.a", "splitpriv.b"]]


@pytest.mark.parametrize("limit", [420])
def test_modules_stay_small(limit):
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in modules().values()}
    assert {k: v for k, v in sizes.items() if v > limit} == {}


# Functions whose body is allowed past the limit for now, each with why (remove an entry when its function shrinks).
LONG_FUNCTIONS = {"experiments/report.py::write_report": "being rewritten with the report (another branch)"}


def test_functions_stay_short():
    """Bodies (signature and docstring aside) of at most 80 lines: a longer one is several functions."""
    long = {}
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
                body = body[1:]
            name = f"{path.relative_to(SRC).as_posix()}::{node.name}"
            if node.end_lineno - body[0].lineno + 1 > 80 and name not in LONG_FUNCTIONS:
                long[name] = node.end_lineno - body[0].lineno + 1
    assert long == {}


@pytest.mark.parametrize("old, name", [("splitpriv.split", "split_model"), ("splitpriv.protocol", "SessionConfig"),
                                       ("splitpriv.run", "RunConfig"), ("splitpriv.roles.session", "VendorSession")])
def test_an_old_path_still_imports_with_a_warning(old, name, monkeypatch):
    import importlib
    import sys

    from splitpriv._moved import MOVED

    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=MOVED[old]):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(MOVED[old]), name)
