"""Corrupt or unreadable state is one line on stderr, exit 2, never a traceback and never a wrong answer (issue #12).

Real files throughout: inventories made by passthru and then damaged the ways disks and people damage them (garbage,
cut in half, bit-flipped b-tree pages, a foreign SQLite file, tables dropped, a newer schema), models.toml files
that are not UTF-8 or hold a raw control byte, state and config directories that are regular files or symlink
loops, and symbolic links planted where passthru keeps its logs, locks and records."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from passthru.cli import main as cli_main
from passthru.config import Paths
from passthru.errors import ConfigError
from passthru.mdev import MdevStore, Record
from passthru.statefs import (FileLock, append_line, list_names, open_nofollow, read_record, write_atomic,
                              write_if_changed)
from passthru.vfio import Store as Holdings


def one_line_exit_2(rc: int, err: str, *names: str) -> str:
    """The contract: exit 2, exactly one line on stderr starting "passthru: ", naming ``names``, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("passthru: "), err
    for n in names:
        assert n in lines[0], (n, err)
    return lines[0]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- statefs: links are refused, unusable directories are one line ----------------------------------------------------
@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    """A state directory and, outside it, the file a planted link points at."""
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "precious"
    target.write_text("do not touch\n")
    return state, target


def test_append_line_refuses_a_symlinked_log(planted):
    state, target = planted
    (state / "audit.log").symlink_to(target)
    with pytest.raises(ConfigError, match=r"audit.log is a symbolic link; passthru does not follow links .*remove it"):
        append_line(str(state / "audit.log"), '{"x": 1}')
    assert target.read_text() == "do not touch\n"


def test_append_line_appends_fsynced_lines_and_makes_the_directory(tmp_path):
    log = tmp_path / "new" / "audit.log"
    append_line(str(log), "one")
    append_line(str(log), "two", mode=0o600)
    assert log.read_text() == "one\ntwo\n"
    assert oct(log.stat().st_mode & 0o777) == oct(0o640) and oct(log.parent.stat().st_mode & 0o777) == oct(0o755)
    with pytest.raises(ValueError):
        append_line(str(log), "a\nb")


def test_a_dangling_link_is_refused_and_nothing_is_created(tmp_path):
    (tmp_path / "audit.log").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        append_line(str(tmp_path / "audit.log"), "x")
    assert not (tmp_path / "nowhere").exists()


def test_vfio_lock_through_a_link_is_refused(planted, tmp_path):
    state, target = planted
    (state / "vfio.lock").symlink_to(target)
    paths = Paths(str(tmp_path / "etc"), str(state))
    with pytest.raises(ConfigError, match="vfio.lock is a symbolic link"):
        with Holdings(paths).lock():
            pass
    assert target.read_text() == "do not touch\n"


def test_file_lock_on_a_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "state").write_text("")
    with pytest.raises(ConfigError, match=r"state is not a directory.*move it away, or pass --state-dir"):
        with FileLock(str(tmp_path / "state" / "vfio.lock"), "a bind"):
            pass


def test_a_symlinked_record_is_refused_and_its_target_untouched(planted, tmp_path):
    state, target = planted
    target.write_text(json.dumps({"address": "0000:86:00.0", "phase": "bound"}))
    (state / "vfio").mkdir()
    (state / "vfio" / "0000:86:00.0.json").symlink_to(target)
    with pytest.raises(ConfigError, match="0000:86:00.0.json is a symbolic link"):
        read_record(str(state / "vfio" / "0000:86:00.0.json"))
    with pytest.raises(ConfigError, match="symbolic link"):
        Holdings(Paths(str(tmp_path / "etc"), str(state))).holdings()
    # a write through the same name replaces nothing behind the link
    with pytest.raises(ConfigError, match="symbolic link"):
        write_if_changed(str(state / "vfio" / "0000:86:00.0.json"), b"{}")
    assert json.loads(target.read_text())["phase"] == "bound"


def test_open_nofollow_reads_plain_files_and_passes_not_found(tmp_path):
    (tmp_path / "f").write_text("x")
    fd = open_nofollow(str(tmp_path / "f"), os.O_RDONLY)
    os.close(fd)
    with pytest.raises(FileNotFoundError):
        open_nofollow(str(tmp_path / "g"), os.O_RDONLY)
    assert read_record(str(tmp_path / "g")) is None


def test_list_names(tmp_path):
    assert list_names(str(tmp_path / "none")) == []
    for n in ("b.json", "a.json", ".a.json.tmp.passthru", "c.txt", ".hidden.json"):
        (tmp_path / n).write_text("{}")
    assert list_names(str(tmp_path)) == ["a.json", "b.json"]
    assert list_names(str(tmp_path), ".txt") == ["c.txt"]
    with pytest.raises(ConfigError, match=r"c.txt is not a directory; move it away"):
        list_names(str(tmp_path / "c.txt"))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ConfigError, match="symlink loop"):
        list_names(str(tmp_path / "loop"))


def _as_nobody(fn, *args) -> str:
    """Run ``fn(*args)`` in a child process as uid/gid 65534 (root reads everything); its error, or "ok"."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(r)
        msg = "ok"
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            msg = f"{type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_an_unreadable_directory_names_the_fix(tmp_path):
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="passthru-perm-"))
    try:
        base.chmod(0o755)
        (base / "vfio").mkdir(mode=0o700)
        got = _as_nobody(list_names, str(base / "vfio"))
        assert got == (f"ConfigError: cannot read {base}/vfio (Permission denied): run as root, or pass "
                       "--state-dir / --config-dir")
    finally:
        import shutil

        shutil.rmtree(base)


def test_write_atomic_under_a_file_is_one_line(tmp_path):
    (tmp_path / "etc").write_text("")
    with pytest.raises(ConfigError, match=r"etc is not a directory.*move it away"):
        write_atomic(str(tmp_path / "etc" / "passthru" / "models.toml"), b"")


def test_a_symlinked_mdev_record_and_audit_log(planted, tmp_path):
    state, target = planted
    paths = Paths(str(tmp_path / "etc"), str(state))
    store = MdevStore(paths)
    store.audit("vgpu-create", "mdev:x", None, "mtty-1")
    entry = json.loads((state / "audit.log").read_text())
    assert entry["action"] == "vgpu-create" and entry["caller"]["pid"] == os.getpid()
    (state / "audit.log").unlink()
    (state / "audit.log").symlink_to(target)
    with pytest.raises(ConfigError, match="audit.log is a symbolic link"):
        store.audit("vgpu-create", "mdev:x", None, "mtty-1")
    (state / "mdev").mkdir()
    (state / "mdev" / "u1.json").symlink_to(target)
    with pytest.raises(ConfigError, match="u1.json is a symbolic link"):
        store.records()
    assert target.read_text() == "do not touch\n"
    (state / "mdev" / "u1.json").unlink()
    store.save(Record("u1", "mdev", "mtty", "mtty-1", "created"))
    assert [r.id for r in store.records()] == ["u1"]
