"""The fixture trees must read like a real host: checked with real pciutils and plain os calls, never passthru."""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

import sysfs_fixtures as F
from sysfs_builder import SysfsBuilder

LSPCI = shutil.which("lspci")
needs_lspci = pytest.mark.skipif(LSPCI is None, reason="pciutils (lspci) is not installed")
MAKERS = {"gpu_server": F.make_gpu_server, "broken_desktop": F.make_broken_desktop, "bare_host": F.make_bare_host}


def lspci(root: Path, *args: str) -> str:
    """Real lspci on a fake root. pciutils' linux-sysfs backend (3.9) takes sysfs.path = the *bus/pci* directory
    (default /sys/bus/pci) and lists <path>/devices, following each link for config, resource, irq, driver,
    iommu_group...; given <root>/sys instead it lists sys/devices and fails ("Couldn't parse entry name")."""
    run = subprocess.run([LSPCI, "-A", "linux-sysfs", "-O", f"sysfs.path={root}/sys/bus/pci", *args],
                         capture_output=True, text=True, timeout=300)
    noise = [ln for ln in run.stderr.splitlines() if "libkmod" not in ln]  # no /lib/modules here: harmless
    assert run.returncode == 0 and not noise, run.stderr
    return run.stdout


_DEV_LINE = re.compile(r"^(?P<addr>[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) .*?\[(?P<cls>[0-9a-f]{4})\]: "
                       r".*\[(?P<vid>[0-9a-f]{4}):(?P<did>[0-9a-f]{4})\](?: \(rev (?P<rev>[0-9a-f]{2})\))?"
                       r"(?: \(prog-if .*\))?$")


def parse_lspci(text: str) -> dict[str, dict]:
    """`lspci -nnkD` -> {address: {class, vendor, device, rev, driver}}."""
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = _DEV_LINE.match(line)
        if m:
            cur = out[m["addr"]] = dict(cls=int(m["cls"], 16), vendor=int(m["vid"], 16), device=int(m["did"], 16),
                                        rev=int(m["rev"] or "0", 16), driver=None)
        elif cur is not None and line.strip().startswith("Kernel driver in use:"):
            cur["driver"] = line.split(":", 1)[1].strip()
    return out


def read(path) -> str:
    with open(path) as f:
        return f.read()


def real(path) -> str:
    return os.path.realpath(path)


# Read-only trees are built once per module (building is disk-bound); tests that change a tree take fresh_server.
@pytest.fixture(scope="module", params=sorted(MAKERS))
def host(request, tmp_path_factory) -> SysfsBuilder:
    return MAKERS[request.param](tmp_path_factory.mktemp("host") / request.param)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> SysfsBuilder:
    return F.make_gpu_server(tmp_path_factory.mktemp("server") / "gpu_server")


@pytest.fixture
def fresh_server(tmp_path) -> SysfsBuilder:
    return F.make_gpu_server(tmp_path / "gpu_server")


# -- pciutils ------------------------------------------------------------------------------------------------
@needs_lspci
def test_lspci_lists_every_function_with_ids_class_and_driver(host):
    seen = parse_lspci(lspci(host.root, "-nnkD"))
    assert sorted(seen) == sorted(host.functions)
    for addr, f in host.functions.items():
        got = seen[addr]
        assert (got["vendor"], got["device"], got["cls"]) == (f.vendor, f.device, f.class_code >> 8), addr
        assert got["rev"] == f.revision and got["driver"] == f.driver, addr


@needs_lspci
def test_lspci_verbose_decodes_config_space_without_complaint(host):
    text = lspci(host.root, "-vvv", "-xxxx")
    assert "!!!" not in text and "<access denied>" not in text
    assert text.count("Kernel driver in use") == sum(1 for f in host.functions.values() if f.driver)


