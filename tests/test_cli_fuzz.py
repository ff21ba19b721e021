"""Fuzzing the command line: every command (taken from the CLI itself, so new ones are covered) with arguments drawn
from its own options, plausible values (addresses, specs, VM names, UUIDs, paths) and arbitrary text. Whatever the
input: exit 0, 1 or 2, never a traceback; a passthru error is exactly one line ``passthru: ...``; the parser's own
usage errors exit 2.

Runs in-process against a fixture host (the gpu_server tree; its own state and config directories), so commands
that need the live host refuse, and the inventory commands really run."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysfs_fixtures as fx
from passthru.cli import app
from passthru.cli import main as cli_main

SKIP = {("serve",), ("units",)}  # they start a server / write systemd units; covered by their own tests


def _commands() -> list[tuple[tuple[str, ...], list]]:
    import typer.main

    out = []

    def walk(cmd, path: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, path + (name,))
            return
        if path not in SKIP:
            out.append((path, list(cmd.params)))

    walk(typer.main.get_command(app), ())
    return sorted(out, key=lambda c: c[0])


COMMANDS = _commands()
VALUES = ["0000:86:00.0", "86:00.0", "0000:86:00.1", "0000:19:00.0", "0000:99:00.0", "0000:00:1c.0", "zz:00.0",
          "0000:86:00.9", "0000:3b:00.2", "gpu", "nic", "nvme", "usb", "serial", "vgpu", "bogus", "usb:1-1.3",
          "usb:0403:6001", "usb:dead:beef:x", "serial:/dev/ttyS4", "serial:/dev/ttyS0", "mdev:bad",
          "mdev:4b20d080-1b54-4048-85b3-a6a62d165c01", "vm1", "vm2", "vм1", "../x", "", "-", "a" * 300, ".x",
          "4b20d080-1b54-4048-85b3-a6a62d165c01", "1", "0", "-1", "99999999999", "1.5", "on", "off", "strict",
          "prefer", "q35", "pc", "x=y", "0000:19:00.0=/nonexistent.rom", "/etc/passwd", "/nonexistent",
          "unix:/tmp/x.sock", "1G:4", "2M:abc", "mtty-1", "eth0", "vf:netdevsim/netdevsim1:0", "52:54:00:12:34:56",
          "--", "--json", "--help", "A\x01B", "\u202e", "💥"]


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
VALUE = st.one_of(st.sampled_from(VALUES), st.sampled_from(VALUES), TEXT)


@st.composite
def invocation(draw) -> list[str]:
    """Mostly well-formed (the command's arguments, some of its options with values), sometimes token soup: the
    well-formed ones get past the parser into passthru itself."""
    path, params = draw(st.sampled_from(COMMANDS))
    argv = list(path)
    if draw(st.integers(0, 4)) == 0:
        opts = [o for p in params for o in getattr(p, "opts", []) if o.startswith("-")] or ["--json"]
        return argv + draw(st.lists(st.one_of(st.sampled_from(opts), VALUE), max_size=6))
    for p in params:
        if getattr(p, "param_type_name", "") == "argument":
            if p.required or draw(st.booleans()):
                n = 1 if p.nargs == 1 else draw(st.integers(1, 3))
                argv += [draw(VALUE) for _ in range(n)]
        elif draw(st.integers(0, 2)) == 0:
            argv.append(p.opts[0])
            if not p.is_flag:
                argv.append(draw(VALUE))
    return argv


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(fx.gpu_server(tmp_path_factory.mktemp("fuzz") / "gs"))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(argv=invocation())
def test_any_command_line_exits_cleanly(root, tmp_path_factory, argv):
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(["--root", root, *argv])
    finally:
        os.chdir(cwd)
    text = err.getvalue()
    assert rc in (0, 1, 2), (argv, rc, text)
    assert "Traceback" not in text and "Traceback" not in out.getvalue(), (argv, text)
    if text.startswith("passthru: "):
        assert text.count("\n") == 1, (argv, text)
        assert rc in (1, 2), (argv, rc, text)


def test_the_fuzzer_reaches_every_command():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"bind", "assign", "release", "reconcile", "qemu-args", "model add", "vgpu create", "vf set"} <= names
    assert Path(fx.__file__).exists()
