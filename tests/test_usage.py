"""passthru.host.usage: what the host itself uses a PCI function for, on trees shaped like real hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from passthru.host.root import HostRoot
from passthru.host.usage import ALLOW_BOOT_VGA, FORCE_NETDEV, HostUse, host_uses, pci_ancestor
from sysfs_builder import PID, SysfsBuilder

FINDMNT = shutil.which("findmnt")


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> SysfsBuilder:
    return fx.make_busy_host(tmp_path_factory.mktemp("usage") / "busy_host")


def uses(root: Path | str, address: str) -> list[tuple[str, str, str | None]]:
    """(what, detail, override) of one function's uses."""
    (found,) = host_uses(HostRoot(root), [address]).values()
    return [(u.what, u.detail, u.override) for u in found]


def small_host(tmp_path: Path) -> SysfsBuilder:
    """One root port with an NVMe drive and one with a NIC, nothing in use yet."""
    b = SysfsBuilder(tmp_path / "host")
    b.proc()
    b.bridge("0000:00:01.0")
    b.pci("0000:01:00.0", 0x144D, 0xA808, 0x010802, parent="0000:00:01.0", driver="nvme", bars=[("mem64", 16384)])
    b.bridge("0000:00:02.0")
    b.pci("0000:02:00.0", 0x8086, 0x1533, 0x020000, parent="0000:00:02.0", driver="igb", bars=[("mem", 1 << 20)])
    b.netdev("0000:02:00.0", "eno1", "3c:ec:ef:00:00:01", phys_port_name=None)
    return b


# -- storage -----------------------------------------------------------------------------------------------
def test_mounted_nvme_partition(busy: SysfsBuilder) -> None:
    assert uses(busy.root, "0000:5e:00.0") == [
        ("mount", "nvme0n1p1 mounted on /var/lib/libvirt/images (xfs)", None)]


def test_lvm_on_md_raid1_over_two_ahci_controllers(busy: SysfsBuilder) -> None:
    """Root and swap LVs on md0, a RAID1 of sda2 (SATA controller) and sdb2 (sSATA controller): both controllers
    hold the root filesystem, and neither can be overridden."""
    assert uses(busy.root, "0000:00:17.0") == [
        ("mount", "dm-0 (vg0-root) mounted on / (ext4), over md0 (raid1), over sda2", None),
        ("mount", "sda1 mounted on /boot/efi (vfat)", None),
        ("swap", "dm-1 (vg0-swap) is active swap, over md0 (raid1), over sda2", None),
        ("holder", "md0 (raid1) holds sda2", None)]
    assert uses(busy.root, "00:11.5") == [
        ("mount", "dm-0 (vg0-root) mounted on / (ext4), over md0 (raid1), over sdb2", None),
        ("swap", "dm-1 (vg0-swap) is active swap, over md0 (raid1), over sdb2", None),
        ("holder", "md0 (raid1) holds sdb2", None)]


def test_nvme_namespace_as_lvm_pv_mounted_at_root(tmp_path: Path) -> None:
    b = small_host(tmp_path)
    b.nvme("0000:01:00.0", 0, partitions=())
    b.dm("vg0-root", ["nvme0n1"])
    b.mount("/dev/mapper/vg0-root", "/", "ext4", "rw,relatime,errors=remount-ro")
    b.build()
    assert uses(b.root, "0000:01:00.0") == [
        ("mount", "dm-0 (vg0-root) mounted on / (ext4), over nvme0n1", None),
        ("holder", "dm-0 (vg0-root) holds nvme0n1", None)]


def test_whole_disk_pv_with_an_unmounted_lv_is_still_held(busy: SysfsBuilder) -> None:
    assert uses(busy.root, "0000:5f:00.0") == [("holder", "dm-2 (vg1-data) holds nvme1n1", None)]


def test_idle_disk_is_free(busy: SysfsBuilder) -> None:
    assert os.path.isdir(busy.blocks["nvme2n1"]) and uses(busy.root, "0000:60:00.0") == []


