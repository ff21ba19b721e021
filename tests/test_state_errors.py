"""Where state cannot go is one line and exit 2, naming the fix (issue #13): a PostgreSQL URL whose driver is not
installed, a URL SQLAlchemy cannot use, a --state-dir on a read-only file system, one the user may not write."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from passthru.cli import main as cli_main

def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", [["assignments"], ["assign", "vm1", "0000:86:00.0", "--no-bind"], ["store", "check"],
                                  ["release", "vm1"], ["cluster", "hosts"]])
def test_a_postgresql_url_without_its_driver(capsys, monkeypatch, gpu_server, argv):
    # psycopg is a test dependency (the PostgreSQL tests): hide it, as on a host that never installed it
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setenv("PASSTHRU_DB_URL", "postgresql+psycopg://passthru:s3cret@db.example/passthru")
    rc, out, err = cli(capsys, "--root", str(gpu_server), *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert "postgresql+psycopg://passthru:***@db.example/passthru: the database driver 'psycopg' is not " in err
    assert "pip install 'psycopg[binary]'" in err and sys.executable in err and "s3cret" not in err


@pytest.mark.parametrize("url,says,verbs", [
    ("nosuchdb://x/y", "Can't load plugin", [["assignments"], ["store", "check"]]),
    ("s3cret@@", "unparsable", [["assignments"], ["store", "check"], ["store", "backup"]])])
def test_a_url_passthru_cannot_use(capsys, monkeypatch, gpu_server, url, says, verbs):
    monkeypatch.setenv("PASSTHRU_DB_URL", url)
    for argv in verbs:
        rc, out, err = cli(capsys, "--root", str(gpu_server), *argv)
        assert rc == 2 and err.count("\n") == 1 and says in err and "postgresql+psycopg://USER" in err, err
        assert "s3cret" not in err


def _read_only(target: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run passthru with ``target`` bind-mounted read-only over itself, in a private mount namespace of an
    unprivileged user namespace (nothing outside the child sees the mount)."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(target), sys.executable, "-m", "passthru",
                           *argv], capture_output=True, text=True, timeout=120)


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    p = subprocess.run(["unshare", "-rm", "sh", "-c", "mount --bind / /mnt 2>/dev/null || mount -t tmpfs x /mnt"],
                       capture_output=True, timeout=30)
    return p.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="no user/mount namespaces here (unshare -rm)")
def test_a_state_dir_on_a_read_only_file_system(tmp_path, gpu_server):
    state = tmp_path / "ro"
    (state / "old").mkdir(parents=True)
    assert cli_main(["--root", str(gpu_server), "--state-dir", str(state / "old"), "assign", "vm1", "0000:86:00.0",
                     "--no-bind"]) == 0  # an inventory that exists, then becomes read-only
    before = sorted(p.name for p in (state / "old").iterdir())
    for where, argv in ((state / "new", ["assign", "vm1", "0000:87:00.0", "--no-bind"]),
                        (state / "new", ["assignments"]),
                        (state / "old", ["assign", "vm2", "0000:87:00.0", "--no-bind"]),
                        (state / "old", ["release", "vm1"]),
                        (state / "old", ["assign", "vm2", "0000:87:00.0", "--dry-run"])):
        p = _read_only(state, ["--root", str(gpu_server), "--state-dir", str(where), "--config-dir",
                               str(where / "etc"), *argv])
        assert p.returncode == 2 and p.stderr.count("\n") == 1, (argv, p.stderr)
        assert "on a read-only file system; pass --state-dir" in p.stderr and "on a writable one" in p.stderr, p.stderr
    assert sorted(p.name for p in (state / "old").iterdir()) == before and not (state / "new").exists()


def _nobody_runs_python() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run([sys.executable, "-c", "0"], user=65534, group=65534, extra_groups=[], cwd="/",
                              capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _nobody_runs_python(), reason="needs root, and a Python that uid 65534 may run")
def test_a_state_dir_the_user_may_not_write():
    base = Path(tempfile.mkdtemp(prefix="passthru-ro-"))
    try:
        base.chmod(0o755)
        root = fx.gpu_server(base / "gs")
        (base / "state").mkdir(mode=0o755)
        for argv in (["assign", "vm1", "0000:86:00.0", "--no-bind"], ["model", "add", "x", "--vendor", "1",
                                                                       "--device", "2"]):
            p = subprocess.run([sys.executable, "-m", "passthru", "--root", str(root), "--state-dir",
                                str(base / "state"), "--config-dir", str(base / "state" / "etc"), *argv],
                               capture_output=True, text=True, timeout=120, user=65534, group=65534,
                               extra_groups=[], cwd="/")
            assert p.returncode == 2 and p.stderr.count("\n") == 1, (argv, p.stderr)
            assert "(Permission denied): run as root, or pass --state-dir" in p.stderr, p.stderr
    finally:
        shutil.rmtree(base)
