"""Discovery on realistic fixture trees: every attribute against what the fixture meant, and the odd cases."""

from __future__ import annotations

import os
import shutil

import pytest

import sysfs_fixtures as fx
from passthru.discovery import discover
from passthru.host.iommu import read_iommu_state, scan_groups
from passthru.host.pci import read_function, scan_pci
from passthru.host.root import HostRoot
from passthru.host.serial import scan_serial
from passthru.host.usb import scan_usb
from sysfs_builder import SysfsBuilder

MAKERS = {"gpu_server": fx.make_gpu_server, "broken_desktop": fx.make_broken_desktop, "bare_host": fx.make_bare_host}


@pytest.fixture(params=sorted(MAKERS))
def built(request, tmp_path):
    b = MAKERS[request.param](tmp_path / request.param)
    return b, HostRoot(b.root)


def test_every_function_matches_the_fixture(built):
    b, h = built
    fns = {f.address: f for f in scan_pci(h)}
    assert sorted(fns) == sorted(b.functions)
    for addr, spec in b.functions.items():
        f = fns[addr]
        assert (f.vendor_id, f.device_id, f.class_code) == (spec.vendor, spec.device, spec.class_code), addr
        assert (f.subsystem_vendor_id, f.subsystem_device_id) == spec.subsystem or spec.header_type != 0, addr
        assert f.revision == spec.revision and f.header_type == spec.header_type, addr
        assert f.driver == spec.driver, addr
        assert f.numa_node == spec.numa_node, addr
        assert f.iommu_group == spec.group, addr
        assert f.parent == spec.parent, addr
        assert f.reset_methods == tuple(spec.reset_methods), addr
        assert f.boot_vga == spec.boot_vga if spec.class_code >> 8 == 0x0300 else f.boot_vga is None, addr
        if spec.link is None:
            assert (f.current_link_speed, f.current_link_width, f.max_link_speed) == (None, None, None), addr
        else:
            cur_s, cur_w, max_s, max_w = (tuple(spec.link) * 2)[:4] if len(spec.link) == 2 else spec.link
            assert (f.current_link_width, f.max_link_speed, f.max_link_width) == (cur_w, max_s, max_w), addr
            assert f.current_link_speed == (cur_s if spec.physfn is None else None), addr
        assert f.physfn == spec.physfn, addr
        assert sorted(f.netdevs) == sorted(spec.netdevs), addr
        assert f.accessible


def test_gpu_server_sriov_vgpu_and_mdev(tmp_path):
    h = HostRoot(fx.gpu_server(tmp_path / "s"))
    fns = {f.address: f for f in scan_pci(h)}
    pf0 = fns["0000:3b:00.0"]
    assert (pf0.sriov_totalvfs, pf0.sriov_numvfs, len(pf0.vfs)) == (8, 8, 8)
    assert pf0.netdevs == ("enp59s0f0np0",)
    for i, vf in enumerate(pf0.vfs):
        assert fns[vf].physfn == "0000:3b:00.0" and fns[vf].vf_index == i
    # a VF bound to vfio-pci has no netdev; one left unbound has no driver at all
    pf1 = fns["0000:3b:00.1"]
    assert [fns[v].driver for v in pf1.vfs] == ["mlx5_core"] * 2 + [None] + ["vfio-pci"] * 5
    assert [bool(fns[v].netdevs) for v in pf1.vfs] == [True, True] + [False] * 6
    # read_function alone (not via scan) finds the VF index through the PF's links too
    assert read_function(h, pf1.vfs[5]).vf_index == 5
    t4 = fns["0000:af:00.0"]
    assert [t.id for t in t4.mdev_types] == ["nvidia-222", "nvidia-223", "nvidia-224", "nvidia-225"]
    # one instance of nvidia-224 exists, so one fewer is available
    assert t4.mdev_types[2].name == "GRID T4-1Q" and t4.mdev_types[2].available_instances == 15
    assert t4.mdev_types[0].device_api == "vfio-pci"
    assert [(m.uuid, m.type_id) for m in t4.mdevs] == [(fx.T4_MDEV_UUID, "nvidia-224")]
    a100_vf = fns["0000:d8:00.4"]
    assert a100_vf.nvidia_creatable_vgpu_types[0] == "558 : NVIDIA A100-4C"
    assert a100_vf.nvidia_current_vgpu_type == "0" and a100_vf.physfn == "0000:d8:00.0"
    assert fns["0000:19:00.0"].driver_override == "vfio-pci" and fns["0000:18:00.0"].driver_override is None