@needs_lspci
def test_lspci_shows_bars_links_groups_and_sriov(server):
    b, root = server, server.root
    gpu = lspci(root, "-vv", "-s", "0000:19:00.0")
    assert re.search(r"Region 1: Memory at [0-9a-f]+ \(64-bit, prefetchable\) \[size=16G\]", gpu)
    assert "LnkSta:\tSpeed 8GT/s, Width x16" in gpu and "NUMA node: 0" in gpu
    assert f"IOMMU group: {b.functions['0000:19:00.0'].group}" in gpu
    assert "Kernel driver in use: vfio-pci" in gpu
    pf = lspci(root, "-vv", "-s", "0000:3b:00.0")
    assert "Initial VFs: 8, Total VFs: 8, Number of VFs: 8" in pf
    assert "VF offset: 2, stride: 1, Device ID: 1018" in pf and "Access Control Services" in pf
    assert "Bus: primary=17, secondary=19, subordinate=19" in lspci(root, "-vv", "-s", "0000:17:02.0")
    port = lspci(root, "-vv", "-s", "0000:00:1c.0")  # boot VGA below: the port forwards VGA
    assert "Bus: primary=00, secondary=01, subordinate=02" in port and re.search(r"BridgeCtl:.* VGA\+", port)
    assert "Bus: primary=85, secondary=88, subordinate=88" in lspci(root, "-vv", "-s", "0000:85:03.0")
    tree = lspci(root, "-t")
    assert re.search(r"1c\.0-\[01-02\]----00\.0-\[02\]----00\.0", tree)
    assert re.search(r"\[0000:17\]-\+-00\.0-\[18\]--\+-00\.0", tree)


# -- links ---------------------------------------------------------------------------------------------------
def test_every_symlink_is_relative_and_resolves(host):
    links = 0
    for dirpath, dirnames, filenames in os.walk(host.root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                links += 1
                assert not os.readlink(p).startswith("/"), p
                assert os.path.exists(p), f"dangling: {p} -> {os.readlink(p)}"
    assert links > 50


def test_pci_links_point_where_the_kernel_points(host):
    sys_ = f"{host.root}/sys"
    for addr, f in host.functions.items():
        entry = f"{sys_}/bus/pci/devices/{addr}"
        assert real(entry) == f.path and os.path.isdir(entry)
        assert os.readlink(entry) == os.path.relpath(f.path, f"{sys_}/bus/pci/devices")
        assert real(f"{f.path}/subsystem") == f"{sys_}/bus/pci"
        if f.driver:
            assert real(f"{f.path}/driver") == f"{sys_}/bus/pci/drivers/{f.driver}"
            assert real(f"{sys_}/bus/pci/drivers/{f.driver}/{addr}") == f.path
        else:
            assert not os.path.lexists(f"{f.path}/driver")
        if f.group is not None:
            assert real(f"{f.path}/iommu_group") == f"{sys_}/kernel/iommu_groups/{f.group}"
            assert real(f"{sys_}/kernel/iommu_groups/{f.group}/devices/{addr}") == f.path
        else:
            assert not os.path.lexists(f"{f.path}/iommu_group")
    for drv in os.listdir(f"{sys_}/bus/pci/drivers"):
        for name in ("bind", "unbind", "new_id", "remove_id"):
            assert stat.S_IMODE(os.stat(f"{sys_}/bus/pci/drivers/{drv}/{name}").st_mode) == 0o200


def test_link_depth_matches_the_kernel(server):
    d = f"{server.root}/sys/devices/pci0000:17/0000:17:00.0/0000:18:00.0"
    assert os.readlink(d + "/driver") == "../../../../bus/pci/drivers/nvidia"
    assert os.readlink(d + "/subsystem") == "../../../../bus/pci"
    group = server.functions["0000:18:00.0"].group
    assert os.readlink(d + "/iommu_group") == f"../../../../kernel/iommu_groups/{group}"
    assert os.readlink(f"{server.root}/sys/bus/pci/devices/0000:18:00.0") == \
        "../../../devices/pci0000:17/0000:17:00.0/0000:18:00.0"


# -- attributes ----------------------------------------------------------------------------------------------
def test_pci_attribute_formats(server):
    d = server.functions["0000:18:00.0"].path
    assert [read(f"{d}/{a}") for a in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class",
                                       "revision")] == ["0x10de\n", "0x1b06\n", "0x10de\n", "0x120f\n",
                                                        "0x030000\n", "0xa1\n"]
    assert read(f"{d}/uevent") == ("DRIVER=nvidia\nPCI_CLASS=30000\nPCI_ID=10DE:1B06\n"
                                   "PCI_SUBSYS_ID=10DE:120F\nPCI_SLOT_NAME=0000:18:00.0\n"
                                   "MODALIAS=pci:v000010DEd00001B06sv000010DEsd0000120Fbc03sc00i00\n")
    assert read(f"{d}/modalias") == "pci:v000010DEd00001B06sv000010DEsd0000120Fbc03sc00i00\n"
    assert read(f"{d}/driver_override") == "(null)\n" and read(f"{d}/boot_vga") == "0\n"
    assert read(f"{d}/numa_node") == "0\n" and read(f"{d}/local_cpulist") == "0-15\n"
    assert read(f"{d}/current_link_speed") == "8.0 GT/s PCIe\n" and read(f"{d}/max_link_width") == "16\n"
    assert read(f"{d}/reset_method") == "bus\n"
    assert stat.S_IMODE(os.stat(f"{d}/remove").st_mode) == 0o200
    assert not os.path.exists(d[:-1] + "1/boot_vga")  # audio function: not VGA class
    assert read(server.functions["0000:19:00.0"].path + "/driver_override") == "vfio-pci\n"
    assert read(server.functions["0000:02:00.0"].path + "/boot_vga") == "1\n"
    assert read(server.functions["0000:86:00.0"].path + "/numa_node") == "1\n"
    assert "uevent" in os.listdir(d) and "DRIVER=" not in read(server.functions["0000:3b:01.4"].path + "/uevent")
    res = read(f"{d}/resource").splitlines()
    assert len(res) == 13 and all(re.fullmatch(r"0x[0-9a-f]{16} 0x[0-9a-f]{16} 0x[0-9a-f]{16}", ln) for ln in res)
    start, end, flags = (int(x, 16) for x in res[1].split())
    assert end - start + 1 == 256 << 20 and flags & 0x2000  # BAR1: prefetchable
    assert len(read(server.functions["0000:17:00.0"].path + "/resource").splitlines()) == 17


