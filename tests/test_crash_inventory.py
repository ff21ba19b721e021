"""A kill -9 at every step of `assign` and `release`, then `reconcile`: the inventory agrees with the kernel. Every
PCI device a VM holds is on vfio-pci and recorded by the takeover; nothing is left pending or half-moved; an
interrupted assign is undone, an interrupted release finished. Plus the disagreements reconcile finds when nothing
crashed (a held device given back by hand, one gone from the host) and the refusals of qemu-args/attach.

Kills are failpoints (passthru/failpoints.py) raising :class:`Crash`, which passthru's except-clauses never see;
the same matrix runs on a real kernel in tests/lab/test_lab_crash.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import sysfs_fixtures as fx
import crash_points as cp
from fake_kernel import FakeKernel
from passthru.cli import main as cli_main
from passthru.service.session import Session
from passthru.errors import UsageError
from passthru.service.assign import assign, open_store
from passthru.service.release import release
from passthru.journal import journal_for
from passthru.service.reconcile import reconcile
from passthru.vfio import BOUND, Holdings
from passthru.vfio import restore

GPU, AUDIO = "0000:86:00.0", "0000:86:00.1"


def _host(d: Path) -> tuple[Session, FakeKernel]:
    s = Session(str(fx.gpu_server(d)), None, None)
    return s, FakeKernel(s.host)


def agrees(s: Session, k: FakeKernel) -> dict[str, str]:
    """The invariant after reconcile: {device: vm} of what is held, each held PCI device on vfio-pci with a bound
    takeover record, no pending claim, no journal entry, every IOMMU group of the GPU whole."""
    store = open_store(s)
    active = store.assignments()
    assert all(a.state in ("reserved", "attached") for a in active), active
    holdings = {r.address: r for r in Holdings(s.paths).holdings()}
    for a in active:
        if a.device.startswith("pci:"):
            addr = a.device[4:]
            assert k.driver_of(addr) == "vfio-pci" and holdings[addr].phase == BOUND, (a, k.driver_of(addr))
    sides = {k.driver_of(a) == "vfio-pci" for a in (GPU, AUDIO)}
    assert len(sides) == 1, {a: k.driver_of(a) for a in (GPU, AUDIO)}
    for a in (GPU, AUDIO):
        if a not in holdings:
            assert k.driver_of(a) == k.native[a] and k.override_of(a) is None
    assert journal_for(s.paths.state_dir).entries() == []
    return {a.device: a.vm for a in active}


def test_every_point_of_an_assign(tmp_path):
    s, k = _host(tmp_path / "trace")
    pts = cp.points(lambda: assign(s, "vm1", [GPU], kernel=k))
    assert pts[:2] == ["assign.intent", "assign.claimed"] and "vfio.bind.intent" in pts, pts
    assert pts[-1] == "assign.finished"
    outcomes = []
    for n in range(1, len(pts) + 1):
        s, k = _host(tmp_path / f"kill{n}")
        where = cp.crash_at(n, lambda: assign(s, "vm1", [GPU], kernel=k))
        rep = reconcile(s, kernel=k)
        assert rep["ok"], (n, where, rep)
        held = agrees(s, k)
        outcomes.append((where, held))
        if n > 1:
            assert rep["status"] == "changed", (n, where, rep)
        assert reconcile(s, kernel=k)["status"] == "unchanged"
        # and the host is usable from there: the assignment can be made (again)
        assign(s, "vm1", [GPU], kernel=k)
        assert agrees(s, k) == {f"pci:{GPU}": "vm1", f"pci:{AUDIO}": "vm1"}
    # killed before its claims became final: undone; after: kept as made
    assert all(held == {} for where, held in outcomes[:-1]), outcomes
    assert outcomes[-1][1] == {f"pci:{GPU}": "vm1", f"pci:{AUDIO}": "vm1"}


@pytest.mark.parametrize("restore_drivers", [False, True], ids=["keep-vfio", "restore"])
def test_every_point_of_a_release(tmp_path, restore_drivers):
    def assigned(d: Path):
        s, k = _host(d)
        assign(s, "vm1", [GPU], kernel=k)
        return s, k

    s, k = assigned(tmp_path / "trace")
    pts = cp.points(lambda: release(s, "vm1", restore=restore_drivers, kernel=k))
    assert pts[0] == "release.intent" and ("vfio.restore.intent" in pts) == restore_drivers, pts
    for n in range(1, len(pts) + 1):
        s, k = assigned(tmp_path / f"kill{n}")
        where = cp.crash_at(n, lambda: release(s, "vm1", restore=restore_drivers, kernel=k))
        rep = reconcile(s, kernel=k)
        assert rep["ok"], (n, where, rep)
        assert agrees(s, k) == {}, (n, where)  # an interrupted release is always finished
        on_vfio = k.driver_of(GPU) == "vfio-pci"
        assert on_vfio != restore_drivers, (n, where)


def test_a_failed_assign_undoes_only_its_own_claims(tmp_path):
    """The VM's earlier holdings stay when a later assign fails (the old rollback released them too)."""
    s, k = _host(tmp_path)
    assign(s, "vm1", [GPU], kernel=k)
    k.fail("unbind", 16, addr="0000:87:00.0")  # EBUSY on the second GPU
    with pytest.raises(Exception, match="in use"):
        assign(s, "vm1", ["0000:87:00.0"], kernel=k)
    assert agrees(s, k) == {f"pci:{GPU}": "vm1", f"pci:{AUDIO}": "vm1"}
    assert k.driver_of("0000:87:00.0") == "nouveau"