def test_kinds_roles_and_companions(tmp_path):
    inv = discover(HostRoot(fx.gpu_server(tmp_path / "s")))
    dev = {d.id: d for d in inv.devices}
    for gpu in ("0000:18:00.0", "0000:19:00.0", "0000:86:00.0", "0000:87:00.0"):
        audio = gpu[:-1] + "1"
        assert (dev[gpu].kind, dev[gpu].role, dev[gpu].companions) == ("gpu", "display", [audio])
        assert (dev[audio].kind, dev[audio].role, dev[audio].companion_of) == ("gpu", "companion", gpu)
    assert dev["0000:02:00.0"].kind == "gpu" and dev["0000:02:00.0"].fact.boot_vga is True
    assert dev["0000:af:00.0"].kind == "gpu" and dev["0000:af:00.0"].companions == []
    assert (dev["0000:3b:00.0"].kind, dev["0000:3b:00.0"].role) == ("nic", "pf")
    assert (dev["0000:3b:00.2"].kind, dev["0000:3b:00.2"].role) == ("nic", "vf")
    assert (dev["0000:d8:00.0"].role, dev["0000:d8:00.4"].role) == ("pf", "vf")  # A100 SR-IOV vGPU
    assert (dev["0000:5e:00.0"].kind, dev["0000:5e:00.0"].role) == ("nvme", "plain")
    assert dev["0000:17:00.0"].kind == "bridge" and dev["0000:00:14.0"].kind == "other"
    usb = {d.id: d for d in inv.devices if d.bus == "usb"}
    assert sorted(usb) == ["1-1", "1-1.1", "1-1.3", "1-2"]  # root hubs never offered
    assert usb["1-1"].role == "hub" and usb["1-2"].role == "device"
    serial = sorted(d.id for d in inv.devices if d.bus == "serial")
    assert serial == ["/dev/ttyS0", "/dev/ttyS4", "/dev/ttyUSB0"]  # ghosts never offered


def test_broken_desktop_group_is_not_viable_and_names_the_blockers(tmp_path):
    h = HostRoot(fx.broken_desktop(tmp_path / "d"))
    pci = scan_pci(h)
    gpu = next(f for f in pci if f.address == "0000:03:00.0")
    group = next(g for g in scan_groups(h, pci) if g.number == gpu.iommu_group)
    assert {"0000:03:00.0", "0000:03:00.1", "0000:04:00.0", "0000:05:00.0"} <= set(group.devices)
    assert not group.viable
    assert set(group.blockers) == {"0000:03:00.0", "0000:03:00.1", "0000:04:00.0", "0000:05:00.0"}
    assert "0000:05:00.0 (ahci)" in group.reason and "0000:04:00.0 (xhci_hcd)" in group.reason
    # the switch ports in the group stay on pcieport and do not count against it
    assert not any(a in group.blockers for a in ("0000:01:00.0", "0000:02:00.0"))
    state = read_iommu_state(h)
    assert state.enabled and state.vendor == "amd" and state.units == ("ivhd0",)


