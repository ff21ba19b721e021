"""The topology document (service/topology.py) as a picture: an SVG drawn with drawsvg, and a self-contained HTML
page (the SVG, a legend, the groups that cannot be passed through with their reasons). No I/O here: the CLI writes
the files, the agent serves the page.

Layout: one column per NUMA node; in it one box per root bus; in a box one row per PCI function, indented under
its upstream bridge (root port, switch, downstream port). Every IOMMU group is a frame around its rows (one frame
per run of consecutive rows, all in one ``<g class="iommu-group" data-group="N">``), coloured by viability: green
viable, red not viable (an endpoint on a host driver), grey bridges only. Each endpoint row shows its address,
kind, name, a driver badge (orange: a host driver, blue: vfio, grey: free) and the VM that holds it. Text is
monospace, so widths follow from character counts and the drawing is the same on every machine (the docs commit
one and a test compares it).
"""

from __future__ import annotations

import html

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from .topology import walk

__all__ = ["topology_svg", "topology_html", "COLOURS"]

FONT = 12
CHAR = 7.25  # advance of a 12 px monospace character (DejaVu Sans Mono, Liberation Mono: 7.2)
ROW = 20
INDENT = 16
PAD = 12
HEAD = 24  # a root bus box's title row
NAME_CHARS = 34
BADGE_CHARS = 13
VM_CHARS = 12
LABEL_CHARS = 9  # "group 123"
COLOURS = {
    "viable": "#2e7d32", "not viable": "#c62828", "bridges only": "#9e9e9e",  # group frames
    "host": "#e65100", "vfio": "#1565c0", "free": "#757575",  # driver badges
}
_TINT = {"viable": "#e8f5e9", "not viable": "#ffebee", "bridges only": "#f5f5f5"}