def test_config_space_headers(server):
    def cfg(addr):
        with open(server.functions[addr].path + "/config", "rb") as f:
            return f.read()
    gpu, audio, port, ast = cfg("0000:18:00.0"), cfg("0000:18:00.1"), cfg("0000:17:00.0"), cfg("0000:02:00.0")
    assert len(gpu) == 4096 and len(ast) == 256
    assert struct.unpack_from("<HH", gpu) == (0x10DE, 0x1B06) and gpu[8] == 0xA1
    assert gpu[9:12] == bytes((0x00, 0x00, 0x03)) and gpu[0x0E] == 0x80  # type 0, multifunction
    assert struct.unpack_from("<HH", gpu, 0x2C) == (0x10DE, 0x120F)
    assert audio[0x0E] == 0x80 and audio[9:12] == bytes((0x00, 0x03, 0x04))
    assert port[0x0E] == 0x01 and tuple(port[0x18:0x1B]) == (0x17, 0x18, 0x18)
    cap, seen = gpu[0x34], []
    while cap:
        seen.append(gpu[cap])
        cap = gpu[cap + 1]
    assert seen == [0x01, 0x10]  # power management, PCI Express
    vf = cfg("0000:3b:00.2")
    assert struct.unpack_from("<HH", vf) == (0x15B3, 0x1018) and vf[0x0E] == 0


# -- SR-IOV, netdevs, mdev, vGPU -----------------------------------------------------------------------------
def test_sriov_pf_and_vf_links(server):
    pf = server.functions["0000:3b:00.0"]
    assert [read(f"{pf.path}/{a}") for a in ("sriov_totalvfs", "sriov_numvfs", "sriov_offset", "sriov_stride",
                                             "sriov_vf_device")] == ["8\n", "8\n", "2\n", "1\n", "1018\n"]
    vfs = [f"0000:3b:00.{n}" for n in range(2, 8)] + ["0000:3b:01.0", "0000:3b:01.1"]
    for n, addr in enumerate(vfs):
        vf = server.functions[addr]
        assert os.readlink(f"{pf.path}/virtfn{n}") == f"../{addr}"
        assert os.readlink(f"{vf.path}/physfn") == "../0000:3b:00.0"
        assert os.path.dirname(vf.path) == os.path.dirname(pf.path)
        assert read(f"{vf.path}/device") == "0x1018\n"
        assert os.path.isdir(f"{vf.path}/net") == (vf.driver == "mlx5_core")
        assert vf.group is not None and vf.group != pf.group
    assert read(f"{pf.path}/net/enp59s0f0np0/address") == "b8:59:9f:a1:2c:00\n"
    assert os.readlink(f"{pf.path}/net/enp59s0f0np0/device") == "../../../0000:3b:00.0"
    assert read(f"{pf.path}/net/enp59s0f0np0/phys_port_name") == "p0\n"
    vf1 = server.functions["0000:3b:00.3"].path
    assert real(f"{server.root}/sys/class/net/enp59s0f0v1") == f"{vf1}/net/enp59s0f0v1"
    assert read(f"{pf.path}/net/enp59s0f0np0/phys_switch_id") == "98039b0300a1b2c3\n"
    assert server.functions["0000:3b:01.2"].physfn == "0000:3b:00.1"  # PF1's VFs start after PF0's


