"""Every command a user page shows (```console blocks, lines starting with `$ `) runs against a realistic host (the
gpu_server fixture) and exits 0 — or with the status the page states in a trailing `# exit N` — so the docs
cannot drift from the tool. The pages' example files are there too: docs/examples/*.xml in the working directory
(`--domain vm1.xml`), docs/examples/root/ laid over the fixture host (a Proxmox VM's /etc/pve/qemu-server/100.conf)."""

from __future__ import annotations

import os
import re
import shutil
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def doc_commands(page: Path) -> list[str]:
    return [line[2:].strip() for block in BLOCK.findall(page.read_text()) for line in block.splitlines()
            if line.startswith("$ ")]


PAGES = sorted(p for p in DOCS.glob("*.md") if doc_commands(p))


def test_pages_with_commands_exist():
    assert {p.name for p in PAGES} >= {"discovery.md", "capture.md", "doctor.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_commands_run(page, gpu_server, tmp_path):
    env = dict(os.environ, PASSTHRU_ROOT=str(gpu_server))
    for f in (DOCS / "examples").glob("*.xml"):
        shutil.copy(f, tmp_path / f.name)
    if (DOCS / "examples" / "root").is_dir():
        shutil.copytree(DOCS / "examples" / "root", gpu_server, dirs_exist_ok=True)
    for cmd in doc_commands(page):
        want = 0
        m = re.search(r"\s+#\s*exit\s+(\d+)\s*$", cmd)
        if m:
            cmd, want = cmd[: m.start()], int(m.group(1))
        argv = shlex.split(cmd, comments=True)
        if argv[0] == "passthru":
            argv = [sys.executable, "-m", "passthru", *argv[1:]]
        p = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == want, f"{page.name}: `{cmd}` exited {p.returncode}, not {want}: {p.stderr.strip()}"
        assert "Traceback" not in p.stderr, cmd
