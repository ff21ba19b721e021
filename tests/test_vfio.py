"""Device takeover (`passthru bind/restore/reconcile/apply-boot`) on fixture hosts, against a fake kernel that moves
driver links the way the PCI driver core does and can fail or "die" at any write (tests/fake_kernel.py). The same
commands run on a real kernel in tests/lab/test_lab_vfio.py."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from fake_kernel import Crash, FakeKernel
from passthru.cli import main as cli_main
from passthru.config import Paths
from passthru.errors import HostError, NotFoundError, UsageError
from passthru.host.root import HostRoot
from passthru.vfio import BOUND, Holdings, RefusedError, apply_boot, bind, reconcile, restore, status

GPU, AUDIO = "0000:86:00.0", "0000:86:00.1"  # gpu_server: GTX 1080 Ti on nouveau + HDMI audio, IOMMU group 38
BOOT_VGA = "0000:02:00.0"


@pytest.fixture
def host(tmp_path):
    root = Path(fx.gpu_server(tmp_path / "gs"))
    h = HostRoot(root)
    return h, Paths.for_root(h), FakeKernel(h)


def driver(h: HostRoot, addr: str) -> str | None:
    return h.link_name(f"{h.sys}/bus/pci/devices/{addr}/driver")


def override(h: HostRoot, addr: str) -> str:
    return h.read(f"{h.sys}/bus/pci/devices/{addr}/driver_override")


def test_a_gpu_alone_is_refused_naming_its_audio_function(host):
    h, paths, k = host
    with pytest.raises(RefusedError) as e:
        bind(h, paths, [GPU], kernel=k)
    assert f"shares IOMMU group 38 with {AUDIO} (snd_hda_intel)" in str(e.value) and "--group" in str(e.value)
    assert k.writes == [] and driver(h, GPU) == "nouveau" and Holdings(paths).holdings() == []


def test_group_bind_then_restore(host):
    h, paths, k = host
    out = bind(h, paths, [GPU], group=True, kernel=k)
    assert [(d.address, d.before, d.after, d.status, d.mate_of) for d in out.devices] == [
        (GPU, "nouveau", "vfio-pci", "changed", None), (AUDIO, "snd_hda_intel", "vfio-pci", "changed", GPU)]
    assert driver(h, GPU) == driver(h, AUDIO) == "vfio-pci" and override(h, GPU) == "vfio-pci"
    assert os.path.exists(f"{h.dev}/vfio/38")
    held = {r.address: r for r in Holdings(paths).holdings()}
    assert held[GPU].prior_driver == "nouveau" and held[AUDIO].prior_driver == "snd_hda_intel"
    assert {r.phase for r in held.values()} == {BOUND} and held[GPU].iommu_group == 38
    # the exact kernel protocol, never new_id
    assert k.writes[:3] == [(f"/bus/pci/devices/{GPU}/driver_override", "vfio-pci"),
                            (f"/bus/pci/drivers/nouveau/unbind", GPU), ("/bus/pci/drivers_probe", GPU)]
    assert not any("new_id" in w[0] for w in k.writes)
    audit = list(Holdings(paths).audit_entries())
    assert [(a["action"], a["device"], a["before"], a["after"]) for a in audit] == [
        ("bind", GPU, "nouveau", "vfio-pci"), ("bind", AUDIO, "snd_hda_intel", "vfio-pci")]
    assert audit[0]["caller"]["pid"] == os.getpid()

    n = len(k.writes)
    again = bind(h, paths, [GPU, AUDIO], kernel=k)
    assert {d.status for d in again.devices} == {"unchanged"} and not again.changed and len(k.writes) == n

    back = restore(h, paths, [GPU], kernel=k)
    assert [(d.address, d.after, d.status) for d in back.devices] == [
        (GPU, "nouveau", "restored"), (AUDIO, "snd_hda_intel", "restored")]
    assert back.devices[1].mate_of == GPU
    assert override(h, GPU) == "(null)" and override(h, AUDIO) == "(null)"
    assert not os.path.exists(f"{h.dev}/vfio/38") and Holdings(paths).holdings() == []


def test_dry_run_changes_nothing(host):
    h, paths, k = host
    out = bind(h, paths, [GPU], group=True, dry_run=True, kernel=k)
    assert [d.status for d in out.devices] == ["would change", "would change"]
    assert k.writes == [] and not os.path.exists(paths.state_dir)


def test_bad_input_is_exit_2_and_changes_nothing(host, capsys):
    h, paths, k = host
    root = str(h.base)
    assert cli_main(["--root", root, "bind", "86:00"]) == 2
    assert "is not a PCI address" in capsys.readouterr().err
    assert cli_main(["--root", root, "bind", "0000:99:00.0"]) == 2
    assert "no such PCI device" in capsys.readouterr().err
    assert cli_main(["--root", root, "bind", GPU]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--group" in err
    assert cli_main(["--root", root, "restore", GPU]) == 2
    assert "does not hold this device" in capsys.readouterr().err
    assert cli_main(["--root", root, "bind", "0000:00:1c.0"]) == 2
    assert "PCI bridge" in capsys.readouterr().err
    # a fixture root has no kernel to bind with: said plainly, before any record is written
    assert cli_main(["--root", root, "bind", GPU, "--group"]) == 2
    assert "needs the live host" in capsys.readouterr().err
    assert not os.path.exists(paths.state_dir)
    with pytest.raises(UsageError):
        bind(h, paths, [], kernel=k)
    with pytest.raises(NotFoundError):
        bind(h, paths, ["0000:99:00.0"], kernel=k)


def test_boot_vga_refused_unless_allowed(host):
    h, paths, k = host
    with pytest.raises(RefusedError) as e:
        bind(h, paths, [BOOT_VGA], kernel=k)
    assert e.value.refusals[0].override == "--allow-boot-vga" and k.writes == []
    out = bind(h, paths, [BOOT_VGA], allow=frozenset({"--allow-boot-vga"}), kernel=k)
    assert driver(h, BOOT_VGA) == "vfio-pci" and "boot" in out.warnings[0].lower()


def test_a_failing_write_rolls_every_device_back(host):
    h, paths, k = host
    k.fail("unbind", errno.EBUSY, addr=AUDIO)
    with pytest.raises(HostError) as e:
        bind(h, paths, [GPU], group=True, kernel=k)
    msg = str(e.value)
    assert f"{AUDIO}: unbinding from snd_hda_intel" in msg and "in use" in msg and "back on its prior driver" in msg
    assert driver(h, GPU) == "nouveau" and driver(h, AUDIO) == "snd_hda_intel"
    assert override(h, GPU) == "(null)" and override(h, AUDIO) == "(null)"
    assert Holdings(paths).holdings() == [] and not os.path.exists(f"{h.dev}/vfio/38")
    assert [a["action"] for a in Holdings(paths).audit_entries()] == ["bind", "bind", "restore", "restore"]


def test_vfio_pci_that_never_binds_times_out_and_rolls_back(host):
    h, paths, k = host
    k.stubborn.add(GPU)
    with pytest.raises(HostError, match=f"{GPU}: waiting for vfio-pci and /dev/vfio/<group>: not done after"):
        bind(h, paths, [GPU], group=True, kernel=k)
    assert driver(h, GPU) == "nouveau" and Holdings(paths).holdings() == []


def test_vfio_pci_is_loaded_first_and_a_missing_module_changes_nothing(tmp_path):
    root = Path(fx.broken_desktop(tmp_path / "bd"))
    h = HostRoot(root)
    assert not os.path.isdir(f"{h.sys}/bus/pci/drivers/vfio-pci")
    k = FakeKernel(h)
    k.modprobe_fails = True
    with pytest.raises(HostError, match="modprobe vfio-pci failed"):
        bind(h, Paths.for_root(h), ["0000:06:00.1"], group=True, allow=frozenset({"--allow-boot-vga"}), kernel=k)
    assert k.writes == [] and driver(h, "0000:06:00.1") == "snd_hda_intel"
    assert Holdings(Paths.for_root(h)).holdings() == []


def _consistent(h: HostRoot, paths: Paths, k: FakeKernel, addrs: list[str]) -> None:
    """Every device either back on its own driver with no override and no record, or on vfio-pci and recorded."""
    held = {r.address: r for r in Holdings(paths).holdings()}
    for a in addrs:
        d = driver(h, a)
        if a in held:
            assert d == "vfio-pci" and held[a].phase == BOUND, (a, d, held[a])
        else:
            assert d == k.native[a] and override(h, a) == "(null)", (a, d, override(h, a))


@pytest.mark.parametrize("when", range(1, 9))
def test_killed_at_any_write_of_a_bind_reconcile_reaches_a_consistent_host(tmp_path, when):
    h = HostRoot(Path(fx.gpu_server(tmp_path / "gs")))
    paths = Paths.for_root(h)
    k = FakeKernel(h)
    k.crash_at = when
    with pytest.raises(Crash):
        bind(h, paths, [GPU], group=True, kernel=k)
    k.crash_at = None
    out = reconcile(h, paths, kernel=k)
    _consistent(h, paths, k, [GPU, AUDIO])
    assert out.error is None
    # and a later bind still works from there
    bind(h, paths, [GPU], group=True, kernel=k)
    assert driver(h, GPU) == driver(h, AUDIO) == "vfio-pci"


@pytest.mark.parametrize("when", range(1, 9))
def test_killed_during_restore_reconcile_finishes_it(tmp_path, when):
    h = HostRoot(Path(fx.gpu_server(tmp_path / "gs")))
    paths = Paths.for_root(h)
    k = FakeKernel(h)
    bind(h, paths, [GPU], group=True, kernel=k)
    k.crash_at = k.steps + when
    with pytest.raises(Crash):
        restore(h, paths, [GPU], kernel=k)
    k.crash_at = None
    reconcile(h, paths, kernel=k)
    _consistent(h, paths, k, [GPU, AUDIO])


def test_persist_and_apply_boot_after_a_reboot(host):
    h, paths, k = host
    out = bind(h, paths, [GPU], group=True, persist=True, kernel=k)
    assert out.persisted == [GPU, AUDIO]
    doc = json.loads(Path(paths.config_dir, "vfio.d", f"{GPU}.json").read_text())
    assert doc == {"schema": 1, "address": GPU, "vendor_id": "10de", "device_id": "1b06", "driver": "vfio-pci"}
    # "reboot": the kernel forgets overrides and binds the native drivers; the state directory survives
    for a in (GPU, AUDIO):
        k._unlink(a, "vfio-pci")
        Path(h.sys, "bus/pci/devices", a, "driver_override").write_text("(null)\n")
        k._link(a, k.native[a])
    booted = apply_boot(h, paths, kernel=k)
    assert driver(h, GPU) == driver(h, AUDIO) == "vfio-pci"
    assert [d.status for d in booted.devices if d.status == "dropped"] == ["dropped", "dropped"]
    assert {r.address: r.prior_driver for r in Holdings(paths).holdings()} == {GPU: "nouveau", AUDIO: "snd_hda_intel"}
    st = status(h, paths)
    assert all(x["consistent"] and x["persisted"] for x in st["held"])
    restore(h, paths, None, kernel=k)
    assert not Path(paths.config_dir, "vfio.d", f"{GPU}.json").exists() and driver(h, GPU) == "nouveau"


def test_apply_boot_skips_a_different_card_in_the_slot(host):
    h, paths, k = host
    bind(h, paths, [GPU], group=True, persist=True, kernel=k)
    restore(h, paths, None, kernel=k)
    Path(paths.config_dir, "vfio.d").mkdir(parents=True, exist_ok=True)
    Path(paths.config_dir, "vfio.d", f"{GPU}.json").write_text(json.dumps(
        {"schema": 1, "address": GPU, "vendor_id": "1002", "device_id": "731f", "driver": "vfio-pci"}))
    out = apply_boot(h, paths, kernel=k)
    assert "different device" in out.error and driver(h, GPU) == "nouveau"


def test_restore_when_the_prior_driver_module_was_unloaded(host):
    h, paths, k = host
    bind(h, paths, [GPU], group=True, kernel=k)
    Path(h.sys, "bus/pci/drivers/nouveau").rename(Path(h.sys, "nouveau.unloaded"))
    restore(h, paths, [GPU], kernel=k)
    assert "nouveau" in k.modprobed and driver(h, GPU) == "nouveau"


@pytest.fixture
def busy(tmp_path):
    h = HostRoot(Path(fx.busy_host(tmp_path / "busy")))
    return h, Paths.for_root(h), FakeKernel(h)


def _refusal(h, paths, k, addrs, **kw):
    with pytest.raises(RefusedError) as e:
        bind(h, paths, addrs, kernel=k, **kw)
    assert k.writes == [] and Holdings(paths).holdings() == [] and not os.path.exists(paths.state_dir)
    return e.value.refusals


def test_refusals_on_a_busy_host(busy):
    """Each way a host uses a device, named with its reason; none of them changes anything."""
    h, paths, k = busy
    r = _refusal(h, paths, k, ["0000:5e:00.0"])  # NVMe with a mounted xfs
    assert "nvme0n1p1" in r[0].reason and "/var/lib/libvirt/images" in r[0].reason and r[0].override is None
    r = _refusal(h, paths, k, ["0000:5f:00.0"])  # NVMe that is an LVM PV (held by dm-2)
    assert "vg1-data" in r[0].reason and r[0].override is None
    # the root filesystem's RAID1 spans both AHCI controllers: each refused
    for ahci in ("0000:00:11.5", "0000:00:17.0"):
        r = _refusal(h, paths, k, [ahci])
        assert any("mounted on /" in x.reason for x in r), r
    r = _refusal(h, paths, k, ["0000:3b:00.0"])  # eno1 in bond0 under br0, which has the default route
    assert "br0" in r[0].reason and "default route" in r[0].reason and r[0].override == "--force-netdev"
    r = _refusal(h, paths, k, ["0000:03:00.0"])  # the PCI serial card carrying the serial console
    assert "ttyS4" in r[0].reason and r[0].override is None
    r = _refusal(h, paths, k, ["0000:3d:00.0"])  # E810 PF whose VFs are in use
    assert any("0000:3d:02.1" in x.reason and "vfio-pci" in x.reason for x in r) and r[0].override is None
    # an idle NVMe goes through
    bind(h, paths, ["0000:60:00.0"], kernel=k)
    assert driver(h, "0000:60:00.0") == "vfio-pci"


def test_force_netdev_takes_a_nic_with_an_address_and_says_so(busy):
    h, paths, k = busy
    r = _refusal(h, paths, k, ["0000:3c:00.0"])
    assert r[0].reason == "ens2f0 has route 198.51.100.0/24"
    out = bind(h, paths, ["0000:3c:00.0"], allow=frozenset({"--force-netdev"}), kernel=k)
    assert driver(h, "0000:3c:00.0") == "vfio-pci" and "198.51.100.0/24" in out.warnings[0]
    # a NIC with only a link-local address is not in use
    bind(h, paths, ["0000:3c:00.1"], kernel=k)
    assert driver(h, "0000:3c:00.1") == "vfio-pci"
    with pytest.raises(UsageError, match="unknown override --yolo"):
        bind(h, paths, ["0000:3c:00.1"], allow=frozenset({"--yolo"}), kernel=k)


def test_a_group_mate_the_host_uses_refuses_the_whole_request(tmp_path):
    """broken_desktop: the GTX 1080 Ti shares group 7 (no ACS) with the chipset's xHCI and SATA controllers. With a
    filesystem mounted from the SATA disk, --group must refuse and say which mate and why."""
    b = fx.make_broken_desktop(tmp_path / "bd")
    b.sata("0000:05:00.0", serial="WD-1", partitions=(512, 900_000))
    b.proc(mountinfo=True)
    b.mount("/dev/sda2", "/", "ext4")
    b.build()
    h = HostRoot(b.root)
    k = FakeKernel(h)
    paths = Paths.for_root(h)
    with pytest.raises(RefusedError) as e:
        bind(h, paths, ["0000:03:00.0"], group=True, kernel=k)
    r = [x for x in e.value.refusals if x.address == "0000:05:00.0"][0]
    assert r.via == "0000:03:00.0" and "mounted on /" in r.reason
    assert "(IOMMU group mate of 0000:03:00.0)" in str(e.value) or "more" in str(e.value)
    assert k.writes == []