def test_mdev_and_nvidia_vgpu(server):
    sys_, t4 = f"{server.root}/sys", server.functions["0000:af:00.0"]
    types = sorted(os.listdir(f"{t4.path}/mdev_supported_types"))
    assert types == ["nvidia-222", "nvidia-223", "nvidia-224", "nvidia-225"]
    t = f"{t4.path}/mdev_supported_types/nvidia-224"
    assert read(t + "/name") == "GRID T4-1Q\n" and read(t + "/device_api") == "vfio-pci\n"
    assert read(t + "/available_instances") == "15\n"
    inst = f"{t4.path}/{F.T4_MDEV_UUID}"
    assert real(inst + "/mdev_type") == t and real(f"{t}/devices/{F.T4_MDEV_UUID}") == inst
    assert real(f"{sys_}/bus/mdev/devices/{F.T4_MDEV_UUID}") == inst
    assert real(inst + "/driver") == f"{sys_}/bus/mdev/drivers/vfio_mdev"
    assert real(f"{sys_}/class/mdev_bus/0000:af:00.0") == t4.path
    group = os.path.basename(real(inst + "/iommu_group"))
    assert os.listdir(f"{sys_}/kernel/iommu_groups/{group}/devices") == [F.T4_MDEV_UUID]
    for vf in ("0000:d8:00.4", "0000:d8:00.5"):
        d = server.functions[vf].path + "/nvidia"
        assert read(d + "/creatable_vgpu_types").splitlines()[0] == "558 : NVIDIA A100-4C"
        assert read(d + "/current_vgpu_type") == "0\n"


# -- IOMMU groups --------------------------------------------------------------------------------------------
def members(b: SysfsBuilder, addr: str) -> set[str]:
    return set(os.listdir(f"{b.root}/sys/kernel/iommu_groups/{b.functions[addr].group}/devices"))


def test_gpu_server_groups(server):
    sys_ = f"{server.root}/sys"
    for bus in ("18", "19", "86", "87"):
        assert members(server, f"0000:{bus}:00.0") == {f"0000:{bus}:00.0", f"0000:{bus}:00.1"}
    assert members(server, "0000:02:00.0") == {"0000:01:00.0", "0000:02:00.0"}  # behind the AST1150 (no ACS)
    assert members(server, "0000:00:1f.4") == {"0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.4", "0000:00:1f.5"}
    assert members(server, "0000:3b:00.0") == {"0000:3b:00.0"}
    assert read(f"{sys_}/kernel/iommu_groups/{server.functions['0000:18:00.0'].group}/type") == "identity\n"
    assert sorted(os.listdir(f"{sys_}/class/iommu")) == ["dmar0", "dmar1"]
    assert real(server.functions["0000:86:00.0"].path + "/iommu") == f"{sys_}/devices/virtual/iommu/dmar1"
    assert os.path.exists(f"{server.root}/dev/vfio/{server.functions['0000:19:00.0'].group}")
    table = f"{sys_}/firmware/acpi/tables/DMAR"
    assert stat.S_IMODE(os.stat(table).st_mode) == 0o400  # root-only, as on a real host
    if os.access(table, os.R_OK):
        with open(table, "rb") as f:
            dmar = f.read()
        assert dmar[:4] == b"DMAR" and struct.unpack_from("<I", dmar, 4)[0] == len(dmar) and sum(dmar) % 256 == 0