@pytest.mark.parametrize("listed", ["/dev/mapper/vg0-swap", "/dev/dm-0", "/dev/nvme0n1p1"])
def test_swap_device_spellings(tmp_path: Path, listed: str) -> None:
    """/proc/swaps names the device as it was opened: /dev/dm-N, /dev/mapper/NAME (resolved through dm/name), or
    a partition."""
    b = small_host(tmp_path)
    b.nvme("0000:01:00.0", 0, partitions=(8192,))
    b.dm("vg0-swap", ["nvme0n1p1"])
    b.proc(swaps=[(listed, 8388604)])
    b.build()
    got = uses(b.root, "0000:01:00.0")
    assert ("holder", "dm-0 (vg0-swap) holds nvme0n1p1", None) in got
    swap = "nvme0n1p1 is active swap" if listed.endswith("p1") else "dm-0 (vg0-swap) is active swap, over nvme0n1p1"
    assert ("swap", swap, None) in got


def test_swap_file_counts_through_its_filesystem_only(tmp_path: Path) -> None:
    b = small_host(tmp_path)
    b.nvme("0000:01:00.0", 0, partitions=(512, 20000))
    b.proc(swaps=[("/swapfile", 2097148, "file")])
    b.mount("/dev/nvme0n1p2", "/")
    b.build()
    assert "/swapfile                               file\t\t2097148" in Path(b.proc_dir, "swaps").read_text()
    assert uses(b.root, "0000:01:00.0") == [("mount", "nvme0n1p2 mounted on / (ext4)", None)]


def test_btrfs_mount_found_through_its_source(tmp_path: Path) -> None:
    """btrfs shows an anonymous device number (0:N) in mountinfo; the source names the partition."""
    b = small_host(tmp_path)
    b.nvme("0000:01:00.0", 0, partitions=(512, 20000))
    b.mount("/dev/nvme0n1p2", "/", "btrfs", "rw,relatime,ssd,space_cache=v2,subvol=/@")
    b.mount("/dev/nvme0n1p2", "/home", "btrfs", "rw,relatime,ssd,space_cache=v2,subvol=/@home")
    b.build()
    line = Path(b.proc_dir, "self/mountinfo").read_text().splitlines()[0].split()
    assert line[2].startswith("0:") and line[3:5] == ["/@", "/"]
    assert uses(b.root, "0000:01:00.0") == [
        ("mount", "nvme0n1p2 mounted on / (btrfs) and 1 more places", None)]


def test_nvme_multipath_namespace_belongs_to_both_controllers(tmp_path: Path) -> None:
    """Native NVMe multipath puts the namespace under /sys/devices/virtual/nvme-subsystem: it is on every function
    whose controller the subsystem links to."""
    b = small_host(tmp_path)
    b.pci("0000:01:00.1", 0x144D, 0xA824, 0x010802, parent="0000:00:01.0", driver="nvme", bars=[("mem64", 16384)])
    head = b.nvme_multipath([("0000:01:00.0", 0), ("0000:01:00.1", 1)], partitions=(100_000,))
    b.mount("/dev/nvme0n1p1", "/srv", "xfs")
    b.build()
    assert head.startswith(f"{b.sys}/devices/virtual/nvme-subsystem/nvme-subsys0/")
    for fn in ("0000:01:00.0", "0000:01:00.1"):
        assert uses(b.root, fn) == [("mount", "nvme0n1p1 mounted on /srv (xfs)", None)]


# -- network -----------------------------------------------------------------------------------------------
def test_nic_with_the_default_route(tmp_path: Path) -> None:
    b = small_host(tmp_path)
    b.ip("eno1", "192.0.2.10/24", gateway="192.0.2.1", metric=100)
    b.build()
    assert uses(b.root, "0000:02:00.0") == [
        ("netdev", "eno1 has the default route via 192.0.2.1, route 192.0.2.0/24", FORCE_NETDEV)]


def test_nic_with_an_address_but_no_default_route(busy: SysfsBuilder) -> None:
    assert uses(busy.root, "0000:3c:00.0") == [("netdev", "ens2f0 has route 198.51.100.0/24", FORCE_NETDEV)]


def test_nic_with_only_link_local_ipv6_is_free(busy: SysfsBuilder) -> None:
    assert "ens2f1" in Path(busy.proc_dir, "net/if_inet6").read_text()
    assert uses(busy.root, "0000:3c:00.1") == []


