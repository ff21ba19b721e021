"""``passthru prepare --early`` and Proxmox hosts against fake host roots (tests/prepare_fixtures.py): the
modprobe.d file (ids=, the subsystem form, softdeps), the initramfs per tool, the rebuild before the boot
loader's command, idempotence, failures restoring every byte, rollback, the refusals (shared IDs, devices the
host uses, bad input) touching nothing, vfio-pci built in, and proxmox-boot-tool detection and regeneration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from passthru.cli import main
from passthru.config import Paths
from passthru.errors import HostError, NotFoundError, UsageError
from passthru.host.root import HostRoot
from passthru.prepare import (ALLOW_SHARED_IDS, HostFacts, PrepareOptions, apply_plan, format_plan, make_plan,
                              rollback)
from prepare_fixtures import (ITOOLS_MODULES_STOCK, KERNELS, PROXMOX_GRUB, FakeRunner, boot_host, grubby_effect,
                              initramfs_effect, snapshot)

INTEL61 = HostFacts("intel", (6, 1), True)
K61 = KERNELS[(6, 1)]
EARLY = "/etc/modprobe.d/passthru-vfio.conf"
PREPARED_GRUB = PROXMOX_GRUB.replace("Proxmox VE", "Debian").replace('GRUB_CMDLINE_LINUX=""',
                                                                   'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"')
REBUILD = ["update-initramfs", "-u", "-k", "all"]
REFRESH = ["proxmox-boot-tool", "refresh"]


def workstation(b) -> None:
    """A desktop turned host: the iGPU shows the console (boot VGA), a GTX 1080 Ti + HDMI audio on nouveau, two
    82574L NICs of one model (enp3s0 carries the host's address), and a second 1080 Ti from another board maker."""
    b.pci("0000:00:02.0", 0x8086, 0x3E92, 0x030000, driver="i915", boot_vga=True, subsystem=(0x1462, 0x7B17),
          link=None)
    b.bridge("0000:00:01.0", device=0x1901)
    for fn, dev, cls, drv in ((0, 0x1B06, 0x030000, "nouveau"), (1, 0x10EF, 0x040300, "snd_hda_intel")):
        b.pci(f"0000:01:00.{fn}", 0x10DE, dev, cls, parent="0000:00:01.0", driver=drv, subsystem=(0x10DE, 0x120F),
              multifunction=True)
    for port, bus in (("0000:00:1c.0", 2), ("0000:00:1c.4", 3)):
        b.bridge(port, device=0xA330 + bus)
        b.pci(f"0000:{bus:02x}:00.0", 0x8086, 0x10D3, 0x020000, parent=port, driver="e1000e",
              subsystem=(0x8086, 0xA01F))
        b.netdev(f"0000:{bus:02x}:00.0", f"enp{bus}s0", f"00:1b:21:aa:bb:0{bus}")
    b.ip("enp3s0", "192.168.1.20/24", gateway="192.168.1.1")
    b.bridge("0000:00:1d.0", device=0xA298)
    b.pci("0000:04:00.0", 0x10DE, 0x1B06, 0x030000, parent="0000:00:1d.0", driver="nouveau",
          subsystem=(0x1462, 0x3609))


def host(tmp_path, kind="debian", **kw) -> tuple[Path, HostRoot, Paths]:
    kw.setdefault("kernel", K61)
    kw.setdefault("grub", PREPARED_GRUB if kind == "debian" else None)
    root = boot_host(tmp_path, kind, pci=workstation, **kw)
    h = HostRoot(root)
    return root, h, Paths.for_root(h)


def read(root: Path, path: str) -> str:
    return (root / path.lstrip("/")).read_text()


def early(*addresses: str, **kw) -> PrepareOptions:
    return PrepareOptions(early=addresses, overrides=frozenset(kw.pop("overrides", ())), **kw)


# -- the files and commands -------------------------------------------------------------------------------------
def test_early_debian_plan_apply_idempotent_rollback(tmp_path):
    root, h, paths = host(tmp_path)
    before = snapshot(root)
    plan = make_plan(h, INTEL61, early("01:00.0", "0000:01:00.1", "0000:01:00.0"))
    assert snapshot(root) == before
    assert {c.path for c in plan.changes} == {EARLY, "/etc/initramfs-tools/modules", "/etc/modules-load.d/vfio.conf"}
    new = next(c.new for c in plan.changes if c.path == EARLY)
    # 0000:04:00.0 is a 1080 Ti too, from another board maker: the subsystem IDs keep vfio-pci off it
    assert new.splitlines()[2:] == ["# devices: 0000:01:00.0 0000:01:00.1",
                                    "options vfio-pci ids=10de:1b06:10de:120f,10de:10ef",
                                    "softdep nouveau pre: vfio-pci", "softdep snd_hda_intel pre: vfio-pci"]
    assert plan.commands == [REBUILD] and plan.rollback_commands == [REBUILD]  # GRUB already has the arguments
    doc = json.loads(json.dumps(plan.to_json()))
    assert doc["options"]["early"] == ["01:00.0", "0000:01:00.1", "0000:01:00.0"]
    assert doc["early"]["devices"] == ["0000:01:00.0", "0000:01:00.1"] and doc["early"]["claimed"] == []
    assert doc["early"]["ids"] == ["10de:1b06:10de:120f", "10de:10ef"] and doc["early"]["kernel_arg"] is None
    assert doc["early"]["initramfs"] == {"tool": "initramfs-tools", "reason": "/usr/sbin/update-initramfs present",
                                         "config": "/etc/initramfs-tools/modules", "rebuild": REBUILD,
                                         "lister": "lsinitramfs"}
    text = format_plan(plan)
    assert "Early binding: 0000:01:00.0 0000:01:00.1 -> vfio-pci ids=10de:1b06:10de:120f,10de:10ef" in text
    assert "Initramfs: initramfs-tools" in text and "  update-initramfs -u -k all" in text

    runner = FakeRunner(effect=initramfs_effect(root))
    res = apply_plan(h, plan, paths, runner)
    assert res.status == "changed" and runner.calls == [REBUILD]
    assert read(root, "/etc/initramfs-tools/modules") == ITOOLS_MODULES_STOCK + "vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n"
    assert read(root, EARLY) == new
    applied = snapshot(root)

    again = make_plan(h, INTEL61, early("0000:01:00.0", "0000:01:00.1"))
    assert not again.changed and again.commands == []
    assert apply_plan(h, again, paths, runner).status == "unchanged" and runner.calls == [REBUILD]
    assert snapshot(root) == applied

    rb = rollback(h, paths, runner)
    assert set(rb.files) >= {EARLY, "/etc/initramfs-tools/modules"} and runner.calls == [REBUILD, REBUILD]
    assert not (root / EARLY.lstrip("/")).exists()
    assert read(root, "/etc/initramfs-tools/modules") == ITOOLS_MODULES_STOCK


def test_failing_rebuild_restores_every_byte_and_rebuilds_from_the_restored_files(tmp_path):
    root, h, paths = host(tmp_path)
    before = snapshot(root, skip=("var/lib/passthru", "boot"))
    calls = []

    class FailsOnce(FakeRunner):
        def run(self, argv, timeout):
            calls.append(list(argv))
            if len(calls) == 1:
                return 1, "", "update-initramfs: failed for /boot/initrd.img-6.1.0-25-amd64 with 1.\n"
            return 0, "", ""

    plan = make_plan(h, INTEL61, early("0000:01:00.0", "0000:01:00.1"))
    with pytest.raises(HostError) as e:
        apply_plan(h, plan, paths, FailsOnce())
    assert "`update-initramfs -u -k all` failed (exit 1): update-initramfs: failed for" in str(e.value)
    assert "every file was restored" in str(e.value)
    assert snapshot(root, skip=("var/lib/passthru", "boot")) == before
    assert calls == [REBUILD, REBUILD]  # a partial rebuild is redone from the restored configuration


def test_dracut_on_rhel_bls(tmp_path):
    root, h, paths = host(tmp_path, "rhel-bls", grub=None, kernel=K61)
    plan = make_plan(h, INTEL61, early("0000:01:00.1"))
    assert plan.loader == "bls" and plan.initramfs.tool == "dracut"
    conf = next(c.new for c in plan.changes if c.path == "/etc/dracut.conf.d/passthru-vfio.conf")
    assert conf.splitlines()[1:] == ['force_drivers+=" vfio vfio_iommu_type1 vfio_pci vfio_virqfd "',
                                     f'install_items+=" {EARLY} "']
    assert plan.commands[0] == ["dracut", "-f", "--regenerate-all"] and plan.commands[1][0] == "grubby"
    runner = FakeRunner(effect=initramfs_effect(root, then=grubby_effect(root)))
    apply_plan(h, plan, paths, runner)
    assert not make_plan(h, INTEL61, early("0000:01:00.1")).changed
    assert any("IOMMU group" in n and "0000:01:00.0 (nouveau)" in n for n in plan.notes)


def test_systemd_boot_copies_the_rebuilt_image_to_the_esp(tmp_path):
    root, h, paths = host(tmp_path, "systemd-boot", grub=None, kernel_cmdline="root=/dev/sda2 ro intel_iommu=on iommu=pt\n")
    plan = make_plan(h, INTEL61, early("0000:01:00.0", "0000:01:00.1"))
    assert plan.commands == [REBUILD, ["kernel-install", "add", K61, f"/boot/vmlinuz-{K61}", f"/boot/initrd.img-{K61}"]]


def test_stale_image_is_rebuilt_even_when_the_files_are_right(tmp_path):
    root, h, paths = host(tmp_path)
    plan = make_plan(h, INTEL61, early("0000:01:00.0", "0000:01:00.1"))
    apply_plan(h, plan, paths, FakeRunner())  # the rebuild "ran" but left the image as it was
    again = make_plan(h, INTEL61, early("0000:01:00.0", "0000:01:00.1"))
    assert again.changes == [] and again.commands == [REBUILD]
    assert any(f"/boot/initrd.img-{K61} is older than the early-binding configuration" in n for n in again.notes)


def test_subsystem_ids_keep_vfio_off_the_other_board(tmp_path):
    root, h, paths = host(tmp_path)
    plan = make_plan(h, INTEL61, early("0000:04:00.0"))
    assert plan.early.ids == ("10de:1b06:1462:3609",) and plan.early.claimed == ()
    assert any("ids=10de:1b06:1462:3609 adds its subsystem IDs" in n for n in plan.notes)
    both = make_plan(h, INTEL61, early("0000:04:00.0", "0000:01:00.0", "0000:01:00.1"))
    assert both.early.ids == ("10de:1b06", "10de:10ef")  # no other card left to keep vfio-pci off


def test_vfio_pci_built_in_takes_the_ids_from_the_kernel_command_line(tmp_path):
    root, h, paths = host(tmp_path, vfio_builtin=True)
    plan = make_plan(h, INTEL61, early("0000:01:00.0", "0000:01:00.1"))
    assert plan.early.builtin_vfio and plan.args[-1] == "vfio-pci.ids=10de:1b06:10de:120f,10de:10ef"
    assert {c.path for c in plan.changes} == {EARLY, "/etc/default/grub", "/etc/modules-load.d/vfio.conf"}
    assert plan.commands == [["update-grub"]]
    assert "vfio-pci.ids=10de:1b06:10de:120f,10de:10ef" in next(c.new for c in plan.changes
                                                                if c.path == "/etc/default/grub")


def test_softdeps_from_modules_alias_when_the_device_is_already_on_vfio(tmp_path):
    def vfio_gpu(b):
        workstation(b)
        b.bind("0000:01:00.0", "vfio-pci")
    root = boot_host(tmp_path, "debian", kernel=K61, grub=PREPARED_GRUB, pci=vfio_gpu)
    plan = make_plan(HostRoot(root), INTEL61, early("0000:01:00.0"))
    assert plan.early.softdeps == ("nouveau",)


def test_other_vfio_ids_and_no_initramfs_tool_are_left_to_the_operator(tmp_path):
    root, h, paths = host(tmp_path, initramfs=None)
    (root / "etc/modprobe.d").mkdir(parents=True)
    (root / "etc/modprobe.d/vfio.conf").write_text("options vfio-pci ids=10de:1b06 disable_vga=1\n")
    plan = make_plan(h, INTEL61, early("0000:01:00.0", "0000:01:00.1"))
    assert any(m.startswith("/etc/modprobe.d/vfio.conf also gives vfio-pci ids=10de:1b06") for m in plan.manual)
    assert plan.initramfs.tool == "initramfs-tools"  # Debian's, from the family
    bare = make_plan(HostRoot(boot_host(tmp_path, "unknown", pci=workstation, name="gentoo")), INTEL61,
                     early("0000:01:00.0", "0000:01:00.1"))
    assert bare.initramfs.tool is None and any("mkinitcpio" in m for m in bare.manual)


# -- refusals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts,error", [
    (early("0000:02:00.0"), "ids=8086:10d3 also matches 0000:03:00.0 (e1000e; enp3s0 has the default route via "
                            "192.168.1.1"),
    (early("0000:03:00.0", "0000:02:00.0"), "0000:03:00.0: enp3s0 has the default route via 192.168.1.1"),
    (early("0000:00:02.0"), "0000:00:02.0: "),
    (early("0000:01:00.0", "0000:01:00.1", "zz:00.0"), "'zz:00.0' is not a PCI address"),
    (early("0000:00:1c.0"), "a PCI bridge"),
])
def test_refusals_touch_nothing(tmp_path, opts, error):
    root, h, paths = host(tmp_path)
    before = snapshot(root)
    with pytest.raises(UsageError) as e:
        make_plan(h, INTEL61, opts)
    assert error in str(e.value) and "\n" not in str(e.value)
    assert snapshot(root) == before