def test_broken_desktop_shares_one_group_behind_the_switch(tmp_path):
    b = F.make_broken_desktop(tmp_path / "d")
    shared = {"0000:01:00.0", "0000:02:00.0", "0000:02:04.0", "0000:02:08.0", "0000:03:00.0", "0000:03:00.1",
              "0000:04:00.0", "0000:05:00.0"}
    for addr in ("0000:03:00.0", "0000:03:00.1", "0000:04:00.0", "0000:05:00.0"):
        assert members(b, addr) == shared
    assert members(b, "0000:00:01.2") == {"0000:00:01.2"}
    sys_ = f"{b.root}/sys"
    assert read(b.functions["0000:06:00.0"].path + "/boot_vga") == "1\n"
    assert real(f"{sys_}/class/iommu/ivhd0") == b.functions["0000:00:00.2"].path + "/iommu/ivhd0"
    assert os.listdir(f"{sys_}/firmware/acpi/tables") == ["IVRS"]
    cmdline = read(f"{b.root}/proc/cmdline")
    assert "iommu=pt" in cmdline and "vfio" not in cmdline and "vfio" not in read(f"{b.root}/proc/modules")
    assert "AuthenticAMD" in read(f"{b.root}/proc/cpuinfo") and " svm " in read(f"{b.root}/proc/cpuinfo")


def test_bare_host_has_no_iommu(bare_host):
    sys_ = f"{bare_host}/sys"
    assert os.listdir(f"{sys_}/kernel/iommu_groups") == [] and os.listdir(f"{sys_}/class/iommu") == []
    assert os.listdir(f"{sys_}/firmware/acpi/tables") == []
    for addr in os.listdir(f"{sys_}/bus/pci/devices"):
        assert not os.path.lexists(f"{sys_}/bus/pci/devices/{addr}/iommu_group")
    assert read(f"{sys_}/bus/pci/devices/0000:00:01.0/boot_vga") == "1\n"
    assert os.listdir(f"{sys_}/bus/usb/devices") == []
    assert real(f"{sys_}/class/net/enp1s0/device") == real(f"{sys_}/bus/pci/devices/0000:01:00.0")


# -- USB, serial, storage, proc ------------------------------------------------------------------------------
def test_usb_tree(server):
    sys_, xhci = f"{server.root}/sys", server.functions["0000:00:14.0"].path
    expect = {"usb1": "usb1", "usb2": "usb2", "1-0:1.0": "usb1/1-0:1.0", "1-1": "usb1/1-1", "1-1.1": "usb1/1-1/1-1.1",
              "1-1.3": "usb1/1-1/1-1.3", "1-1.3:1.0": "usb1/1-1/1-1.3/1-1.3:1.0", "1-2": "usb1/1-2"}
    for name, rel in expect.items():
        assert real(f"{sys_}/bus/usb/devices/{name}") == f"{xhci}/{rel}"
    ftdi = f"{xhci}/usb1/1-1/1-1.3"
    assert [read(f"{ftdi}/{a}") for a in ("idVendor", "idProduct", "serial", "devpath", "speed", "bNumInterfaces",
                                          "maxchild", "busnum")] == \
        ["0403\n", "6001\n", "A50285BI\n", "1.3\n", "12\n", " 1\n", "0\n", "1\n"]
    devnum = int(read(f"{ftdi}/devnum"))
    assert f"DEVNAME=bus/usb/001/{devnum:03d}\nDEVTYPE=usb_device\nDRIVER=usb\nPRODUCT=403/6001/600\n" in \
        read(f"{ftdi}/uevent")
    assert os.path.isfile(f"{server.root}/dev/bus/usb/001/{devnum:03d}")
    assert read(f"{xhci}/usb1/idProduct") == "0002\n" and read(f"{xhci}/usb2/idProduct") == "0003\n"
    assert read(f"{xhci}/usb1/1-1/maxchild") == "4\n" and read(f"{xhci}/usb1/1-1/bDeviceClass") == "09\n"
    assert real(f"{xhci}/usb1/1-0:1.0/driver") == f"{sys_}/bus/usb/drivers/hub"
    assert real(f"{xhci}/usb1/1-1/1-1.1/1-1.1:1.0/driver") == f"{sys_}/bus/usb/drivers/usbhid"
    assert real(f"{ftdi}/driver") == f"{sys_}/bus/usb/drivers/usb"
    assert read(f"{xhci}/usb1/1-2/1-2:1.0/bInterfaceClass") == "08\n"


