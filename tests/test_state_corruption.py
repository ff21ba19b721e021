"""Corrupt or unreadable state is one line on stderr, exit 2, never a traceback and never a wrong answer (issue #12).

Real files throughout: inventories made by passthru and then damaged the ways disks and people damage them (garbage,
cut in half, bit-flipped b-tree pages, a foreign SQLite file, tables dropped, a newer schema), models.toml files
that are not UTF-8 or hold a raw control byte, state and config directories that are regular files or symlink
loops, and symbolic links planted where passthru keeps its logs, locks and records."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from as_nobody import as_nobody
from passthru.inventory.schema import LATEST
from passthru.cli import main as cli_main
from passthru.config import Paths
from passthru.errors import ConfigError
from passthru.kinds.vgpu import MdevStore, Record
from passthru.statefs import (FileLock, append_line, list_names, open_nofollow, read_record, write_atomic,
                              write_if_changed)
from passthru.vfio import Holdings


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


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_an_unreadable_directory_names_the_fix(tmp_path):
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="passthru-perm-"))
    try:
        base.chmod(0o755)
        (base / "vfio").mkdir(mode=0o700)
        got = as_nobody(list_names, str(base / "vfio"))
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


# -- the inventory database: every command that opens it ------------------------------------------------------------
PAGE = 4096


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, bytes]:
    """A gpu_server root (only read) and a real inventory with data: devices synced, models, two VMs' devices."""
    from passthru.inventory.health import backup_sqlite

    base = tmp_path_factory.mktemp("world")
    root = fx.gpu_server(base / "gs")
    state, etc = base / "state", base / "etc"
    for argv in (["model", "add", "intel-qat", "--vendor", "8086", "--device", "37c8"],
                 ["assign", "vm1", "0000:86:00.0", "--no-bind"], ["assign", "vm2", "usb:1-1.3", "--no-bind"]):
        assert cli_main(["--root", str(root), "--config-dir", str(etc), "--state-dir", str(state), *argv]) == 0
    backup_sqlite(str(state / "passthru.db"), str(base / "inventory.db"))  # one file, WAL folded in
    return Path(root), (base / "inventory.db").read_bytes()


def _garbage(good: bytes) -> bytes:
    return bytes((i * 7919 + 13) % 251 for i in range(len(good)))


