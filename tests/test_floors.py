"""The import structure of passthru: every module sits on one floor and imports only from its own floor or below,
and no two files import each other, directly or round a longer circle (see docs/architecture.md).

Every module is imported (``pkgutil.walk_packages``: each must import on its own), then its source is read as an
AST: every ``import`` / ``from ... import`` of a passthru module counts, at module top or inside a function, under
``TYPE_CHECKING`` or not, since a lazy import is still a dependency."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import passthru

PKG = Path(passthru.__file__).resolve().parent

# Floors, low to high, by path under src/passthru. A module matching none fails test_every_module_has_a_floor.
FLOORS: list[tuple[int, str]] = [
    # 0 facts and foundations: read-only host facts through HostRoot, errors, findings, names, state files, config
    (0, r"^host/|^(errors|findings|identity|names|statefs|config|journal|failpoints|discovery|lookup|capture)\.py$"),
    # 1 writers: every write to the kernel or a tool, one small class each (vfio binding is the model)
    (1, r"^vfio/|^writers/"),
    # 2 kinds (policy, checks, refusals), doctor and boot preparation
    (2, r"^kinds/|^doctor(_initramfs)?\.py$|^prepare/"),
    # 3 the inventory (store, claims, schema, sync, spec) and vm/ (attachments -> argv, XML, QMP)
    (3, r"^inventory/|^vm/"),
    # 4 services: the operations the faces call; JSON documents; systemd units
    (4, r"^service/|^(render|units)\.py$"),
    # 5 faces: the CLI and the agent, and their helpers
    (5, r"^cli/|^agent/|^__main__\.py$"),
    # the package's own __init__ (a docstring and __version__)
    (0, r"^__init__\.py$"),
]

def _modules() -> dict[str, str]:
    """module name -> path relative to PKG, for every module of passthru (each one imported)."""
    out = {"passthru": "__init__.py"}
    for info in pkgutil.walk_packages([str(PKG)], prefix="passthru."):
        mod = importlib.import_module(info.name)
        out[info.name] = Path(mod.__file__).resolve().relative_to(PKG).as_posix()  # type: ignore[arg-type]
    return out


MODULES = _modules()


def floor(rel: str) -> int | None:
    return next((f for f, pat in FLOORS if re.search(pat, rel)), None)


def _targets(node: ast.AST, mod: str, is_pkg: bool) -> list[str]:
    """The passthru modules (or module.attribute candidates) one import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "passthru" or a.name.startswith("passthru.")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        b = ".".join(base + ([node.module] if node.module else []))
    else:
        b = node.module or ""
        if b != "passthru" and not b.startswith("passthru."):
            return []
    return [f"{b}.{a.name}" for a in node.names] + [b]


def edges() -> dict[str, set[str]]:
    """module -> the passthru modules it imports (a name imported from a package counts as its submodule when it
    is one, else as the package)."""
    out: dict[str, set[str]] = {}
    for mod, rel in MODULES.items():
        tree = ast.parse((PKG / rel).read_text(), rel)
        deps = out.setdefault(mod, set())
        for node in ast.walk(tree):
            for t in _targets(node, mod, rel.endswith("__init__.py")):
                while t and t not in MODULES:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    deps.add(t)
                    break
    return out


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_every_module_has_a_floor():
    unplaced = sorted(rel for rel in MODULES.values() if floor(rel) is None)
    assert not unplaced, f"modules on no floor (add them to FLOORS in {Path(__file__).name}): {unplaced}"


def test_no_import_runs_up_the_floors():
    up = []
    for a, deps in edges().items():
        for b in deps:
            fa, fb = floor(MODULES[a]), floor(MODULES[b])
            if fa is not None and fb is not None and fb > fa:
                up.append(f"{MODULES[a]} (floor {fa}) -> {MODULES[b]} (floor {fb})")
    assert not up, "imports that run up the floors:\n" + "\n".join(sorted(up))


def test_no_import_circles():
    bad = [sorted(MODULES[m] for m in c) for c in circles(edges())]
    assert not bad, "import circles:\n" + "\n".join(", ".join(c) for c in bad)


def test_the_checker_sees_circles_and_relative_imports():
    """The graph code itself: a three-module circle is found, a chain is not; relative imports resolve."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    node = ast.parse("from ..host.root import HostRoot").body[0]
    assert _targets(node, "passthru.kinds.gpu", False)[-1] == "passthru.host.root"
    assert _targets(node, "passthru.kinds.vgpu", True)[-1] == "passthru.kinds.host.root"
    assert floor("kinds/vgpu/instances.py") == 2 and floor("service/assign.py") == 4 and floor("cli/entry.py") == 5 and floor("cli.py") is None
