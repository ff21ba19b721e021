"""`passthru topology` (issue 16): the tree document (NUMA node -> root bus -> ports, switches -> functions), the
text tree at 80 columns, the SVG and HTML pictures (every function drawn, every IOMMU group a frame coloured by its
verdict, the VM that holds a device), bad output paths, the agent's GET /topology, and the committed picture in
docs/topology.md being what the generator draws today."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx2
import pytest

import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru.cli import main as cli_main
from passthru.service.assign import assign
from passthru.service.listings import groups_doc
from passthru.service.session import Session
from passthru.service.topology import topology_doc, walk
from passthru.service.topology_svg import COLOURS, topology_html, topology_svg

DOCS = Path(__file__).resolve().parent.parent / "docs"
SVG_NS = "{http://www.w3.org/2000/svg}"
REGENERATE = "passthru --root <(gpu_server fixture) topology --svg docs/topology-gpu-server.svg"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def functions(doc: dict) -> dict[str, dict]:
    return {f["address"]: f for _, _, _, f in walk(doc)}


def svg_parts(svg: str) -> tuple[dict[str, set[str]], set[str]]:
    """(group number -> frame verdicts, addresses drawn) of an SVG picture."""
    tree = ET.fromstring(svg)
    frames: dict[str, set[str]] = {}
    for r in tree.iter(f"{SVG_NS}rect"):
        if r.get("class") == "iommu-group":
            frames.setdefault(r.get("data-group"), set()).add(r.get("data-verdict"))
    drawn = {t.get("data-address") for t in tree.iter(f"{SVG_NS}text") if t.get("class") == "function"}
    return frames, drawn


# -- the document -------------------------------------------------------------------------------------------------
def test_the_tree_holds_every_function_once_under_its_numa_node_and_bridge(gpu_server):
    s = Session(str(gpu_server))
    doc = topology_doc(s)
    inv = s.inventory()
    walked = [f["address"] for _, _, _, f in walk(doc)]
    assert sorted(walked) == sorted(f.address for f in inv.pci) and len(walked) == len(set(walked)) == 54
    assert [n["numa_node"] for n in doc["nodes"]] == [0, 1]
    buses = {n["numa_node"]: [r["bus"] for r in n["roots"]] for n in doc["nodes"]}
    assert buses == {0: ["0000:00", "0000:17", "0000:3a", "0000:5d"], 1: ["0000:85", "0000:ae", "0000:d7"]}
    fns = functions(doc)
    assert fns["0000:17:02.0"]["type"] == "root port"
    assert [c["address"] for c in fns["0000:17:02.0"]["children"]] == ["0000:19:00.0", "0000:19:00.1"]
    assert fns["0000:01:00.0"]["type"] == "bridge"  # the BMC's PCIe-to-PCI bridge, behind root port 00:1c.0
    assert [c["address"] for c in fns["0000:01:00.0"]["children"]] == ["0000:02:00.0"]
    gpu = fns["0000:19:00.0"]
    assert (gpu["kind"], gpu["driver"], gpu["use"], gpu["iommu_group"]) == ("gpu", "vfio-pci", "vfio", 11)
    assert (fns["0000:18:00.0"]["use"], fns["0000:3b:01.4"]["use"]) == ("host", "free")
    assert "boot VGA" in fns["0000:02:00.0"]["notes"] and "VFs 8/8" in fns["0000:3b:00.0"]["notes"]
    assert {g["number"]: g["viable"] for g in doc["groups"]} == {g["number"]: g["viable"]
                                                                  for g in groups_doc(s)["groups"]}
    assert all(f["vm"] is None for f in fns.values())


def test_switches_and_their_downstream_ports(tmp_path):
    doc = topology_doc(Session(str(fx.big_tree(tmp_path / "big", n=48))))
    fns = functions(doc)
    switches = [f for f in fns.values() if f["type"] == "switch"]
    assert switches, "big_tree has a switch every fourth root port"
    for sw in switches:
        assert [c["type"] for c in sw["children"]] == ["downstream port", "downstream port"]
        assert all(c["children"][0]["kind"] == "nvme" for c in sw["children"])
    assert {n["numa_node"] for n in doc["nodes"]} == {0}  # one domain: its host bridge is on node 0


def test_an_assigned_device_shows_its_vm(gpu_server, capsys, tmp_path):
    s = Session(str(gpu_server))
    assign(s, "vm7", ["0000:86:00.0"], kernel=FakeKernel(s.host))
    doc = topology_doc(Session(str(gpu_server)))
    fns = functions(doc)
    assert fns["0000:86:00.0"]["vm"] == "vm7" and fns["0000:86:00.0"]["use"] == "vfio"
    assert fns["0000:87:00.0"]["vm"] is None
    assert next(g for g in doc["groups"] if g["number"] == 38)["vms"] == ["vm7"]
    rc, out, _ = run(capsys, "--root", str(gpu_server), "topology")
    line = next(x for x in out.splitlines() if "0000:86:00.0" in x)
    assert rc == 0 and "\u2192 vm7" in line and "vfio-pci" in line and "group 38 viable" in line
    svg = topology_svg(doc)
    assert re.search(r'<text[^>]*class="vm"[^>]*>\u2192 vm7</text>', svg)


# -- the text tree ------------------------------------------------------------------------------------------------
def test_the_text_tree_fits_80_columns_and_keeps_every_address(gpu_server, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, err = run(capsys, "--root", str(gpu_server), "topology")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert max(len(x) for x in lines) <= 80
    words = set(out.split())
    inv = Session(str(gpu_server)).inventory()
    assert {f.address for f in inv.pci} <= words, "every address whole at 80 columns"
    assert lines[0] == "NUMA node 0" and "NUMA node 1" in lines
    assert lines[-1] == "54 PCI functions, 47 IOMMU groups: 12 viable, 22 not viable, 13 bridges only"
    tree = [x for x in lines if "0000:17:02.0" in x or "0000:19:00.0" in x]
    assert "root port" in tree[0] and tree[1].index("0000:19:00.0") > tree[0].index("0000:17:02.0")
    monkeypatch.setenv("COLUMNS", "200")
    _, wide, _ = run(capsys, "--root", str(gpu_server), "topology")
    row = next(x for x in wide.splitlines() if "0000:19:00.0" in x)
    assert re.search(r"0000:19:00\.0\s+gpu\s+vfio-pci\s+group 11 viable\s+GP102 \[GeForce GTX 1080 Ti\]$", row)


def test_without_an_iommu_it_says_so_first(bare_host, capsys):
    rc, out, _ = run(capsys, "--root", str(bare_host), "topology")
    assert rc == 0 and out.splitlines()[0].startswith("! IOMMU off")
    assert "group" not in out.split("\n", 1)[1].rsplit("\n", 2)[0] and "no IOMMU groups" in out
    doc = topology_doc(Session(str(bare_host)))
    frames, drawn = svg_parts(topology_svg(doc))
    assert frames == {} and drawn == set(functions(doc))


# -- the pictures -------------------------------------------------------------------------------------------------
def test_svg_and_html_files_draw_every_function_and_every_group(gpu_server, capsys, tmp_path):
    svg, page = tmp_path / "t.svg", tmp_path / "t.html"
    rc, out, err = run(capsys, "--root", str(gpu_server), "topology", "--svg", str(svg), "--html", str(page))
    assert rc == 0 and err == "" and out.splitlines() == [
        f"wrote {svg}: 54 PCI functions, 47 IOMMU groups: 12 viable, 22 not viable, 13 bridges only",
        f"wrote {page}: 54 PCI functions, 47 IOMMU groups: 12 viable, 22 not viable, 13 bridges only"]
    frames, drawn = svg_parts(svg.read_text())
    inv = Session(str(gpu_server)).inventory()
    assert drawn == {f.address for f in inv.pci}
    assert set(frames) == {str(f.iommu_group) for f in inv.pci}
    assert all(len(v) == 1 for v in frames.values())
    assert frames["11"] == {"viable"} and frames["10"] == {"not viable"} and frames["8"] == {"bridges only"}
    assert f'stroke="{COLOURS["not viable"]}"' in svg.read_text() and f'fill="{COLOURS["vfio"]}"' in svg.read_text()
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and svg.read_text() in html
    assert not re.search(r"""(src|href)=["'](?!data:)""", html), "self-contained: no external resources"
    assert "<script" not in html, "a file needs no script; the agent's page polls"
    assert "not viable: endpoints on host drivers: 0000:18:00.0 (nvidia), 0000:18:00.1 (snd_hda_intel)" in html