def _truncated(good: bytes) -> bytes:
    return good[: len(good) // 2]


def _bit_flipped(good: bytes) -> bytes:
    """Every b-tree page after the first gets its page header and cell pointers flipped, as a bad sector or a bad
    RAM bit would leave them (SQLite has no page checksums: damage to row bytes alone reads back as data). The
    schema's own pages (sqlite_master: page 1 and, once the schema outgrows it, the pages it spills into) are
    spared, so the file still opens and it is the integrity check that finds the damage."""
    data = bytearray(good)
    db = sqlite3.connect(":memory:")
    db.deserialize(good)
    roots = {r[0] for r in db.execute("SELECT rootpage FROM sqlite_master WHERE rootpage > 1")}
    db.close()
    for p in range(1, len(data) // PAGE):
        if p + 1 not in roots:  # page numbers start at 1
            continue
        for i in range(12):
            data[p * PAGE + i] ^= 0xFF
    return bytes(data)


def _sqlite(good: bytes, tmp: Path, sql: str) -> bytes:
    f = tmp / "work.db"
    f.write_bytes(good)
    c = sqlite3.connect(f)
    c.executescript(sql)
    c.close()
    return f.read_bytes()


CORRUPTIONS = {
    "garbage": (lambda good, tmp: _garbage(good), "file is not a database"),
    "truncated": (lambda good, tmp: _truncated(good), "database disk image is malformed"),
    "bit-flipped": (lambda good, tmp: _bit_flipped(good), "malformed"),
    "foreign": (lambda good, tmp: _sqlite(b"", tmp, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL);"),
                "not passthru's: no schema version but tables invoices"),
    "tables-dropped": (lambda good, tmp: _sqlite(good, tmp, "DROP TABLE assignments; DROP TABLE audit;"),
                       f"schema version {LATEST} but tables missing: assignments, audit"),
    "newer": (lambda good, tmp: _sqlite(good, tmp, "INSERT INTO schema_migrations VALUES (99, 'future', 'x');"),
              "inventory schema version 99 is newer than this passthru knows"),
}
COMMANDS = [
    ["assign", "vm3", "0000:87:00.0", "--no-bind"],
    ["assign", "vm3", "gpu", "--numa", "1", "--no-bind"],
    ["release", "vm1"],
    ["release", "vm1", "0000:86:00.0", "--restore"],
    ["assignments"],
    ["assignments", "--all", "--json"],
    ["qemu-args", "vm1"],
    ["libvirt-xml", "vm1"],
    ["attach", "vm1", "0000:86:00.0", "--qmp", "QMP"],
    ["detach", "vm1", "0000:86:00.0", "--qmp", "QMP"],
    ["vgpu", "remove", fx.T4_MDEV_UUID, "--dry-run"],
]


def _corrupt_state(world, tmp_path, name) -> tuple[list[str], Path]:
    root, good = world
    state = tmp_path / "state"
    state.mkdir()
    make, _ = CORRUPTIONS[name]
    (state / "passthru.db").write_bytes(make(good, tmp_path))
    return ["--root", str(root), "--config-dir", str(tmp_path / "etc"), "--state-dir", str(state)], state


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_inventory_command_on_a_damaged_database_is_one_line_exit_2(world, tmp_path, capsys, name):
    glob, state = _corrupt_state(world, tmp_path, name)
    db = str(state / "passthru.db")
    before = (state / "passthru.db").read_bytes()
    lines = set()
    qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a real socket: attach/detach get past that check
    qmp.bind(str(tmp_path / "vm1.qmp"))
    for argv in COMMANDS:
        rc, out, err = run(capsys, *glob, *[str(tmp_path / "vm1.qmp") if a == "QMP" else a for a in argv])
        line = one_line_exit_2(rc, err, db, CORRUPTIONS[name][1])
        lines.add(line)
        assert out == "", argv
    assert len(lines) == 1  # the same answer whichever command asks
    if name != "newer":
        assert "move it away with its -wal and -shm files and start an empty inventory (there is no backup)" in line
        assert line.endswith("`passthru store check` prints the commands")
    else:
        assert line.endswith("upgrade passthru (a newer one made this database)")
    after = (state / "passthru.db").read_bytes()  # nothing was written into it (the header: the WAL switch)
    assert after[100:] == before[100:]
    assert not (state / "passthru.db.bak").exists()  # and it was not "backed up" over a good backup


@pytest.mark.parametrize("name", ["garbage", "tables-dropped"])
def test_the_message_names_the_backup_when_there_is_one(world, tmp_path, capsys, name):
    glob, state = _corrupt_state(world, tmp_path, name)
    (state / "passthru.db.bak").write_bytes(world[1])
    rc, _, err = run(capsys, *glob, "assignments")
    assert one_line_exit_2(rc, err).endswith(
        "move it away with its -wal and -shm files and restore the backup (passthru.db.bak) or start an empty "
        "inventory; `passthru store check` prints the commands")


def test_commands_without_the_inventory_keep_working_on_a_damaged_one(world, tmp_path, capsys):
    glob, _ = _corrupt_state(world, tmp_path, "garbage")
    for argv in (["devices", "--json"], ["groups"], ["model", "add", "fpga", "--vendor", "1172", "--device", "e001"],
                 ["model", "list"], ["model", "remove", "fpga"], ["status"], ["vgpu", "list"]):
        rc, _, err = run(capsys, *glob, *argv)
        assert rc == 0, (argv, err)


def test_store_check_on_a_good_database(world, tmp_path, capsys):
    root, good = world
    state = tmp_path / "state"
    state.mkdir()
    (state / "passthru.db").write_bytes(good)
    glob = ["--root", str(root), "--state-dir", str(state)]
    rc, out, err = run(capsys, *glob, "store", "check")
    assert rc == 0 and err == "" and out.splitlines()[-1] == "no problems", out
    assert "ok   integrity: PRAGMA integrity_check: ok" in out and f"ok   schema: version {LATEST} (the latest" in out
    rc, out, _ = run(capsys, *glob, "store", "backup")
    assert rc == 0 and out.startswith(f"wrote {state}/passthru.db.bak (")
    rc, out, _ = run(capsys, *glob, "store", "check", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["ok"] and doc["version"] == doc["latest"] == LATEST
    assert {c["check"]: c["status"] for c in doc["checks"]} == {"database": "ok", "integrity": "ok", "schema": "ok",
                                                                 "tables": "ok", "indexes": "ok", "backup": "ok"}
    assert doc["backup"]["version"] == LATEST and doc["backup"]["integrity"] == "ok"
    # no database yet: nothing to check, and the check does not create one
    empty = tmp_path / "empty"
    rc, out, _ = run(capsys, "--root", str(root), "--state-dir", str(empty), "store", "check")
    assert rc == 0 and "not there yet" in out and not empty.exists()


@pytest.mark.parametrize("name, check", [("garbage", "database"), ("truncated", "database"),
                                         ("bit-flipped", "integrity"), ("foreign", "schema"),
                                         ("tables-dropped", "schema"), ("newer", "schema")])
def test_store_check_on_a_damaged_database_says_what_and_how(world, tmp_path, capsys, name, check):
    glob, state = _corrupt_state(world, tmp_path, name)
    rc, out, err = run(capsys, *glob, "store", "check", "--json")
    doc = json.loads(out)
    assert rc == 1 and err == "" and not doc["ok"]
    failed = {c["check"]: c for c in doc["checks"] if c["status"] == "fail"}
    assert check in failed and failed[check]["fix"]
    rc, out, _ = run(capsys, *glob, "store", "check")
    assert rc == 1 and f"FAIL {check}: " in out and "       fix: " in out
    rc, _, err = run(capsys, *glob, "store", "backup")  # a damaged database is never copied over a backup
    if name == "newer":  # not damaged: a newer passthru's, and worth a copy
        assert rc == 0 and (state / "passthru.db.bak").exists(), err
    else:
        one_line_exit_2(rc, err, str(state / "passthru.db"))
        assert not (state / "passthru.db.bak").exists()


def test_the_fix_store_check_prints_restores_the_backup(world, tmp_path, capsys):
    glob, state = _corrupt_state(world, tmp_path, "bit-flipped")
    (state / "passthru.db.bak").write_bytes(world[1])
    (state / "passthru.db-wal").write_bytes(b"stale")
    rc, out, _ = run(capsys, *glob, "store", "check", "--json")
    fix = next(c["fix"] for c in json.loads(out)["checks"] if c["status"] == "fail")
    command = fix.split("   (")[0]
    subprocess.run(["bash", "-c", command], check=True, timeout=30)
    assert sorted(p.name for p in state.iterdir() if not p.name.startswith("broken-")) == ["passthru.db"]
    rc, out, err = run(capsys, *glob, "assignments")
    assert rc == 0 and "vm1  pci:0000:86:00.0  reserved" in out, err
    rc, out, _ = run(capsys, *glob, "store", "check")
    assert rc == 0, out


def test_a_newer_or_foreign_database_is_never_migrated_into(world, tmp_path, capsys):
    glob, state = _corrupt_state(world, tmp_path, "foreign")
    run(capsys, *glob, "assign", "vm3", "gpu", "--no-bind")
    c = sqlite3.connect(state / "passthru.db")
    assert [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["invoices"]


def test_serve_on_a_damaged_database_exits_2_with_one_line(world, tmp_path):
    glob, state = _corrupt_state(world, tmp_path, "garbage")
    p = subprocess.run([sys.executable, "-m", "passthru", *glob, "serve", "--listen", f"unix:{tmp_path}/a.sock",
                        "--no-hotplug", "--no-reconcile"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    one_line_exit_2(p.returncode, p.stderr, str(state / "passthru.db"), "file is not a database")
    assert not (tmp_path / "a.sock").exists()


# -- models.toml ------------------------------------------------------------------------------------------------------
def test_a_control_character_description_is_refused(world, tmp_path, capsys):
    root, _ = world
    etc = tmp_path / "etc"
    rc, _, err = run(capsys, "--root", str(root), "--config-dir", str(etc), "model", "add", "x", "--vendor", "8086",
                     "--device", "37c8", "--description", "QAT\x01card")
    line = one_line_exit_2(rc, err, "--description has a control character '\\x01' at position 3")
    assert line.endswith("use printable text (no tabs, newlines or escape sequences)")
    assert not (etc / "models.toml").exists()


@pytest.mark.parametrize("raw, what", [
    (b'[models.x]\nvendor = "8086"\ndevice = "37c8"\ndescription = "QAT\x01card"\n',
     "not valid TOML (Illegal character '\\x01' (at line 4, column 19))"),
    (b'[models.x]\nvendor = "8086"\ndevice = "37c8"\ndescription = "Quick\xc4ssist"\n',
     "not UTF-8 text (byte 0xc4 on line 4)"),
])
def test_an_unreadable_models_toml_is_one_line_for_every_command(world, tmp_path, capsys, raw, what):
    root, _ = world
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "models.toml").write_bytes(raw)
    glob = ["--root", str(root), "--config-dir", str(etc), "--state-dir", str(tmp_path / "state")]
    for argv in (["model", "list"], ["model", "remove", "x"], ["model", "add", "y", "--vendor", "1", "--device", "2"],
                 ["devices"], ["devices", "--json"], ["assign", "vm1", "gpu", "--no-bind"]):
        rc, _, err = run(capsys, *glob, *argv)
        line = one_line_exit_2(rc, err, str(etc / "models.toml"), what)
        assert line.endswith("fix that line, or move the file away and add the models again with "
                             "`passthru model add`")
    assert (etc / "models.toml").read_bytes() == raw


# -- directories that are files, loops; links where passthru keeps files ----------------------------------------------
def test_a_state_dir_that_is_a_file(world, tmp_path, capsys):
    root, _ = world
    (tmp_path / "state").write_text("not a directory\n")
    glob = ["--root", str(root), "--config-dir", str(tmp_path / "etc"), "--state-dir", str(tmp_path / "state")]
    for argv in (["assign", "vm1", "gpu", "--no-bind"], ["assignments"], ["release", "vm1"], ["qemu-args", "vm1"],
                 ["store", "check"], ["store", "backup"], ["vgpu", "list"]):
        rc, _, err = run(capsys, *glob, *argv)
        line = one_line_exit_2(rc, err, str(tmp_path / "state"))
        assert "is not a directory" in line and "move it away, or pass --state-dir" in line, argv
    rc, out, err = run(capsys, *glob, "devices", "--json")  # read-only and stateless: still works
    assert rc == 0 and json.loads(out)["devices"], err
    rc, _, err = run(capsys, *glob, "devices")
    assert rc == 0, err


def test_status_on_a_state_dir_that_is_a_file(world, tmp_path, capsys):
    root, _ = world
    (tmp_path / "state").write_text("")
    rc, _, err = run(capsys, "--root", str(root), "--state-dir", str(tmp_path / "state"), "status")
    one_line_exit_2(rc, err, str(tmp_path / "state"))


def test_the_default_state_dir_under_the_root_is_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PASSTHRU_STATE_DIR", raising=False)
    root = fx.gpu_server(tmp_path / "gs")
    (Path(root) / "var" / "lib").mkdir(parents=True, exist_ok=True)
    (Path(root) / "var" / "lib" / "passthru").write_text("")
    rc, _, err = run(capsys, "--root", str(root), "assignments")
    one_line_exit_2(rc, err, f"{root}/var/lib/passthru is not a directory; move it away, or pass --state-dir")


def test_a_state_dir_in_a_symlink_loop(world, tmp_path, capsys):
    root, _ = world
    (tmp_path / "state").symlink_to(tmp_path / "state")
    rc, _, err = run(capsys, "--root", str(root), "--state-dir", str(tmp_path / "state"), "assignments")
    one_line_exit_2(rc, err, str(tmp_path / "state"), "symlink loop", "--state-dir")


def test_a_config_dir_that_is_a_file(world, tmp_path, capsys):
    root, _ = world
    (tmp_path / "etc").write_text("")
    glob = ["--root", str(root), "--config-dir", str(tmp_path / "etc"), "--state-dir", str(tmp_path / "state")]
    for argv in (["model", "list"], ["model", "add", "x", "--vendor", "8086", "--device", "37c8"],
                 ["model", "remove", "x"], ["devices"], ["devices", "--json"], ["assign", "vm1", "gpu", "--no-bind"]):
        rc, _, err = run(capsys, *glob, *argv)
        one_line_exit_2(rc, err, f"{tmp_path}/etc is not a directory; move it away, or pass --config-dir")


def test_a_symlinked_record_is_one_line_and_its_target_untouched(world, tmp_path, capsys):
    root, _ = world
    target = tmp_path / "precious.json"
    target.write_text('{"address": "0000:86:00.0"}')
    (tmp_path / "state" / "vfio").mkdir(parents=True)
    (tmp_path / "state" / "vfio" / "0000:86:00.0.json").symlink_to(target)
    glob = ["--root", str(root), "--state-dir", str(tmp_path / "state")]
    for argv in (["status"], ["status", "--json"]):
        rc, _, err = run(capsys, *glob, *argv)
        one_line_exit_2(rc, err, "0000:86:00.0.json is a symbolic link; passthru does not follow links")
    assert target.read_text() == '{"address": "0000:86:00.0"}'


# -- the safety net in main(): what no check caught is still one line ----------------------------------------------
def test_an_escaped_oserror_is_one_line_exit_1(world, tmp_path, capsys, monkeypatch):
    import errno

    from passthru.service.session import Session

    def failing_disk(self, **kw):  # the stimulus: a read error no check anticipates
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/sys/bus/pci/devices/0000:86:00.0/config")

    monkeypatch.setattr(Session, "inventory", failing_disk)
    rc, out, err = run(capsys, "--root", str(world[0]), "devices")
    assert rc == 1 and out == "" and err == ("passthru: /sys/bus/pci/devices/0000:86:00.0/config: "
                                             "Input/output error\n")


def test_an_escaped_database_error_is_one_line_exit_1(world, tmp_path, capsys, monkeypatch):
    from sqlalchemy.exc import ProgrammingError

    from passthru.inventory.store import Store

    def broken(self, *a, **kw):  # an error translate() leaves alone (a programming error) reaches main()
        raise ProgrammingError("SELECT 1", {}, sqlite3.ProgrammingError("Cannot operate on a closed database.\nx"))

    monkeypatch.setattr(Store, "assignments", broken)
    rc, out, err = run(capsys, "--root", str(world[0]), "--state-dir", str(tmp_path / "s"), "assignments")
    assert rc == 1 and err == ("passthru: inventory database error: Cannot operate on a closed database.; "
                               "`passthru store check` says more\n")


def test_store_backup_refusals(world, tmp_path, capsys):
    glob = ["--root", str(world[0]), "--state-dir", str(tmp_path / "state")]
    rc, _, err = run(capsys, *glob, "store", "backup")
    one_line_exit_2(rc, err, f"{tmp_path}/state/passthru.db: no inventory database yet; nothing to back up")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "passthru.db").write_bytes(world[1])
    rc, _, err = run(capsys, *glob, "store", "backup", "-o", "/no/such/dir/x.db")
    one_line_exit_2(rc, err, "-o /no/such/dir/x.db: /no/such/dir is not a directory; choose another file")
    rc, out, _ = run(capsys, *glob, "store", "backup", "-o", str(tmp_path / "copy.db"))
    assert rc == 0 and os.stat(tmp_path / "copy.db").st_mode & 0o777 == 0o600
    with sqlite3.connect(tmp_path / "copy.db") as c:
        assert c.execute("SELECT count(*) FROM assignments WHERE vm = 'vm1'").fetchone()[0] == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_status_as_a_user_who_cannot_read_the_state_dir_never_says_nothing_is_held(world, tmp_path):
    """D8: `status` run by an unprivileged user against root's 0700 state directory: an error naming the directory
    and the fix, exit 2, never "passthru holds no devices"."""
    root, _ = world
    state = tmp_path / "state"
    (state / "vfio").mkdir(parents=True)
    (state / "vfio" / "0000:86:00.0.json").write_text("{}")
    os.chmod(state, 0o700)
    os.chmod(tmp_path, 0o755)
    src = str(Path(__file__).resolve().parent.parent / "src")
    # one run as root first, against an empty state dir: every module the command needs is imported while the
    # interpreter's own files (under root's home here) are still readable; then the same command as "nobody"
    code = ("import contextlib, io, os, sys; sys.path.insert(0, sys.argv[1]); from passthru.cli import main; "
            "argv = sys.argv[2:]; out = contextlib.redirect_stdout(io.StringIO()); out.__enter__(); "
            "main([a if a != argv[-2] else argv[-2] + '.empty' for a in argv]); out.__exit__(None, None, None); "
            "os.setgid(65534); os.setuid(65534); sys.exit(main(argv))")
    (tmp_path / "state.empty").mkdir()
    p = subprocess.run([sys.executable, "-c", code, src, "--root", str(root), "--state-dir", str(state), "status"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": "/"})
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "holds no devices" not in p.stdout
    assert p.stderr.count("\n") == 1 and "Permission denied" in p.stderr and str(state) in p.stderr, p.stderr
