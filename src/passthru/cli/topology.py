"""``passthru topology``: the host's PCI tree (NUMA node -> root bus -> ports and switches -> devices) as a text tree,
``--json``, or a picture (``--svg FILE``, ``--html FILE``). The document is service/topology.py's, the pictures
service/topology_svg.py's; here they are printed or written."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, Optional

import typer

from ..errors import UsageError
from ..service.session import Session
from .output import console

__all__ = ["topology"]

_VERDICT_STYLE = {"viable": "green", "not viable": "red", "bridges only": "dim"}


def topology(
    ctx: typer.Context,
    svg: Annotated[Optional[str], typer.Option("--svg", metavar="FILE",
                                               help="Write the picture as SVG to FILE ('-': standard output).")] = None,
    html: Annotated[Optional[str], typer.Option("--html", metavar="FILE",
                                                help="Write a self-contained HTML page (the picture and a legend) to "
                                                     "FILE ('-': standard output).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tree as JSON (docs/json.md).")] = False,
) -> None:
    """The PCI topology: NUMA nodes, root buses, ports and switches, devices, each with its kind, driver, IOMMU
    group (viable or not) and the VM that holds it. A text tree by default, or a picture.

    Examples: `passthru topology`, `passthru topology --html topology.html`, `passthru topology --svg - > t.svg`,
    `passthru topology --json`.
    """
    from ..service.listings import emit_json
    from ..service.topology import topology_doc

    if svg == "-" and html == "-":
        raise UsageError("--svg - and --html - both ask for standard output; write one of them to a file")
    if as_json and "-" in (svg, html):
        raise UsageError("--json prints to standard output already; write the picture to a file")
    targets = [(opt, path) for opt, path in (("--svg", svg), ("--html", html)) if path is not None]
    for opt, path in targets:
        _check_writable(opt, path)
    c: Session = ctx.obj
    doc = topology_doc(c)
    if as_json:
        emit_json(doc)
    if targets:
        from ..service.topology_svg import topology_html, topology_svg

        picture = topology_svg(doc)
        for opt, path in targets:
            data = picture if opt == "--svg" else topology_html(doc, svg=picture)
            if path == "-":
                sys.stdout.write(data)
            else:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(data)
                if not as_json and "-" not in (svg, html):
                    print(f"wrote {path}: {_summary(doc)}")
        return
    if not as_json:
        _print_tree(doc)


def _check_writable(opt: str, path: str) -> None:
    """Bad output paths are usage errors, found before the host is read."""
    if path == "-":
        return
    if not path:
        raise UsageError(f"{opt} needs a file name (or '-' for standard output)")
    if os.path.isdir(path):
        raise UsageError(f"{opt} {path}: is a directory; name a file in it")
    where = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(where):
        raise UsageError(f"{opt} {path}: directory {where} does not exist; create it or write elsewhere")
    if not os.access(where, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{opt} {path}: not writable; choose another file")


def _summary(doc: dict[str, Any]) -> str:
    from ..service.topology_svg import verdict

    counts = {"viable": 0, "not viable": 0, "bridges only": 0}
    for g in doc["groups"]:
        counts[verdict(g)] += 1
    if not doc["iommu"]["enabled"]:
        return f"{doc['functions']} PCI functions, no IOMMU groups"
    return (f"{doc['functions']} PCI functions, {len(doc['groups'])} IOMMU groups: {counts['viable']} viable, "
            f"{counts['not viable']} not viable, {counts['bridges only']} bridges only")


def _print_tree(doc: dict[str, Any]) -> None:
    """NUMA node -> root bus -> functions under their bridges; each line whole or cut with an ellipsis at the
    output's width (never wrapped: the tree stays a tree at 80 columns)."""
    from rich.text import Text
    from rich.tree import Tree

    from ..service.topology_svg import verdict

    groups = {g["number"]: g for g in doc["groups"]}
    con = console()
    if not doc["iommu"]["enabled"]:
        con.print(f"[yellow]! {doc['iommu']['message']}[/yellow]")

    def line(f: dict[str, Any]) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        bridge = f["type"] != "endpoint"
        t.append(f["address"], style="dim" if bridge else "bold")
        if bridge:
            t.append(f"  {f['type']}", style="dim")
        else:
            role = f" {f['role']}" if f["role"] and f["role"] not in ("plain", "display") else ""
            t.append(f"  {f['kind'] + role:<13}")
            t.append(f"  {(f['driver'] or 'free'):<10}", style={"host": "yellow", "vfio": "cyan"}.get(f["use"], ""))
        g = groups.get(f["iommu_group"]) if f["iommu_group"] is not None else None
        if g is not None:
            word = verdict(g)
            t.append(f"  group {g['number']}" + ("" if bridge else f" {word}"), style=_VERDICT_STYLE[word])
        if f["vm"]:
            t.append(f"  \u2192 {f['vm']}", style="bold magenta")
        if not bridge and f["name"]:
            t.append(f"  {f['name']}", style="dim")
        return t

    for n in doc["nodes"]:
        top = Tree(Text("no NUMA node" if n["numa_node"] < 0 else f"NUMA node {n['numa_node']}", style="bold"),
                   guide_style="dim")
        for r in n["roots"]:
            branch = top.add(Text(f"root bus {r['bus']}", style="bold"))
            stack = [(branch, c) for c in reversed(r["children"])]
            while stack:
                parent, f = stack.pop()
                here = parent.add(line(f))
                stack.extend((here, c) for c in reversed(f["children"]))
        con.print(top)
    con.print(_summary(doc))