def test_global_ipv6_address_alone_is_use(tmp_path: Path) -> None:
    b = small_host(tmp_path)
    b.ip("eno1", "fe80::3eec:efff:fe00:1/64")
    b.ip("eno1", "2001:db8:1::5/64")
    b.build()
    assert uses(b.root, "0000:02:00.0") == [("netdev", "eno1 has address 2001:db8:1::5/64", FORCE_NETDEV)]


def test_bond_slaves_under_a_bridge_with_the_address(busy: SysfsBuilder) -> None:
    detail = "br0 has the default route via 192.0.2.1, route 192.0.2.0/24, address 2001:db8::10/64"
    assert uses(busy.root, "0000:3b:00.0") == [("netdev", f"eno1 -> bond0 -> br0: {detail}", FORCE_NETDEV)]
    assert uses(busy.root, "0000:3b:00.1") == [("netdev", f"eno2 -> bond0 -> br0: {detail}", FORCE_NETDEV)]


def test_idle_bond_and_vlan_with_the_address(tmp_path: Path) -> None:
    """A bond without addresses does not make its slave busy; a VLAN on the NIC (upper_ link, no master) does."""
    b = small_host(tmp_path)
    b.net_upper("bond", "bond1", ["eno1"])
    b.build()
    assert uses(b.root, "0000:02:00.0") == []
    b.net_upper("vlan", "eno1.100", ["eno1"])
    b.ip("eno1.100", "10.100.0.2/24")
    assert uses(b.root, "0000:02:00.0") == [
        ("netdev", "eno1 -> eno1.100: eno1.100 has route 10.100.0.0/24", FORCE_NETDEV)]


def test_open_vswitch_port_is_busy_when_the_bridge_port_has_the_address(tmp_path: Path) -> None:
    """OVS ports are slaves of ovs-system; the host's address sits on another port of it (the internal br-ex)."""
    b = small_host(tmp_path)
    b.virtual_netdev("br-ex", "3c:ec:ef:00:00:01")
    b.net_upper("openvswitch", "ovs-system", ["eno1", "br-ex"])
    b.ip("br-ex", "192.0.2.20/24", gateway="192.0.2.1")
    b.build()
    assert uses(b.root, "0000:02:00.0") == [
        ("netdev", "eno1 -> ovs-system -> br-ex: br-ex has the default route via 192.0.2.1, route 192.0.2.0/24",
         FORCE_NETDEV)]


# -- consoles and display ----------------------------------------------------------------------------------
def test_serial_console_on_a_pci_card(busy: SysfsBuilder) -> None:
    tty = os.path.realpath(f"{busy.sys}/class/tty/ttyS4")
    assert tty.endswith("/0000:03:00.0/0000:03:00.0:0/0000:03:00.0:0.0/tty/ttyS4")  # kernel >= 6.5 layout
    assert uses(busy.root, "0000:03:00.0") == [("console", "ttyS4 is a kernel console", None)]


def test_boot_vga_with_the_virtual_terminal_console(busy: SysfsBuilder) -> None:
    assert uses(busy.root, "0000:02:00.0") == [
        ("console", "the virtual terminal console (tty0) is on the boot display", ALLOW_BOOT_VGA),
        ("boot_vga", "the firmware set this function up as the boot display (boot_vga = 1)", ALLOW_BOOT_VGA)]


def test_boot_vga_with_only_a_serial_console(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path / "host")
    b.proc("BOOT_IMAGE=/vmlinuz root=/dev/sda2 ro console=ttyS0,115200n8")
    b.pci("0000:00:02.0", 0x1234, 0x1111, 0x030000, driver="bochs-drm", boot_vga=True, link=None)
    b.serial("ttyS0", backing="pnp", pnp_id="00:05")
    b.console("ttyS0")
    b.build()
    assert uses(b.root, "0000:00:02.0") == [
        ("boot_vga", "the firmware set this function up as the boot display (boot_vga = 1)", ALLOW_BOOT_VGA)]