def test_serial_ports(server):
    sys_, tty = f"{server.root}/sys", f"{server.root}/sys/class/tty"
    assert real(f"{tty}/ttyS0") == f"{sys_}/devices/pnp0/00:04/tty/ttyS0"
    assert os.readlink(f"{tty}/ttyS0/device") == "../../../00:04"
    assert read(f"{tty}/ttyS0/type") == "4\n" and read(f"{tty}/ttyS0/port") == "0x3F8\n"
    assert read(f"{tty}/ttyS0/console") == "Y\n" and read(f"{tty}/ttyS0/dev") == "4:64\n"
    for n in (1, 2, 3):
        assert real(f"{tty}/ttyS{n}") == f"{sys_}/devices/platform/serial8250/tty/ttyS{n}"
        assert read(f"{tty}/ttyS{n}/type") == "0\n"
    assert real(f"{tty}/ttyS4") == server.functions["0000:03:00.0"].path + "/tty/ttyS4"
    assert os.readlink(f"{tty}/ttyS1/device") == "../../../serial8250"
    assert os.readlink(f"{tty}/ttyS4/device") == "../../../0000:03:00.0"
    assert real(f"{tty}/ttyUSB0").endswith("/usb1/1-1/1-1.3/1-1.3:1.0/ttyUSB0/tty/ttyUSB0")
    assert read(f"{tty}/console/active") == "tty0 ttyS0\n"
    assert all(os.path.isfile(f"{server.root}/dev/{n}") for n in ("ttyS0", "ttyS3", "ttyS4", "ttyUSB0"))
    by_id = os.listdir(f"{server.root}/dev/serial/by-id")
    assert any(n.startswith("usb-FTDI_FT232R_USB_UART_A50285BI") for n in by_id)


def test_proc_storage_and_modules(server):
    root, sys_ = server.root, f"{server.root}/sys"
    cpuinfo = read(f"{root}/proc/cpuinfo")
    assert cpuinfo.count("processor\t:") == 32 and "GenuineIntel" in cpuinfo and " vmx " in cpuinfo
    assert "intel_iommu=on" in read(f"{root}/proc/cmdline")
    assert "/dev/nvme0n1p1 /boot/efi vfat" in read(f"{root}/proc/mounts")
    assert read(f"{root}/proc/swaps").startswith("Filename") and len(read(f"{root}/proc/swaps").splitlines()) == 1
    nv = server.functions["0000:5e:00.0"].path
    assert real(f"{sys_}/block/nvme0n1") == f"{nv}/nvme/nvme0/nvme0n1"
    assert os.path.isdir(f"{nv}/nvme/nvme0/nvme0n1/nvme0n1p1") and os.path.isfile(f"{root}/dev/nvme0n1p1")
    assert real(f"{sys_}/class/nvme/nvme1") == server.functions["0000:5f:00.0"].path + "/nvme/nvme1"
    mods = {ln.split()[0]: ln.split() for ln in read(f"{root}/proc/modules").splitlines()}
    assert {"vfio_pci", "vfio", "vfio_iommu_type1", "nvidia", "mlx5_core", "kvm_intel"} <= set(mods)
    assert "vfio_pci," in mods["vfio_pci_core"][3] and "pcieport" not in mods
    assert real(f"{sys_}/bus/pci/drivers/vfio-pci/module") == f"{sys_}/module/vfio_pci"
    assert read(f"{sys_}/module/vfio_pci/initstate") == "live\n"
    assert read(f"{sys_}/devices/system/node/node1/cpulist") == "16-31\n"


