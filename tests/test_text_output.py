"""Text output never shows Python's True/False/None (issue #13): booleans read on/off, the words the CLI's own options
take (`--spoofchk on`, `--trust off`), in VF settings and in `show`'s field table."""

from __future__ import annotations

import re

import sysfs_fixtures
from passthru.cli import main as cli_main
from passthru.cli.output import text
from passthru.cli.vf import _print_vf
from passthru.host.root import HostRoot
from passthru.kinds.nic_vf import VfNetlink, set_vf
from test_sriov import IF0, FakeIPRoute, _paths

PYTHON_WORDS = re.compile(r"\b(True|False|None)\b")


def test_values_are_words():
    assert (text(True), text(False), text(None), text(""), text(0), text("x")) == ("on", "off", "-", "-", "0", "x")


def test_vf_settings_read_on_and_off(tmp_path, capsys):
    gs = sysfs_fixtures.make_gpu_server(tmp_path / "gs")
    out = set_vf(HostRoot(gs.root), _paths(gs), IF0, 2, {"spoofchk": "off", "trust": "on", "vlan": 100},
                 netlink=VfNetlink(iproute=FakeIPRoute({IF0: 8})))
    _print_vf(out, False)
    text = capsys.readouterr().out
    assert "spoofchk off" in text and "trust on" in text and "vlan 100" in text
    assert not PYTHON_WORDS.search(text), text


def test_show_tables_have_no_python_words(gpu_server, capsys):
    for ident in ("0000:02:00.0", "0000:3b:00.2", "1-1", "ttyS4", "0000:af:00.0"):
        assert cli_main(["--root", str(gpu_server), "show", ident]) == 0
        text = capsys.readouterr().out
        assert not PYTHON_WORDS.search(text), (ident, text)
    assert cli_main(["--root", str(gpu_server), "show", "1-1"]) == 0
    rows = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines()[2:] if len(line.split()) >= 2)
    assert (rows["is_hub"], rows["is_root_hub"]) == ("on", "off")