# -- SR-IOV ------------------------------------------------------------------------------------------------
def test_pf_with_vfs_bound_to_drivers(busy: SysfsBuilder) -> None:
    assert uses(busy.root, "0000:3d:00.0") == [
        ("vfs_in_use", "VF 0000:3d:02.0 is bound to iavf (ens3f0v0 has route 203.0.113.0/24)", None),
        ("vfs_in_use", "VF 0000:3d:02.1 is bound to vfio-pci", None)]


def test_pf_with_unbound_vfs_is_free(busy: SysfsBuilder) -> None:
    pf = busy.fn("0000:3d:00.1").path
    assert [n for n in sorted(os.listdir(pf)) if n.startswith("virtfn")] == ["virtfn0", "virtfn1"]
    assert not os.path.exists(f"{pf}/virtfn0/driver") and uses(busy.root, "0000:3d:00.1") == []


# -- whole calls -------------------------------------------------------------------------------------------
def test_function_in_no_use(busy: SysfsBuilder) -> None:
    assert uses(busy.root, "0000:18:00.0") == [] and uses(busy.root, "0000:18:00.1") == []


def test_several_functions_at_once_keys_normalized(busy: SysfsBuilder) -> None:
    got = host_uses(HostRoot(busy.root), ["5f:00.0", "0000:18:00.0", "0000:5f:00.0", "0000:99:00.0"])
    assert list(got) == ["0000:5f:00.0", "0000:18:00.0", "0000:99:00.0"]  # duplicates once; absent ones empty
    assert got["0000:5f:00.0"] == [HostUse("0000:5f:00.0", "holder", "dm-2 (vg1-data) holds nvme1n1", None)]
    assert got["0000:18:00.0"] == [] and got["0000:99:00.0"] == []
    with pytest.raises(ValueError, match="not a PCI address"):
        host_uses(HostRoot(busy.root), ["eno1"])


def test_reads_only(busy: SysfsBuilder) -> None:
    def snapshot() -> list[tuple[str, int, int]]:
        out = []
        for dirpath, dirnames, filenames in os.walk(busy.root):
            for n in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, n))
                out.append((os.path.join(dirpath, n), st.st_mtime_ns, st.st_size))
        return sorted(out)

    before = snapshot()
    host_uses(HostRoot(busy.root), list(busy.functions))
    assert snapshot() == before


def test_without_proc_files_nothing_from_them(tmp_path: Path) -> None:
    """A capture may lack any procfs file: what it would have told is unknown, never an error. sysfs alone still
    shows holders, the boot display and VFs; mountinfo missing falls back to /proc/mounts."""
    b = fx.make_busy_host(tmp_path / "busy")
    proc = Path(b.proc_dir)
    for name in ("net/route", "net/if_inet6", "self/mountinfo"):
        (proc / name).unlink()
    assert uses(b.root, "0000:3b:00.0") == []
    assert uses(b.root, "0000:3d:00.0")[0] == ("vfs_in_use", "VF 0000:3d:02.0 is bound to iavf", None)
    assert uses(b.root, "0000:5e:00.0") == [("mount", "nvme0n1p1 mounted on /var/lib/libvirt/images (xfs)", None)]
    shutil.rmtree(proc)
    assert uses(b.root, "0000:00:17.0") == [("holder", "md0 (raid1) holds sda2", None)]
    assert uses(b.root, "0000:5e:00.0") == []
    # /sys/class/tty/console/active still names the consoles when the kernel command line is gone
    assert uses(b.root, "0000:03:00.0") == [("console", "ttyS4 is a kernel console", None)]
    assert [u[0] for u in uses(b.root, "0000:02:00.0")] == ["console", "boot_vga"]


def test_capture_with_proc_mounts_only(gpu_server: Path) -> None:
    """gpu_server has /proc/mounts but no mountinfo (as a capture): mounts still found, by device path."""
    assert not (gpu_server / "proc/self").exists()
    assert uses(gpu_server, "0000:5e:00.0") == [
        ("mount", "nvme0n1p2 mounted on / (ext4)", None), ("mount", "nvme0n1p1 mounted on /boot/efi (vfat)", None)]
    assert uses(gpu_server, "0000:5f:00.0") == []
    assert uses(gpu_server, "0000:03:00.0") == []  # its ttyS4 is no console; ttyS0 (the console) is PNP