def test_group_with_endpoints_on_vfio_is_viable(tmp_path):
    b = fx.make_broken_desktop(tmp_path / "d")
    for addr in ("0000:03:00.0", "0000:03:00.1", "0000:04:00.0"):
        b.bind(addr, "vfio-pci")
    b.bind("0000:05:00.0", None)  # unbound counts as safe
    h = HostRoot(b.root)
    pci = scan_pci(h)
    group = next(g for g in scan_groups(h, pci) if "0000:03:00.0" in g.devices)
    assert group.viable and group.blockers == (), group.reason


def test_no_iommu_host(tmp_path):
    h = HostRoot(fx.bare_host(tmp_path / "b"))
    inv = discover(h)
    assert not inv.iommu.enabled and inv.iommu.units == () and inv.iommu.vendor is None
    assert "IOMMU off" in inv.iommu.message and "passthru doctor" in inv.iommu.message
    assert all(f.iommu_group is None for f in inv.pci)
    assert all(f.numa_node == -1 for f in inv.pci)
    assert scan_groups(h, inv.pci) == []
    assert scan_usb(h) == []
    assert next(d for d in inv.devices if d.fact is not None and d.id == "0000:00:01.0").fact.boot_vga is True


def test_odd_cases_vmd_domain_missing_attributes_vf_without_pf_netdev(tmp_path):
    b = SysfsBuilder(tmp_path / "odd", auto_groups=True)
    b.iommu("intel")
    b.pci("0000:00:00.0", 0x8086, 0x2020, 0x060000, link=None, reset_methods=())
    b.pci("0000:00:0e.0", 0x8086, 0x201D, 0x010400, driver="vmd", link=None, reset_methods=())  # VMD controller
    b.bridge("10000:00:00.0", parent="0000:00:0e.0")
    b.pci("10000:01:00.0", 0x144D, 0xA808, 0x010802, parent="10000:00:00.0", driver="nvme",
          omit=("numa_node", "reset_method", "driver_override"))
    b.bridge("0000:00:01.0")
    b.pci("0000:01:00.0", 0x8086, 0x10C9, 0x020000, parent="0000:00:01.0", driver=None)  # PF unbound: no netdev
    b.sriov("0000:01:00.0", 7, 2, 0x10CA, vf_driver="igbvf")
    b.build()
    h = HostRoot(b.root)
    fns = {f.address: f for f in scan_pci(h)}
    vmd_nvme = fns["10000:01:00.0"]
    assert vmd_nvme.parent == "10000:00:00.0" and vmd_nvme.numa_node == -1
    assert vmd_nvme.reset_methods == () and vmd_nvme.driver_override is None
    assert list(fns)[-1] == "10000:01:00.0", "32-bit domains sort after 16-bit ones"
    pf = fns["0000:01:00.0"]
    assert pf.netdevs == () and pf.driver is None and len(pf.vfs) == 2
    assert all(fns[v].physfn == pf.address for v in pf.vfs)
    inv = discover(h)
    assert {d.id: d.role for d in inv.devices if d.bus == "pci"}[pf.vfs[0]] == "vf"


def test_device_vanishing_mid_scan_is_skipped(tmp_path):
    b = fx.make_bare_host(tmp_path / "b")
    h = HostRoot(b.root)
    before = {f.address for f in scan_pci(h)}
    # the bus still lists it (a dangling link) but its directory is gone: hot-unplugged between listdir and read
    gone = "0000:01:00.0"
    shutil.rmtree(b.fn(gone).path)
    assert os.path.islink(f"{h.sys}/bus/pci/devices/{gone}")
    after = {f.address for f in scan_pci(h)}
    assert after == before - {gone}
    assert read_function(h, gone) is None


def test_dead_device_reading_all_ones_is_reported_not_dropped(tmp_path):
    b = fx.make_bare_host(tmp_path / "b")
    h = HostRoot(b.root)
    cfg = f"{b.fn('0000:01:00.0').path}/config"
    with open(cfg, "r+b") as f:
        size = len(f.read())
        f.seek(0)
        f.write(b"\xff" * size)
    fn = read_function(h, "0000:01:00.0")
    assert fn is not None and fn.accessible is False
    assert (fn.vendor_id, fn.device_id, fn.class_code) == (0x1AF4, 0x1041, 0x020000), "IDs from the kernel's cache"