def test_standard_output_and_json(gpu_server, capsys):
    rc, out, _ = run(capsys, "--root", str(gpu_server), "topology", "--svg", "-")
    assert rc == 0 and out.startswith("<svg") and out.rstrip().endswith("</svg>")
    rc, out, _ = run(capsys, "--root", str(gpu_server), "topology", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["schema"] == 1 and doc["functions"] == 54 and len(doc["groups"]) == 47


@pytest.mark.parametrize("argv,message", [
    (["--svg", "-", "--html", "-"], "both ask for standard output"),
    (["--json", "--svg", "-"], "--json prints to standard output already"),
    (["--svg", "{tmp}/no/such/dir/t.svg"], "does not exist"),
    (["--html", "{tmp}"], "is a directory"),
    (["--svg", ""], "needs a file name"),
])
def test_bad_output_paths_are_one_line_exit_2(gpu_server, capsys, tmp_path, argv, message):
    rc, out, err = run(capsys, "--root", str(gpu_server), "topology", *[a.format(tmp=tmp_path) for a in argv])
    assert rc == 2 and out == "" and err.startswith("passthru: ") and message in err and err.count("\n") == 1


def test_a_big_host_is_drawn_whole(tmp_path):
    doc = topology_doc(Session(str(fx.big_tree(tmp_path / "big", n=512))))
    frames, drawn = svg_parts(topology_svg(doc))
    assert len(drawn) == doc["functions"] == 512
    assert set(frames) == {str(g["number"]) for g in doc["groups"]}


# -- the docs' picture --------------------------------------------------------------------------------------------
def test_the_committed_picture_is_what_the_generator_draws(tmp_path):
    env = dict(os.environ, PASSTHRU_ROOT=str(fx.gpu_server(tmp_path / "gpu_server")))
    p = subprocess.run([sys.executable, "-m", "passthru", "topology", "--svg", "-"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    committed = (DOCS / "topology-gpu-server.svg").read_text()
    assert committed == p.stdout, (
        "docs/topology-gpu-server.svg is stale; regenerate it: PYTHONPATH=src:tests python -c \"import "
        "sysfs_fixtures as fx; fx.gpu_server('/tmp/gs')\" && PASSTHRU_ROOT=/tmp/gs python -m passthru topology "
        "--svg docs/topology-gpu-server.svg")
    assert "![" in (DOCS / "topology.md").read_text() and "topology-gpu-server.svg" in (DOCS / "topology.md").read_text()


# -- the agent ----------------------------------------------------------------------------------------------------
def test_the_agent_serves_the_page_the_svg_and_the_tree(gpu_server):
    from passthru.agent.app import create_app
    from passthru.agent.server import AgentServer, Listen

    app = create_app(str(gpu_server), udev=False, reconcile_on_start=False)
    srv = AgentServer(app, Listen("tcp", host="127.0.0.1", port=0))
    where = srv.start()
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{where.port}", timeout=60) as c:
            page = c.get("/topology")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            gen = page.headers["x-passthru-generation"]
            assert f"var seen = {gen};" in page.text and 'fetch("/health"' in page.text
            svg = c.get("/topology", params={"format": "svg"})
            assert svg.headers["content-type"] == "image/svg+xml" and svg.text in page.text
            doc = c.get("/topology", params={"format": "json"}).json()
            assert doc == json.loads(json.dumps(topology_doc(Session(str(gpu_server)))))
            bad = c.get("/topology", params={"format": "png"})
            assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    finally:
        srv.stop()
        app.state.agent.stop()


def test_html_is_the_svg_with_a_legend_and_a_live_script_only_when_asked(gpu_server):
    doc = topology_doc(Session(str(gpu_server)))
    svg = topology_svg(doc)
    still, live = topology_html(doc, svg=svg), topology_html(doc, svg=svg, generation=5, poll_ms=1000)
    assert svg in still and "<script" not in still and 'data-generation' not in still
    assert "var seen = 5;" in live and 'data-generation="5"' in live
    assert "IOMMU group not viable" in still and "driven by a host driver" in still
