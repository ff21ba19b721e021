"""Every command a user page shows (```console blocks, lines starting with `$ `) runs against a realistic host (the
gpu_server fixture) and exits 0 — or with the status the page states in a trailing `# exit N` — so the docs
cannot drift from the tool. The lines a page shows under a command (up to the next `$ ` line or the block's end)
are its output: they must be what the command prints (stdout, then stderr), whitespace runs compared as one space;
a line `...` stands for any number of lines, and `...` inside a line for any text. A command shown without output
must print something, and one with `--json` must print JSON. The pages' example files are there too:
docs/examples/*.xml in the working directory (`--domain vm1.xml`), docs/examples/root/ laid over the fixture host (a
Proxmox VM's /etc/pve/qemu-server/100.conf)."""

from __future__ import annotations

import json
import os
import re
import shutil
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
ELLIPSIS = "..."


@dataclass
class DocCommand:
    cmd: str
    shown: list[str] = field(default_factory=list)


def doc_commands(page: Path | str) -> list[DocCommand]:
    text = page.read_text() if isinstance(page, Path) else page
    out: list[DocCommand] = []
    for block in BLOCK.findall(text):
        current = None
        for line in block.splitlines():
            if line.startswith("$ "):
                current = DocCommand(line[2:].strip())
                out.append(current)
            elif current is not None:
                current.shown.append(line)
    for c in out:
        while c.shown and not c.shown[-1].strip():
            c.shown.pop()
    return out


def _norm(line: str) -> str:
    return " ".join(line.split())


def _line_pattern(shown: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in _norm(shown).split(ELLIPSIS)) + r"\Z")


def output_mismatch(shown: list[str], printed: str) -> str | None:
    """Why ``printed`` is not what the page shows (None when it is). Blank lines are not compared."""
    want = [_norm(s) for s in shown if s.strip()]
    got = [_norm(s) for s in printed.splitlines() if s.strip()]

    def match(i: int, j: int) -> bool:  # want[i:] against got[j:]
        if i == len(want):
            return j == len(got)
        if want[i] == ELLIPSIS:
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and _line_pattern(want[i]).match(got[j]) is not None and match(i + 1, j + 1)

    if match(0, 0):
        return None
    return "the page shows:\n" + "\n".join(want) + "\n--- the command printed:\n" + "\n".join(got)


PAGES = sorted(p for p in DOCS.glob("*.md") if doc_commands(p))


def test_pages_with_commands_exist():
    assert {p.name for p in PAGES} >= {"discovery.md", "capture.md", "doctor.md"}


def test_shown_output_is_parsed_and_compared():
    page = ("text\n```console\n$ passthru a --json\n{\"x\":   1}\n\n$ passthru b   # exit 2\n"
            "error: no\n```\n```sh\n$ not console\n```\n```console\n$ passthru c\n```\n")
    cmds = doc_commands(page)
    assert [(c.cmd, c.shown) for c in cmds] == [("passthru a --json", ['{"x":   1}']),
                                                ("passthru b   # exit 2", ["error: no"]), ("passthru c", [])]
    assert output_mismatch(['{"x":   1}'], '{"x": 1}\n') is None
    assert output_mismatch(["a", "...", "z"], "a\nb\nc\nz\n") is None
    assert output_mismatch(["a", "...", "z"], "a\nz\n") is None
    assert output_mismatch(["GPU  0000:... nvidia"], "GPU 0000:3b:00.0   nvidia\n") is None
    assert output_mismatch(["a", "z"], "a\nb\nz\n") is not None  # no elision: every line
    assert output_mismatch(["a"], "a\nb\n") is not None
    assert output_mismatch(["a", "...", "y"], "a\nb\nz\n") is not None
    assert output_mismatch(["a.b"], "aXb\n") is not None  # the page's text is literal


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_commands_run(page, gpu_server, tmp_path, request):
    env = dict(os.environ, PASSTHRU_ROOT=str(gpu_server), COLUMNS="200")
    if page.name == "cluster.md":  # the cluster's commands run against a real PostgreSQL (tests/pg.py)
        env["PASSTHRU_DB_URL"] = request.getfixturevalue("pg_url")
    for f in (DOCS / "examples").glob("*.xml"):
        shutil.copy(f, tmp_path / f.name)
    if (DOCS / "examples" / "root").is_dir():
        shutil.copytree(DOCS / "examples" / "root", gpu_server, dirs_exist_ok=True)
    for dc in doc_commands(page):
        cmd, want = dc.cmd, 0
        m = re.search(r"\s+#\s*exit\s+(\d+)\s*$", cmd)
        if m:
            cmd, want = cmd[: m.start()], int(m.group(1))
        argv = shlex.split(cmd, comments=True)
        cli = argv[0] == "passthru"
        if cli:
            argv = [sys.executable, "-m", "passthru", *argv[1:]]
        p = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == want, f"{page.name}: `{cmd}` exited {p.returncode}, not {want}: {p.stderr.strip()}"
        assert "Traceback" not in p.stderr, cmd
        if dc.shown:
            problem = output_mismatch(dc.shown, p.stdout + p.stderr)
            assert problem is None, f"{page.name}: `{cmd}`: {problem}"
        elif cli:
            assert (p.stdout + p.stderr).strip(), f"{page.name}: `{cmd}` printed nothing"
        if cli and "--json" in argv and want == 0:
            try:
                json.loads(p.stdout)
            except ValueError as e:
                pytest.fail(f"{page.name}: `{cmd}` --json printed no JSON ({e}):\n{p.stdout[:2000]}")