def test_serial_ports(tmp_path):
    ports = {p.name: p for p in scan_serial(HostRoot(fx.gpu_server(tmp_path / "s")))}
    assert [n for n in ports] == ["ttyS0", "ttyS1", "ttyS2", "ttyS3", "ttyS4", "ttyUSB0"]
    s0 = ports["ttyS0"]
    assert (s0.console, s0.ghost, s0.backing_bus, s0.backing_id) == (True, False, "pnp", "00:04")
    assert all(ports[f"ttyS{n}"].ghost for n in (1, 2, 3))
    assert (ports["ttyS4"].backing_bus, ports["ttyS4"].backing_id) == ("pci", "0000:03:00.0")
    usb = ports["ttyUSB0"]
    assert (usb.kind, usb.backing_bus, usb.backing_id, usb.usb_serial) == ("usb-serial", "usb", "1-1.3", "A50285BI")
    assert (usb.usb_vendor_id, usb.usb_product_id, usb.driver) == (0x0403, 0x6001, "ftdi_sio")


def test_serial_behind_serial_base_devices_kernel_6_5(tmp_path):
    """Kernels >= 6.5 put serial-base controller/port devices between the UART and its tty."""
    root = tmp_path / "r"
    hw = root / "sys/devices/pnp0/00:00"
    port = hw / "00:00:0" / "00:00:0.0"
    tty = port / "tty" / "ttyS0"
    tty.mkdir(parents=True)
    (root / "sys/bus/pnp/drivers/serial").mkdir(parents=True)
    (root / "sys/bus/serial-base").mkdir(parents=True)
    os.symlink("../../../bus/pnp", hw / "subsystem")
    os.symlink("../../../bus/pnp/drivers/serial", hw / "driver")
    for d, up in ((hw / "00:00:0", "../../../../bus/serial-base"), (port, "../../../../../bus/serial-base")):
        os.symlink(up, d / "subsystem")
    os.symlink("../../../00:00:0.0", tty / "device")
    (tty / "type").write_text("4\n")
    (root / "sys/class/tty").mkdir(parents=True)
    os.symlink("../../devices/pnp0/00:00/00:00:0/00:00:0.0/tty/ttyS0", root / "sys/class/tty/ttyS0")
    (port / "driver").symlink_to("../../../../../bus/serial-base/drivers/port")
    (p,) = scan_serial(HostRoot(root))
    assert (p.backing_bus, p.backing_id, p.driver, p.ghost) == ("pnp", "00:00", "serial", False)


def test_usb_devices(tmp_path):
    devs = {u.port_path: u for u in scan_usb(HostRoot(fx.gpu_server(tmp_path / "s")))}
    assert list(devs) == ["usb1", "1-1", "1-1.1", "1-1.3", "1-2", "usb2"]
    assert devs["usb1"].is_root_hub and devs["usb1"].port == "0" and devs["usb1"].controller == "0000:00:14.0"
    hub = devs["1-1"]
    assert hub.is_hub and hub.maxchild == 4 and (hub.vendor_id, hub.product_id) == (0x0424, 0x2514)
    kbd = devs["1-1.1"]
    assert (kbd.busnum, kbd.port, kbd.speed_mbps, kbd.product, kbd.manufacturer) == (1, "1.1", "1.5", "USB Keyboard",
                                                                                    "Logitech")
    assert [i.driver for i in kbd.interfaces] == ["usbhid", "usbhid"] and kbd.interfaces[0].interface_class == 3
    stick = devs["1-2"]
    assert stick.serial == "4C530001230918108171" and not stick.is_hub and stick.devnum is not None
    assert stick.controller == "0000:00:14.0"