# -- builder behaviour ---------------------------------------------------------------------------------------
@needs_lspci
def test_odd_cases_vmd_domain_lonely_vf_missing_attribute(tmp_path):
    b = SysfsBuilder(tmp_path / "odd", auto_groups=True, drivers=("vfio-pci",))
    b.iommu("intel")
    b.pci("0000:00:0e.0", 0x8086, 0x467F, 0x010400, driver="vmd", link=None, bars=[("mem64", 32 << 20)])
    b.bridge("10000:00:02.0", parent="0000:00:0e.0")
    b.pci("10000:01:00.0", 0x144D, 0xA808, 0x010802, parent="10000:00:02.0", driver="nvme", omit=("numa_node",))
    b.bridge("0000:00:01.0")
    b.pci("0000:01:00.0", 0x8086, 0x10C9, 0x020000, parent="0000:00:01.0", driver="vfio-pci", acs=True)
    b.sriov("0000:01:00.0", 7, 2, 0x10CA, stride=2, vf_driver="vfio-pci")
    b.build()
    sys_ = f"{b.root}/sys"
    nvme = f"{sys_}/devices/pci0000:00/0000:00:0e.0/pci10000:00/10000:00:02.0/10000:01:00.0"
    assert real(f"{sys_}/bus/pci/devices/10000:01:00.0") == nvme
    assert not os.path.exists(nvme + "/numa_node") and read(nvme + "/uevent").count("10000:01:00.0") == 1
    assert members(b, "10000:01:00.0") == {"0000:00:0e.0", "10000:00:02.0", "10000:01:00.0"}
    assert not os.path.exists(b.functions["0000:01:00.0"].path + "/net")
    assert os.readlink(b.functions["0000:01:10.2"].path + "/physfn") == "../0000:01:00.0"
    assert read(b.functions["0000:01:10.0"].path + "/numa_node") == "-1\n"
    assert os.listdir(f"{sys_}/bus/pci/drivers/vfio-pci")  # bound devices besides bind/unbind
    seen = parse_lspci(lspci(b.root, "-nnkD"))
    assert sorted(seen) == sorted(b.functions) and seen["10000:01:00.0"]["driver"] == "nvme"
    assert b.fn("01:10.0") is b.functions["0000:01:10.0"]  # short spellings are accepted
    b.bind("01:10.0", None)
    assert not os.path.lexists(b.functions["0000:01:10.0"].path + "/driver")
    assert "DRIVER=" not in read(b.functions["0000:01:10.0"].path + "/uevent")


@needs_lspci
def test_remove_pci_takes_the_subtree_and_its_links(fresh_server):
    server = fresh_server
    before = set(server.functions)
    gone_group = server.functions["0000:19:00.0"].group
    server.remove_pci("0000:17:02.0")  # root port with the vfio GPU behind it
    server.remove_pci("0000:3b:00.1")  # PF1 and its VFs
    gone = {"0000:17:02.0", "0000:19:00.0", "0000:19:00.1", "0000:3b:00.1"} | {
        a for a in before if a.startswith(("0000:3b:01.", "0000:3b:02.")) and a not in ("0000:3b:01.0", "0000:3b:01.1")}
    assert set(server.functions) == before - gone
    sys_ = f"{server.root}/sys"
    assert set(os.listdir(f"{sys_}/bus/pci/devices")) == before - gone
    assert not os.path.exists(f"{sys_}/kernel/iommu_groups/{gone_group}")
    assert not os.path.lexists(f"{sys_}/class/net/enp59s0f1np1")
    test_every_symlink_is_relative_and_resolves(server)
    assert sorted(parse_lspci(lspci(server.root, "-nnkD"))) == sorted(server.functions)


def test_build_twice_is_stable(fresh_server):
    server = fresh_server
    groups = dict(server.groups)
    server.build()
    assert server.groups == groups
    test_every_symlink_is_relative_and_resolves(server)


def test_named_fixtures_return_roots(gpu_server, broken_desktop, bare_host, tmp_path):
    for root in (gpu_server, broken_desktop, bare_host):
        assert Path(root).parent == tmp_path and os.path.isdir(f"{root}/sys/bus/pci/devices")


@needs_lspci
def test_big_tree_4096_functions():
    # tmpfs when there is one: on a disk-backed /tmp this ~200k-entry tree is bound by the disk, not the builder
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="big_tree_", dir=base))
    try:
        b = F.make_big_tree(root / "host", 4096)  # its build time: bench/builder.py
        assert len(os.listdir(f"{b.root}/sys/bus/pci/devices")) == 4096 == len(b.functions)
        listed = parse_lspci(lspci(b.root, "-nnkD"))
        assert len(listed) == 4096 and sorted(listed) == sorted(b.functions)
        assert len({f.dom for f in b.functions.values()}) > 1 and len(b.groups) > 1000
    finally:
        shutil.rmtree(root, ignore_errors=True)