def test_overrides_accept_the_risk_and_say_so(tmp_path):
    root, h, paths = host(tmp_path)
    plan = make_plan(h, INTEL61, early("0000:02:00.0", overrides={ALLOW_SHARED_IDS}))
    assert plan.early.ids == ("8086:10d3",)
    assert plan.early.claimed[0]["address"] == "0000:03:00.0" and plan.early.claimed[0]["driver"] == "e1000e"
    assert any("vfio-pci will also take 0000:03:00.0 (e1000e)" in n for n in plan.notes)
    assert make_plan(h, INTEL61, early("0000:03:00.0", "0000:02:00.0", overrides={"--force-netdev"})).early
    assert make_plan(h, INTEL61, early("0000:00:02.0", overrides={"--allow-boot-vga"})).early.ids == ("8086:3e92",)


def test_absent_device_is_not_found(tmp_path):
    root, h, paths = host(tmp_path)
    with pytest.raises(NotFoundError, match="no PCI device 0000:09:00.0"):
        make_plan(h, INTEL61, early("0000:09:00.0"))


@pytest.mark.parametrize("argv,message", [
    (["prepare", "--early"], "--early needs the PCI addresses"),
    (["prepare", "0000:01:00.0"], "device addresses go with --early"),
    (["prepare", "--allow-shared-ids"], "--allow-shared-ids goes with --early"),
    (["prepare", "--early", "0000:02:00.0", "--apply"], "--allow-shared-ids if the host can lose them"),
])
def test_cli_usage_errors_exit_2_and_change_nothing(tmp_path, capsys, monkeypatch, argv, message):
    root, h, paths = host(tmp_path)
    monkeypatch.setenv("PASSTHRU_ROOT", str(root))
    before = snapshot(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert snapshot(root) == before and not os.path.exists(paths.state_dir)


# -- Proxmox (detection and plans without --early: test_prepare_proxmox.py) ---------------------------------
def test_proxmox_early_rebuilds_then_refreshes_the_esps(tmp_path):
    root = boot_host(tmp_path, "proxmox-zfs", efi=True, kernel="6.8.12-4-pve", pci=workstation,
                     kernel_cmdline="root=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on iommu=pt\n",
                     grub=PROXMOX_GRUB.replace('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"'))
    h, paths = HostRoot(root), Paths.for_root(HostRoot(root))
    plan = make_plan(h, HostFacts("intel", (6, 8), True), early("0000:01:00.0", "0000:01:00.1"))
    assert plan.commands == [REBUILD, REFRESH] and plan.rollback_commands == [REBUILD, REFRESH]
    assert "vfio_virqfd" not in next(c.new for c in plan.changes if c.path == "/etc/initramfs-tools/modules")
    runner = FakeRunner(effect=initramfs_effect(root))
    apply_plan(h, plan, paths, runner)
    assert not make_plan(h, HostFacts("intel", (6, 8), True), early("0000:01:00.0", "0000:01:00.1")).changed