def test_a_held_device_given_back_by_hand_is_taken_over_again(tmp_path):
    s, k = _host(tmp_path)
    assign(s, "vm1", [GPU], kernel=k)
    restore(s.host, s.paths, [GPU], kernel=k)  # the VM still holds it, but it is back on nouveau
    with pytest.raises(UsageError, match=f"{GPU} is on nouveau, not vfio-pci"):
        _qemu_args(s)
    rep = reconcile(s, kernel=k)
    assert rep["ok"] and rep["status"] == "changed", rep
    assert [(a["device"], a["action"]) for a in rep["inventory"]["assignments"]] == [
        (f"pci:{GPU}", "taken over"), (f"pci:{AUDIO}", "taken over")][:len(rep["inventory"]["assignments"])]
    assert agrees(s, k) == {f"pci:{GPU}": "vm1", f"pci:{AUDIO}": "vm1"}
    assert "vfio-pci,host=0000:86:00.0" in " ".join(_qemu_args(s))


def test_a_held_device_gone_from_the_host_fails_reconcile_and_qemu_args(tmp_path, capsys):
    s, k = _host(tmp_path)
    assign(s, "vm1", [GPU], kernel=k)
    for a in (GPU, AUDIO):  # hot-removed (and the kernel drops the device and its driver link)
        dev = Path(s.host.sys, "bus/pci/devices", a)
        shutil.rmtree(dev.resolve())
        dev.unlink()
        Path(s.host.sys, "bus/pci/drivers/vfio-pci", a).unlink()
    rep = reconcile(s, kernel=k)
    assert not rep["ok"] and f"{GPU} held by VM 'vm1' is gone from the host: `passthru release vm1 {GPU}`" in \
        rep["error"]
    root = str(s.host.base)
    assert cli_main(["--root", root, "qemu-args", "vm1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{GPU} is not on this host" in err


def test_attach_with_a_qmp_path_that_is_not_a_socket_is_bad_input(tmp_path, capsys):
    s, k = _host(tmp_path)
    assign(s, "vm1", [GPU], kernel=k)
    root = str(s.host.base)
    assert cli_main(["--root", root, "attach", "vm1", GPU, "--qmp", "/etc/passwd"]) == 2
    assert "/etc/passwd is not a unix socket" in capsys.readouterr().err
    assert cli_main(["--root", root, "attach", "vm1", GPU, "--qmp", str(tmp_path / "none.sock")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _qemu_args(s: Session) -> list[str]:
    from passthru.service.hotplug import vm_attachments
    from passthru.vm.qemu import qemu_args

    return qemu_args(vm_attachments(s, "vm1")).argv