def test_pci_ancestor(busy: SysfsBuilder, gpu_server: Path) -> None:
    h = HostRoot(busy.root)
    assert pci_ancestor(h, f"{h.sys}/class/block/sdb1") == "0000:00:11.5"
    assert pci_ancestor(h, f"{h.sys}/class/tty/ttyS4") == "0000:03:00.0"
    assert pci_ancestor(h, f"{h.sys}/class/net/ens3f0v0") == "0000:3d:02.0"  # the VF, not its PF
    assert pci_ancestor(h, f"{h.sys}/bus/pci/devices/0000:18:00.0") == "0000:18:00.0"
    assert pci_ancestor(h, f"{h.sys}/class/block/dm-0") is None
    assert pci_ancestor(h, f"{h.sys}/class/tty/ttyS0") is None  # PNP
    assert pci_ancestor(h, f"{h.sys}/class/net/nope") is None
    g = HostRoot(gpu_server)
    assert pci_ancestor(g, f"{g.sys}/bus/usb/devices/1-1.3") == "0000:00:14.0"  # USB: its xHCI


# -- the fixture tree reads like a host --------------------------------------------------------------------
def test_tree_formats(busy: SysfsBuilder) -> None:
    proc, sys_ = Path(busy.proc_dir), busy.sys
    assert os.readlink(proc / "self") == str(PID) and os.readlink(proc / "net") == "self/net"
    route = (proc / "net/route").read_text().splitlines(keepends=True)
    assert all(len(line) == 128 for line in route)  # %-127s then a newline
    assert route[1].split() == ["br0", "00000000", "010200C0", "0003", "0", "0", "425", "00000000", "0", "0", "0"]
    inet6 = (proc / "net/if_inet6").read_text().splitlines()
    assert inet6[0] == "00000000000000000000000000000001 01 80 10 80       lo"
    info = (proc / "self/mountinfo").read_text().splitlines()
    assert info[0].startswith("22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg0-root rw,errors=")
    # links where the kernel has links; majors as the kernel assigns them
    assert os.readlink(f"{sys_}/dev/block/8:16") == "../../devices/pci0000:00/0000:00:11.5/ata2/host1/" \
                                                    "target1:0:0/1:0:0:0/block/sdb"
    assert os.path.realpath(f"{sys_}/dev/block/9:0") == f"{sys_}/devices/virtual/block/md0"
    assert os.path.realpath(f"{sys_}/block/md0/slaves/sdb2") == busy.blocks["sdb2"]
    assert os.path.realpath(f"{busy.blocks['sdb2']}/holders/md0") == f"{sys_}/devices/virtual/block/md0"
    assert os.path.realpath(f"{sys_}/block/md0/md/dev-sda2/block") == busy.blocks["sda2"]
    assert Path(f"{sys_}/block/dm-1/dm/name").read_text() == "vg0-swap\n"
    assert Path(f"{sys_}/block/dm-1/dev").read_text() == "253:1\n"
    assert os.readlink(f"{busy.dev}/mapper/vg0-root") == "../dm-0"
    assert os.path.realpath(f"{sys_}/class/net/eno1/master") == f"{sys_}/devices/virtual/net/bond0"
    assert os.path.realpath(f"{sys_}/class/net/bond0/upper_br0") == f"{sys_}/devices/virtual/net/br0"
    assert Path(f"{sys_}/class/net/bond0/bonding/slaves").read_text() == "eno1 eno2\n"
    assert os.path.realpath(f"{sys_}/class/net/br0/brif/bond0") == f"{sys_}/devices/virtual/net/bond0/brport"


@pytest.mark.skipif(FINDMNT is None, reason="util-linux findmnt is not installed")
def test_mountinfo_parses_with_findmnt(busy: SysfsBuilder) -> None:
    run = subprocess.run([FINDMNT, "--tab-file", f"{busy.proc_dir}/self/mountinfo", "-rn", "-o",
                          "SOURCE,TARGET,FSTYPE,MAJ:MIN"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    assert ["/dev/mapper/vg0-root", "/", "ext4", "253:0"] in rows
    assert ["/dev/nvme0n1p1", "/var/lib/libvirt/images", "xfs", "259:1"] in rows