def _fit(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def verdict(g: dict[str, Any]) -> str:
    if not g["endpoints"]:
        return "bridges only"
    return "viable" if g["viable"] else "not viable"


def _label(f: dict[str, Any]) -> str:
    if f["type"] == "endpoint":
        return f"{f['kind']}" + (f" {f['role']}" if f["role"] and f["role"] not in ("plain", "display") else "")
    return f["type"]


def topology_svg(doc: dict[str, Any]) -> str:
    """The SVG document (a string) for a topology document."""
    import drawsvg as dw

    groups = {g["number"]: g for g in doc["groups"]}
    rows: dict[int, list] = {}  # numa node -> [(bus, depth, function)]
    depth_max = 0
    for numa, bus, depth, f in walk(doc):
        rows.setdefault(numa, []).append((bus, depth, f))
        depth_max = max(depth_max, depth)
    text_w = round(depth_max * INDENT + (12 + 2 + 16 + 2 + NAME_CHARS) * CHAR)
    col_w = text_w + round((BADGE_CHARS + 2 + VM_CHARS + 2 + LABEL_CHARS) * CHAR) + 3 * PAD
    legend_h = 56
    heights = []
    for n in doc["nodes"]:
        heights.append(sum(HEAD + PAD + ROW * _count(r) for r in n["roots"]) + PAD * len(n["roots"]) + HEAD + PAD)
    width = max(1, len(doc["nodes"])) * (col_w + PAD) + PAD
    height = legend_h + max(heights, default=HEAD) + PAD
    d = dw.Drawing(width, height, font_family="DejaVu Sans Mono, Liberation Mono, monospace", font_size=FONT)
    d.append(dw.Rectangle(0, 0, width, height, fill="white"))
    _legend(d, dw, doc)
    for i, n in enumerate(doc["nodes"]):
        x = PAD + i * (col_w + PAD)
        y = legend_h
        title = "no NUMA node" if n["numa_node"] < 0 else f"NUMA node {n['numa_node']}"
        d.append(dw.Text(title, 15, x, y + 16, font_weight="bold", class_="numa-node"))
        y += HEAD + PAD // 2
        by_bus: dict[str, list] = {}
        for bus, depth, f in rows.get(n["numa_node"], []):
            by_bus.setdefault(bus, []).append((depth, f))
        for r in n["roots"]:
            fns = by_bus.get(r["bus"], [])
            box_h = HEAD + ROW * len(fns) + PAD // 2
            box = dw.Group(class_="root-bus", data_bus=r["bus"])
            box.append(dw.Rectangle(x, y, col_w, box_h, rx=6, fill="#fafafa", stroke="#607d8b"))
            box.append(dw.Text(f"root bus {r['bus']}", FONT, x + PAD, y + 16, font_weight="bold", fill="#37474f"))
            d.append(box)
            top = y + HEAD
            _frames(d, dw, fns, groups, x, top, col_w)
            for k, (depth, f) in enumerate(fns):
                _row(d, dw, f, x + PAD + depth * INDENT, top + k * ROW, x + text_w + PAD)
            y += box_h + PAD
    return d.as_svg(header="")


def _count(root: dict[str, Any]) -> int:
    n, stack = 0, list(root["children"])
    while stack:
        f = stack.pop()
        n += 1
        stack.extend(f["children"])
    return n


def _legend(d: Any, dw: Any, doc: dict[str, Any]) -> None:
    gs = doc["groups"]
    viable = sum(1 for g in gs if g["endpoints"] and g["viable"])
    head = (f"{doc['functions']} PCI functions, {len(gs)} IOMMU groups ({viable} viable)" if doc["iommu"]["enabled"]
            else f"{doc['functions']} PCI functions; {doc['iommu']['message']}")
    d.append(dw.Text(head, 14, PAD, 20, font_weight="bold", class_="summary"))
    x = PAD
    legend = dw.Group(class_="legend")
    for word in ("viable", "not viable", "bridges only"):
        legend.append(dw.Rectangle(x, 32, 26, 14, fill=_TINT[word], stroke=COLOURS[word], stroke_width=2, rx=3))
        legend.append(dw.Text(f"group {word}", FONT, x + 32, 44))
        x += 32 + round((len(word) + 8) * CHAR)
    for use, word in (("host", "host driver"), ("vfio", "vfio"), ("free", "no driver")):
        legend.append(dw.Rectangle(x, 32, 26, 14, fill=COLOURS[use], rx=3))
        legend.append(dw.Text(word, FONT, x + 32, 44))
        x += 32 + round((len(word) + 2) * CHAR)
    d.append(legend)


def _frames(d: Any, dw: Any, fns: list, groups: dict[int, dict], x: float, top: float, col_w: float) -> None:
    """One frame per run of consecutive rows in one IOMMU group, from the run's least indented row to the right."""
    runs: dict[int, list] = {}
    k = 0
    while k < len(fns):
        g = fns[k][1]["iommu_group"]
        end = k
        while end + 1 < len(fns) and fns[end + 1][1]["iommu_group"] == g:
            end += 1
        if g is not None:
            runs.setdefault(g, []).append((k, end, min(depth for depth, _ in fns[k:end + 1])))
        k = end + 1
    for number, spans in runs.items():
        g = groups.get(number)
        word = verdict(g) if g else "bridges only"
        why = f"IOMMU group {number}: {g['reason'] if g else word}"
        for first, last, depth in spans:
            fx = x + PAD // 2 + depth * INDENT
            frame = dw.Rectangle(fx, top + first * ROW + 1, x + col_w - PAD // 2 - fx, (last - first + 1) * ROW - 2,
                                 rx=4, fill=_TINT[word], stroke=COLOURS[word], stroke_width=1.5,
                                 class_="iommu-group", data_group=number, data_verdict=word)
            frame.append_title(why)
            d.append(frame)
            d.append(dw.Text(f"group {number}", 11, x + col_w - PAD, top + first * ROW + 14, text_anchor="end",
                             fill=COLOURS[word]))


def _row(d: Any, dw: Any, f: dict[str, Any], x: float, y: float, badge_x: float) -> None:
    """One text element per function (monospace: the columns are runs of spaces), a driver badge and the VM."""
    base = y + 14
    name = f["name"] or "-"
    bridge = f["type"] != "endpoint"
    line = f"{f['address']:<13} {_fit(_label(f), 16):<17} {_fit(name, NAME_CHARS)}"
    t = dw.Text(line, FONT, x, base, fill="#546e7a" if bridge else "#000000", xml__space="preserve",
                class_="function", data_address=f["address"], data_type=f["type"])
    if not bridge:
        t.append_title(f"{f['address']} {f['ids']} {name}; driver {f['driver'] or 'none'}"
                       + (f"; held by {f['vm']}" if f["vm"] else "") + "".join(f"; {n}" for n in f["notes"]))
    d.append(t)
    if bridge:
        return
    use = f["use"]
    w = round(BADGE_CHARS * CHAR)
    d.append(dw.Rectangle(badge_x, y + 3, w, ROW - 6, rx=3, fill=COLOURS[use]))
    d.append(dw.Text(_fit(f["driver"] if use != "free" else "free", BADGE_CHARS - 1), FONT - 1, badge_x + w / 2,
                     base - 1, fill="white", text_anchor="middle", class_="driver"))
    if f["vm"]:
        d.append(dw.Text("\u2192 " + _fit(f["vm"], VM_CHARS - 2), FONT, badge_x + w + round(CHAR), base,
                         fill="#4a148c", font_weight="bold", class_="vm"))


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #212121; }
h1 { font-size: 1.3em; margin: 0 0 .3em 0; }
.legend span.sw { display: inline-block; width: 1.6em; height: .9em; border-radius: 3px; vertical-align: middle;
  margin: 0 .3em 0 1em; border: 2px solid transparent; }
.picture { overflow: auto; border: 1px solid #cfd8dc; margin-top: .8em; }
table { border-collapse: collapse; margin-top: 1em; } td, th { padding: .2em .8em; text-align: left; }
th { border-bottom: 1px solid #90a4ae; }
"""

# the agent's page: asks /health for the snapshot generation every few seconds; reloads when the host changed
_LIVE = """
(function () {
  var seen = %d;
  function poll() {
    fetch("/health", {cache: "no-store"}).then(function (r) { return r.ok ? r.json() : null; })
      .then(function (h) { if (h && h.generation !== seen) { location.reload(); } })
      .catch(function () {}).then(function () { setTimeout(poll, %d); });
  }
  setTimeout(poll, %d);
})();
"""


def topology_html(doc: dict[str, Any], *, svg: str | None = None, generation: int | None = None,
                  poll_ms: int = 3000) -> str:
    """A self-contained page: heading, legend, the SVG inline, and the groups that cannot be passed through.
    ``generation``: the agent's snapshot; the page then reloads itself when the host changes (udev or a write)."""
    e = html.escape
    svg = topology_svg(doc) if svg is None else svg
    gs = doc["groups"]
    blocked = [g for g in gs if g["endpoints"] and not g["viable"]]
    sw = []
    for word in ("viable", "not viable", "bridges only"):
        sw.append(f'<span class="sw" style="background:{_TINT[word]};border-color:{COLOURS[word]}"></span>'
                  f"IOMMU group {e(word)}")
    for use, word in (("host", "driven by a host driver"), ("vfio", "on vfio (ready for a VM)"),
                      ("free", "no driver")):
        sw.append(f'<span class="sw" style="background:{COLOURS[use]}"></span>{e(word)}')
    out = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
           '<link rel="icon" href="data:,">\n<title>passthru topology</title>\n',
           f"<style>{_CSS}</style>\n</head>\n",
           "<body>\n" if generation is None else f'<body data-generation="{generation}">\n',
           "<h1>passthru topology</h1>\n",
           f'<p class="summary">{doc["functions"]} PCI functions, {len(gs)} IOMMU groups: '
           f"{sum(verdict(g) == 'viable' for g in gs)} viable, {len(blocked)} not viable, "
           f"{sum(verdict(g) == 'bridges only' for g in gs)} bridges only"
           + ("" if doc["iommu"]["enabled"] else f"; {e(doc['iommu']['message'])}") + "</p>\n",
           f'<p class="legend">{"".join(sw)}; <b>\u2192 vm</b> the VM that holds a device. Hover over a row or '
           "a frame for details.</p>\n",
           f'<div class="picture">\n{svg}</div>\n']
    if blocked:
        out.append('<table class="blocked">\n<tr><th>group</th><th>why it cannot be passed through</th></tr>\n')
        out.extend(f"<tr><td>{g['number']}</td><td>{e(g['reason'])}</td></tr>\n" for g in blocked)
        out.append("</table>\n")
    if generation is not None:
        out.append(f"<script>{_LIVE % (generation, poll_ms, poll_ms)}</script>\n")
    out.append("</body>\n</html>\n")
    return "".join(out)
