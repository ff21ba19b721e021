"""`assign`, `release` and `restore` with --dry-run (issue #13): they show what would be claimed, released and moved,
refuse exactly what the real run refuses, and change nothing - the whole fixture tree (host and state directory,
inventory database included) is compared byte for byte before and after. Then the real run does what the dry run
said (through the fake kernel)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru.cli import main as cli_main
from passthru.service.session import Session
from passthru.service.assign import assign, open_store
from passthru.service.release import release
from passthru.vfio import restore
from prepare_fixtures import snapshot

GPU1, GPU3, GPU4, NVME_MOUNTED, T4, VF = "0000:18:00.0", "0000:86:00.0", "0000:87:00.0", "0000:5e:00.0", "0000:af:00.0", "0000:3b:00.2"


@pytest.fixture
def host(tmp_path):
    """gpu_server where vm1 holds the 1080 Ti on 87:00 (+ audio), moved to vfio-pci by passthru (fake kernel)."""
    root = Path(fx.gpu_server(tmp_path / "gs"))
    s = Session(str(root))
    k = FakeKernel(s.host)
    assign(s, "vm1", [GPU4], kernel=k)
    return root, s, k


def tree(root: Path) -> dict:
    """Every file and link under the root, the inventory database as its SQL dump: SQLite may checkpoint its
    write-ahead log into the file whenever a connection closes, even a reader's, which changes the bytes but not
    one row."""
    out = {k: v for k, v in snapshot(root, skip=()).items() if ".db" not in k}
    db = root / "var/lib/passthru/passthru.db"
    if db.exists():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            out["passthru.db (dump)"] = "\n".join(conn.iterdump())
        finally:
            conn.close()
    return out


def cli(capsys, root: Path, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(["--root", str(root), *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_assign_dry_run_shows_the_claims_and_moves_and_writes_nothing(host, capsys):
    root, s, k = host
    before = tree(root)
    rc, out, _ = cli(capsys, root, "assign", "vm2", "gpu", "usb:1-2", "--dry-run", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["dry_run"] is True and all(a["id"] is None for a in doc["assignments"])
    devices = [a["device"] for a in doc["assignments"]]
    assert devices == ["usb:1-2", f"pci:{GPU1}", "pci:0000:18:00.1"] and doc["bound"] == [GPU1, "0000:18:00.1"]
    rc, out, _ = cli(capsys, root, "assign", "vm2", "gpu", "usb:1-2", "--dry-run")
    assert rc == 0 and f"{GPU1}: would move to vfio-pci (nvidia -> vfio-pci)" in out
    assert "vm2: usb:1-2 would be reserved" in out and out.endswith("dry run: nothing was changed\n")
    assert tree(root) == before
    real = assign(s, "vm2", ["gpu", "usb:1-2"], kernel=k)
    assert [a.device for a in real.assignments] == devices and real.bound == doc["bound"]


def test_a_dry_run_on_a_fresh_state_dir_creates_nothing(tmp_path, capsys):
    root = Path(fx.gpu_server(tmp_path / "gs"))
    before = tree(root)
    rc, out, _ = cli(capsys, root, "assign", "vm1", VF, "--mac", "52:54:00:12:34:56", "--dry-run")
    assert rc == 0 and f"{VF}: VF settings would be set (mac 52:54:00:12:34:56)" in out
    assert tree(root) == before and not (root / "var/lib/passthru").exists()


@pytest.mark.parametrize("argv", [
    ["vm2", "0000:87:00.1"],  # vm1 holds it
    ["vm2", NVME_MOUNTED],  # the host's root file system
    ["vm2", T4, "--no-bind"],  # hosts a live vGPU
    ["vm2", "0000:86:00.0", "--mac", "52:54:00:12:34:56"],  # not a VF
    ["vm2", "nvme", "--numa", "1"],  # none on node 1
    ["vm2", "usb:dead:beef"],
])
def test_assign_dry_run_refuses_what_the_real_run_refuses(host, capsys, argv):
    root, _, _ = host
    before = tree(root)
    rc_dry, out_dry, err_dry = cli(capsys, root, "assign", *argv, "--dry-run")
    assert tree(root) == before
    rc, out, err = cli(capsys, root, "assign", *argv)
    assert (rc_dry, out_dry, err_dry) == (rc, out, err) and rc == 2 and err.count("\n") == 1, err


def test_release_dry_run(host, capsys):
    root, s, k = host
    before = tree(root)
    rc, out, _ = cli(capsys, root, "release", "vm1", "--restore", "--dry-run")
    assert rc == 0 and f"vm1: pci:{GPU4} would be released" in out
    assert f"{GPU4}: would restore (vfio-pci -> nouveau)" in out and "0000:87:00.1: would restore" in out
    rc, out, _ = cli(capsys, root, "release", "vm1", "--restore", "--dry-run", "--json")
    doc = json.loads(out)
    assert doc["released"] == [f"pci:{GPU4}", "pci:0000:87:00.1"] and doc["vgpus_removed"] == []
    assert [(m["address"], m["from"], m["to"]) for m in doc["restored"]] == [
        (GPU4, "vfio-pci", "nouveau"), ("0000:87:00.1", "vfio-pci", "snd_hda_intel")]
    for argv in (["vm9"], ["vm1", GPU3]):
        rc_dry, _, err_dry = cli(capsys, root, "release", *argv, "--dry-run")
        rc, _, err = cli(capsys, root, "release", *argv)
        assert (rc_dry, err_dry) == (rc, err) and rc == 2
    assert tree(root) == before
    release(s, "vm1", restore=True, kernel=k)
    assert open_store(s).assignments("vm1") == [] and s.host.link_name(
        f"{s.host.sys}/bus/pci/devices/{GPU4}/driver") == "nouveau"


def test_restore_dry_run(host, capsys):
    root, s, k = host
    before = tree(root)
    rc, out, _ = cli(capsys, root, "restore", "0000:87:00.1", "--dry-run")
    assert rc == 0 and "0000:87:00.1: would restore (vfio-pci -> snd_hda_intel)" in out
    assert f"{GPU4} (group mate of 0000:87:00.1): would restore (vfio-pci -> nouveau)" in out
    rc_dry, _, err_dry = cli(capsys, root, "restore", GPU3, "--dry-run")
    rc, _, err = cli(capsys, root, "restore", GPU3)
    assert (rc_dry, err_dry) == (rc, err) and rc == 2 and "does not hold" in err
    assert tree(root) == before
    out = restore(s.host, s.paths, None, kernel=k)
    assert sorted(d.address for d in out.devices) == [GPU4, "0000:87:00.1"]
