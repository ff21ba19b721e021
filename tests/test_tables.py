"""Tables fit the width they are printed at (issue #13): at COLUMNS=80 no line is longer than 80, addresses, IDs and
UUIDs stay whole, names wrap between words (never in pieces of a few letters), and the columns left out are named;
at COLUMNS=200 every column is there. Through the real CLI on the gpu_server fixture."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import sysfs_fixtures as fx
from passthru.cli import main as cli_main
from passthru.cli.tables import Table

TABLES = [  # (argv, headers every width shows, headers only a wide one shows)
    (["devices"], ["ADDRESS/ID", "KIND", "NAME", "DRIVER", "GROUP"], ["ROLE", "NOTES"]),
    (["groups"], ["GROUP", "VIABLE", "ADDRESS", "DRIVER"], ["KIND", "IDS", "NAME"]),
    (["usb"], ["PORT PATH", "IDS", "NAME", "DRIVER", "NOTES"], ["BUS", "DEV", "SPEED", "SERIAL"]),
    (["serial"], ["PORT", "DEVICE", "BACKING", "DRIVER", "NOTES"], []),
    (["vgpu", "types"], ["PARENT", "TYPE", "NAME", "AVAILABLE"], ["BUS", "API", "DESCRIPTION"]),
    (["vgpu", "list"], ["ID", "PARENT", "TYPE", "STATUS"], ["NAME", "GROUP"]),
    (["vf", "list"], ["VF", "ADDRESS", "DRIVER", "MAC", "NOTES"], ["QOS", "RATE", "REPRESENTOR"]),
    (["show", "0000:af:00.0"], ["FIELD", "VALUE"], []),
]
ID_RE = re.compile(r"\b(?:[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]|[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|"
                   r"[0-9a-f]{4}:[0-9a-f]{4})\b")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(fx.gpu_server(tmp_path_factory.mktemp("tables") / "gs"))


def table(capsys, monkeypatch, root: str, columns: int, argv: list[str]) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert cli_main(["--root", root, *argv]) == 0
    return capsys.readouterr().out


def ids_in_json(capsys, root: str, argv: list[str]) -> set[str]:
    cli_main(["--root", root, *argv, "--json"])
    return set(ID_RE.findall(capsys.readouterr().out)) if argv[0] != "show" else set()


@pytest.mark.parametrize("argv,always,wide", TABLES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_table_fits_80_columns_and_shows_everything_at_200(capsys, monkeypatch, root, argv, always, wide):
    narrow = table(capsys, monkeypatch, root, 80, argv)
    long_lines = [line for line in narrow.splitlines() if len(line) > 80]
    assert not long_lines, long_lines
    header = next(line for line in narrow.splitlines() if all(h in line for h in always))
    words = set(narrow.split())
    for ident in ids_in_json(capsys, root, argv) & set(ID_RE.findall(table(capsys, monkeypatch, root, 200, argv))):
        assert ident in words, f"{ident} is not whole at 80 columns"
    hidden = [h for h in wide if h not in header]
    if hidden:
        assert "not shown at 80 columns: " in narrow and "--json has every field" in narrow
    broad = table(capsys, monkeypatch, root, 200, argv)
    assert any(all(h in line for h in always + wide) for line in broad.splitlines()), broad[:400]
    assert "not shown at" not in broad and max(len(line) for line in broad.splitlines()) <= 200


def test_names_wrap_between_words(capsys, monkeypatch, root):
    out = table(capsys, monkeypatch, root, 80, ["devices"])
    cells = " ".join(out.split())
    for name in ("C620 Series Chipset Family USB 3.0 xHCI Controller", "GP102 [GeForce GTX 1080 Ti]"):
        for word in name.split():
            assert word in out.split(), f"{word!r} of {name!r} broken at 80 columns"
    assert "Contr oller" not in cells


def test_through_a_pipe_the_width_comes_from_columns(root):
    env = dict(os.environ, COLUMNS="80", PASSTHRU_ROOT=root)
    p = subprocess.run([sys.executable, "-m", "passthru", "vgpu", "list"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and max(len(line) for line in p.stdout.splitlines()) <= 80
    assert fx.T4_MDEV_UUID in p.stdout.split()


def test_the_fit_keeps_identifiers_and_drops_in_the_given_order():
    t = Table(None, ["ID", "NAME", "NOTES", "GROUP"], drop=("GROUP", "NOTES"))
    t.add_row("4b6a7c3e-1f2d-4e5a-9b8c-0d1e2f3a4b5c", "a long device name here", "some notes", "46")
    assert t.fit(200) == ([0, 1, 2, 3], [])
    assert t.fit(70) == ([0, 1, 2], ["GROUP"])  # 36 + 16 + 10 and two gaps of 2
    assert t.fit(60) == ([0, 1], ["GROUP", "NOTES"])
    assert t.fit(10) == ([0, 1], ["GROUP", "NOTES"])  # what cannot go stays (and folds as a last resort)
    doc = json.dumps(t.rows)
    assert "4b6a7c3e" in doc
