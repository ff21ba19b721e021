"""Proxmox hosts whose ESPs proxmox-boot-tool keeps in sync (tests/prepare_fixtures.py "proxmox-zfs"): UEFI
with /etc/kernel/cmdline is systemd-boot, BIOS is GRUB, both regenerated with ``proxmox-boot-tool refresh``
(Proxmox's documented equivalent of update-grub there); an ext4/LVM install without ESP UUIDs is plain GRUB."""

from __future__ import annotations

from passthru.config import Paths
from passthru.host.boot import read_boot
from passthru.host.root import HostRoot
from passthru.prepare import HostFacts, PrepareOptions, apply_plan, make_plan, rollback
from prepare_fixtures import FakeRunner, boot_host

REFRESH = ["proxmox-boot-tool", "refresh"]


def read(root, path: str) -> str:
    return (root / path.lstrip("/")).read_text()


def test_proxmox_zfs_uefi_is_systemd_boot_refreshed_by_proxmox_boot_tool(tmp_path):
    root = boot_host(tmp_path, "proxmox-zfs", efi=True, kernel="6.8.12-4-pve")
    h, paths = HostRoot(root), Paths.for_root(HostRoot(root))
    boot = read_boot(h)
    assert boot.loader == "systemd-boot" and boot.proxmox and boot.regenerate == (tuple(REFRESH),)
    assert boot.to_json()["proxmox_boot_tool"] is True and "proxmox-boot-tool keeps 2 ESP(s)" in boot.reason
    plan = make_plan(h, HostFacts("intel", (6, 8), True), PrepareOptions())
    assert {c.path for c in plan.changes} == {"/etc/kernel/cmdline", "/etc/default/grub",
                                              "/etc/modules-load.d/vfio.conf"}
    assert plan.commands == [REFRESH]
    runner = FakeRunner()
    apply_plan(h, plan, paths, runner)
    assert read(root, "/etc/kernel/cmdline") == "root=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on iommu=pt\n"
    assert not make_plan(h, HostFacts("intel", (6, 8), True), PrepareOptions()).changed
    rollback(h, paths, runner)
    assert runner.calls == [REFRESH, REFRESH]


def test_proxmox_zfs_bios_is_grub_refreshed_by_proxmox_boot_tool(tmp_path):
    root = boot_host(tmp_path, "proxmox-zfs", efi=False, kernel="6.8.12-4-pve")
    plan = make_plan(HostRoot(root), HostFacts("amd", (6, 8), True), PrepareOptions())
    assert plan.loader == "grub" and plan.boot.proxmox and plan.commands == [REFRESH]
    grub = next(c.new for c in plan.changes if c.path == "/etc/default/grub")
    assert 'GRUB_CMDLINE_LINUX="root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt"' in grub


def test_proxmox_on_ext4_is_plain_grub(tmp_path):
    root = boot_host(tmp_path, "proxmox", efi=True, kernel="6.8.12-4-pve")
    boot = read_boot(HostRoot(root))
    assert boot.loader == "grub" and not boot.proxmox and boot.regenerate == (("update-grub",),)
    (root / "etc/kernel").mkdir(parents=True, exist_ok=True)
    (root / "etc/kernel/proxmox-boot-uuids").write_text("")  # `proxmox-boot-tool status`: not configured
    assert not read_boot(HostRoot(root)).proxmox
