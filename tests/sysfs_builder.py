"""SysfsBuilder: directory trees shaped like a Linux 6.x host's /sys, /proc and /dev, for tests.

passthru's readers take a root directory and read ``<root>/sys/...``, ``<root>/proc/...``; so can real tools
(``lspci -A linux-sysfs -O sysfs.path=<root>/sys/bus/pci``). The trees reproduce what the kernel shows: relative
symlinks where the kernel has symlinks (driver, iommu_group, subsystem, physfn/virtfnN, bus/ and class/ entries),
attributes formatted and newline-terminated as the kernel prints them, write-only files (bind, remove...) as mode
0200, and a binary ``config`` with a real type-0/type-1 header and capability list (PM, PCI Express, ACS, SR-IOV).

    b = SysfsBuilder(tmp, auto_groups=True); b.iommu("intel"); rp = b.bridge("0000:00:01.0")
    b.pci("0000:01:00.0", 0x10DE, 0x1B06, 0x030000, parent="0000:00:01.0", driver="nvidia"); b.build()

Methods write as they go. ``build()`` does what needs the whole picture (bridge bus numbers and windows,
multifunction bits, ``config`` and ``resource``, IOMMU groups and units, modules) and may be called again after
more calls. Not reproduced: resourceN mmap files, msi_irqs/, firmware_node, udev's /run database.

Storage and network stacks for "what does the host use this device for" (all opt-in; trees built without these
calls are unchanged): SATA disks behind an AHCI function (``sata``), device-mapper and MD RAID devices under
/sys/devices/virtual/block with ``slaves/`` and the lower devices' ``holders/`` (``dm``, ``md``), native NVMe
multipath heads (``nvme_multipath``), mounts with /proc/self/mountinfo (``mount``), IPv4 routes and IPv6
addresses in /proc/net/route and /proc/net/if_inet6 (``ip``, ``route``), bonds, bridges and VLANs with
master/upper_/lower_ links (``net_upper``), and serial ports under the serial-base devices of kernels >= 6.5
(``serial(..., serial_base=True)``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SysfsBuilder", "PciSpec", "KERNEL_RELEASE", "PID"]

KERNEL_RELEASE = "6.8.0-45-generic"
PID = 2342  # the process reading the tree: /proc/self links to /proc/2342, /proc/net to self/net (as on a host)
_SD_MAJORS = (8, 65, 66, 67, 68, 69, 70, 71, 128, 129, 130, 131, 132, 133, 134, 135)  # sd_major(): 16 disks each
# per-mount (VFS) flags shown before the optional fields of mountinfo; the rest are superblock options
_VFS_FLAGS = frozenset({"ro", "rw", "nosuid", "nodev", "noexec", "relatime", "noatime", "nodiratime",
                        "strictatime", "nosymfollow"})
# pseudo filesystems of every host: (source, mount point, type, options) and their anonymous device numbers
_PSEUDO = (("sysfs", "/sys", "sysfs", "rw,nosuid,nodev,noexec,relatime", "0:21"),
           ("proc", "/proc", "proc", "rw,nosuid,nodev,noexec,relatime", "0:22"),
           ("udev", "/dev", "devtmpfs", "rw,nosuid,relatime,size=16384000k,nr_inodes=4096000,mode=755", "0:5"),
           ("tmpfs", "/run", "tmpfs", "rw,nosuid,nodev,noexec,relatime,size=3283000k,mode=755", "0:25"),
           ("cgroup2", "/sys/fs/cgroup", "cgroup2", "rw,nosuid,nodev,noexec,relatime", "0:27"))
_ZERO = "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
# BAR kind -> (low bits of the BAR register, IORESOURCE_* flags the kernel prints in `resource`, 64-bit)
_BAR_KINDS = {
    "io": (0x1, 0x40101, False), "mem": (0x0, 0x40200, False), "mempf": (0x8, 0x42208, False),
    "mem64": (0x4, 0x140204, True), "mem64pf": (0xC, 0x14220C, True),
}
_ROM_FLAGS, _WIN_FLAGS = 0x46200, {"io": 0x101, "mem": 0x200, "pf": 0x102201}
_SPEEDS = {"2.5 GT/s PCIe": 1, "5.0 GT/s PCIe": 2, "8.0 GT/s PCIe": 3, "16.0 GT/s PCIe": 4, "32.0 GT/s PCIe": 5,
           "64.0 GT/s PCIe": 6}
_PORT_TYPES = {"root_port": 4, "upstream": 5, "downstream": 6, "pcie_to_pci": 7, "pci": None}
_WRITE_ONLY = frozenset({"remove", "rescan", "reset", "bind", "unbind", "new_id", "remove_id", "drivers_probe",
                         "create"})
_READ_WRITE = frozenset({"driver_override", "enable", "d3cold_allowed", "msi_bus", "reset_method", "numa_node",
                         "sriov_numvfs", "sriov_drivers_autoprobe", "broken_parity_status", "config", "uevent",
                         "control", "authorized", "drivers_autoprobe", "current_vgpu_type", "bConfigurationValue"})
# driver name -> module name, where they differ; drivers in _BUILTIN have no module
_DRIVER_MODULE = {"vfio-pci": "vfio_pci", "xhci_hcd": "xhci_pci", "i801_smbus": "i2c_i801", "bochs-drm": "bochs",
                  "usb-storage": "usb_storage", "piix4_smbus": "i2c_piix4", "vfio_mdev": "vfio_mdev"}
_BUILTIN = frozenset({"pcieport", "serial", "usb", "hub", "virtio-pci", "serial8250"})
_MODULE_DEPS = {"vfio_pci": ("vfio_pci_core", "vfio"), "vfio_pci_core": ("vfio", "irqbypass"),
                "vfio_iommu_type1": ("vfio",), "vfio_mdev": ("mdev", "vfio"), "ftdi_sio": ("usbserial",),
                "kvm_intel": ("kvm",), "kvm_amd": ("kvm",), "nvidia_vgpu_vfio": ("mdev", "vfio", "nvidia")}
_WFLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_BOND_MODES = {"balance-rr": 0, "active-backup": 1, "balance-xor": 2, "broadcast": 3, "802.3ad": 4,
               "balance-tlb": 5, "balance-alb": 6}
# fib_route_seq_show(): the header and every route are padded to 127 columns
_ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def _put(path: str, data: str | bytes, mode: int | None = None) -> None:
    """Write a file with the mode sysfs would give it (0444 read-only, 0644 writable, 0200 write-only)."""
    if mode is None:
        name = path.rsplit("/", 1)[-1]
        mode = 0o200 if name in _WRITE_ONLY else 0o644 if name in _READ_WRITE else 0o444
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(path, _WFLAGS, mode)
    except PermissionError:  # rewriting a 0444 file as non-root
        os.unlink(path)
        fd = os.open(path, _WFLAGS, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)


def _attrs(d: str, values: dict) -> None:
    """Text attributes, newline-terminated like the kernel's; write-only ones are empty."""
    for name, v in values.items():
        _put(f"{d}/{name}", "" if name in _WRITE_ONLY else f"{v}\n")


def _link(link: str, target: str) -> None:
    """A relative symlink made the kernel's way: up to the target's parent, then the target's name, so a link to
    an ancestor reads ``../../../00:04`` (not ``../..``) and a driver link ``../../../../bus/pci/drivers/nvme``."""
    up = os.path.relpath(os.path.dirname(target), os.path.dirname(link))
    rel = os.path.basename(target) if up == "." else f"{up}/{os.path.basename(target)}"
    try:
        os.symlink(rel, link)
    except FileExistsError:
        os.unlink(link)
        os.symlink(rel, link)


def _parse(address: str) -> tuple[int, int, int]:
    """ "0000:01:00.0" / "10000:00:00.0" / "01:00.0" -> (domain, bus, devfn)."""
    parts = address.split(":")
    dom, bus, rest = parts if len(parts) == 3 else ("0", *parts)
    slot, fn = rest.split(".")
    return int(dom, 16), int(bus, 16), int(slot, 16) << 3 | int(fn)


def _fmt(dom: int, bus: int, devfn: int) -> str:
    return f"{dom:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7:x}"


def _res(start: int, size: int, flags: int) -> str:
    return f"0x{start:016x} 0x{start + size - 1:016x} 0x{flags:016x}\n"


def _sd_letters(index: int) -> str:
    """sd_format_disk_name(): 0 -> "a", 25 -> "z", 26 -> "aa"."""
    out, n = "", index + 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(97 + r) + out
    return out


def _be32_hex(value: int) -> str:
    """An IPv4 address or mask as /proc/net/route prints it: the network-order word read as a little-endian
    integer ("%08X" of a __be32 on x86 and arm64), so 192.0.2.0 is 000200C0."""
    return f"{int.from_bytes(value.to_bytes(4, 'big'), 'little'):08X}"


def _mangle(text: str) -> str:
    """Octal escapes of space, tab, newline and backslash, as in /proc/mounts, mountinfo and /proc/swaps."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in text)


@dataclass(eq=False)
class PciSpec:
    """What the builder knows of one PCI function: the fixture's intent, for tests to compare against."""

    address: str
    vendor: int
    device: int
    class_code: int
    subsystem: tuple[int, int]
    revision: int
    driver: str | None
    parent: str | None
    path: str  # absolute path of the function's directory under sys/devices
    numa_node: int
    irq: int
    link: tuple | None  # (speed, width, max_speed, max_width), None = conventional PCI
    pcie_type: int | None
    reset_methods: tuple[str, ...]
    header_type: int
    acs: bool
    iommu_group: int | None = None  # explicit group (None: automatic or none)
    acs_ctrl: int = 0x1D  # ACS control register (SV, RR, CR, UF on: what the kernel sets with an IOMMU)
    group: int | None = None  # the group it ended in (after build)
    bridge: str | None = None  # port kind for bridges, None for endpoints
    secondary: int | None = None
    bars: list = field(default_factory=list)  # (index, kind, start, size)
    rom: tuple[int, int] | None = None
    multifunction: bool = False
    boot_vga: bool | None = None
    sriov: dict | None = None
    physfn: str | None = None
    netdevs: list[str] = field(default_factory=list)
    dom: int = 0
    bus: int = 0
    devfn: int = 0

    def __post_init__(self) -> None:
        self.dom, self.bus, self.devfn = _parse(self.address)


class SysfsBuilder:
    """Builds a fake host root. ``nodes``/``cpus_per_node`` shape NUMA and /proc/cpuinfo; ``auto_groups`` gives
    every function without an explicit ``iommu_group`` one (ACS rules below); ``drivers`` pre-creates PCI driver
    directories (e.g. an empty ``vfio-pci``)."""

    def __init__(self, root: str | os.PathLike, *, nodes: int = 1, cpus_per_node: int = 8,
                 auto_groups: bool = False, drivers: tuple[str, ...] = ()) -> None:
        self.root = Path(root).absolute()
        self.sys, self.proc_dir, self.dev = (str(self.root / n) for n in ("sys", "proc", "dev"))
        self.nodes, self.cpus_per_node, self.auto_groups = nodes, cpus_per_node, auto_groups
        self.functions: dict[str, PciSpec] = {}
        self.groups: dict[int, list[str]] = {}  # after build: group -> members (PCI addresses, mdev UUIDs)
        self.mdevs: dict[str, dict] = {}
        self.usb: dict[str, str] = {}  # "usb1", "1-1.2", "1-1.2:1.0" -> directory
        self._iommu: dict | None = None
        self._root_buses: dict[tuple[int, int], str] = {}
        self._alloc32: dict[int, int] = {}
        self._alloc64 = 0x380000000000
        self._alloc_io: dict[int, int] = {}
        self._ifindex, self._blk_minor, self._devnum = 2, 0, {}
        self._modules: set[str] = set()
        self._proc_written = False
        self.blocks: dict[str, str] = {}  # block device name ("sda1", "dm-0") -> its directory
        self._sd = self._dm = self._ata = self._scsi_host = 0
        self._proc_mounts: list[tuple] = []  # from proc(mounts=...)
        self._mounts: list[tuple] = []  # from mount()
        self._mountinfo = False
        self._routes: list[tuple[str, int, int, int, int, int]] = []  # iface, dest, mask, gateway, flags, metric
        self._inet6: list[tuple[str, int, int, int, str]] = []  # address hex, prefix, scope, flags, iface
        for d in ("devices/system/node", "devices/virtual/net", "bus/pci/devices", "bus/pci/drivers",
                  "bus/pci/slots", "bus/usb/devices", "bus/usb/drivers", "kernel/iommu_groups", "class/iommu",
                  "class/net", "class/tty", "class/pci_bus", "class/block", "block", "dev/block", "dev/char",
                  "module", "firmware/acpi/tables"):
            os.makedirs(f"{self.sys}/{d}", exist_ok=True)
        for d in (self.proc_dir, self.dev + "/bus/usb"):
            os.makedirs(d, exist_ok=True)
        _attrs(self.sys + "/bus/pci", {"drivers_probe": "", "drivers_autoprobe": 1, "rescan": "",
                                       "resource_alignment": "", "uevent": ""})
        self._netdev(f"{self.sys}/devices/virtual/net", "lo", "00:00:00:00:00:00", "unknown", None, None, 772)
        for drv in drivers:
            self.driver(drv)

    # -- small helpers -------------------------------------------------------------------------------------
    def _cpus(self, node: int) -> tuple[str, str]:
        """(local_cpulist, local_cpus mask) for a NUMA node; -1 = every CPU."""
        total, per = self.nodes * self.cpus_per_node, self.cpus_per_node
        lo, hi = (0, total - 1) if node < 0 else (node * per, node * per + per - 1)
        mask = ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)
        words = [f"{(mask >> (32 * i)) & 0xFFFFFFFF:08x}" for i in reversed(range((total + 31) // 32))]
        return (f"{lo}-{hi}" if hi > lo else str(lo)), ",".join(words)

    def _alloc(self, dom: int, kind: str, size: int) -> int:
        """Assign a BAR address: I/O and 32-bit windows per domain, 64-bit prefetchable above 4 GiB."""
        if kind == "io":
            cur = self._alloc_io.get(dom, 0x2000)
            start = -(-cur // size) * size
            self._alloc_io[dom] = start + size
            return start
        if kind == "mem64pf":
            start = -(-self._alloc64 // size) * size
            self._alloc64 = start + size
            return start
        cur = self._alloc32.get(dom, 0x80000000)
        start = -(-cur // max(size, 0x1000)) * max(size, 0x1000)
        if start + size > 0xFC000000:
            raise ValueError(f"32-bit MMIO window of domain {dom:04x} exhausted; use smaller or 64-bit BARs")
        self._alloc32[dom] = start + size
        return start

    def driver(self, name: str, bus: str = "pci") -> str:
        """The driver directory /sys/bus/<bus>/drivers/<name> (created once)."""
        d = f"{self.sys}/bus/{bus}/drivers/{name}"
        if not os.path.isdir(d):
            os.makedirs(d)
            _attrs(d, {"bind": "", "unbind": "", "uevent": ""})
            if bus in ("pci", "usb") and name != "usb":  # dynamic IDs: all but the generic USB device driver
                _attrs(d, {"new_id": "", "remove_id": ""})
        return d

    def _bind(self, dev_dir: str, name: str, driver: str | None, bus: str = "pci") -> None:
        if os.path.islink(dev_dir + "/driver"):
            old = os.readlink(dev_dir + "/driver").rsplit("/", 1)[-1]
            os.unlink(dev_dir + "/driver")
            os.unlink(f"{self.sys}/bus/{bus}/drivers/{old}/{name}")
        if driver:
            drv = self.driver(driver, bus)
            _link(dev_dir + "/driver", drv)
            _link(f"{drv}/{name}", dev_dir)

    def _pci_uevent(self, f: PciSpec) -> None:
        sv, sd = f.subsystem
        mod = (f"pci:v{f.vendor:08X}d{f.device:08X}sv{sv:08X}sd{sd:08X}bc{f.class_code >> 16:02X}"
               f"sc{(f.class_code >> 8) & 0xFF:02X}i{f.class_code & 0xFF:02X}")
        drv = f"DRIVER={f.driver}\n" if f.driver else ""
        _put(f.path + "/uevent", f"{drv}PCI_CLASS={f.class_code:X}\nPCI_ID={f.vendor:04X}:{f.device:04X}\n"
                                 f"PCI_SUBSYS_ID={sv:04X}:{sd:04X}\nPCI_SLOT_NAME={f.address}\nMODALIAS={mod}\n")
        _put(f.path + "/modalias", mod + "\n")

    def _root_bus(self, dom: int, bus: int, under: str) -> str:
        d = f"{under}/pci{dom:04x}:{bus:02x}"
        if (dom, bus) not in self._root_buses:
            os.makedirs(d + "/power", exist_ok=True)
            _attrs(d, {"uevent": ""})
            self._root_buses[(dom, bus)] = d
        return d

    def fn(self, address: str) -> PciSpec:
        """The function at ``address`` (any accepted spelling: "19:00.0", "0000:19:00.0")."""
        try:
            return self.functions[_fmt(*_parse(address))]
        except (KeyError, ValueError):
            raise KeyError(f"no PCI function {address!r} in this tree; add it with pci()/bridge() first") from None

    # -- PCI -----------------------------------------------------------------------------------------------
    def pci(self, address: str, vendor: int, device: int, class_code: int, *, subsystem: tuple[int, int] | None = None,
            revision: int = 0, driver: str | None = None, driver_override: str | None = None,
            parent: str | None = None, iommu_group: int | None = None, numa_node: int = -1,
            boot_vga: bool | None = None, reset_methods: tuple[str, ...] = ("flr",),
            link: tuple | None = ("8.0 GT/s PCIe", 16), pcie_type: int | None = 0, bars=(), rom: int = 0,
            multifunction: bool = False, acs: bool = False, irq: int | None = None, header_type: int = 0,
            omit: tuple[str, ...] = (), acs_ctrl: int = 0x1D) -> str:
        """Add a PCI function; returns its directory. ``parent``: the upstream bridge (nested under it) or, for a
        VMD-style host endpoint, the endpoint (placed under ``<parent>/pci<domain>:<bus>/``). ``link``: (speed,
        width) or (speed, width, max_speed, max_width); None = conventional PCI (256-byte config, no link attrs).
        ``bars``: ("mem"|"mempf"|"mem64"|"mem64pf"|"io", size) in BAR order (64-bit ones take two slots; None
        skips a slot). ``omit``: attribute names not to write (a missing attribute). ``acs=True`` writes an ACS
        capability with control register ``acs_ctrl`` (default SV|RR|CR|UF; e.g. 0x11 = redirects off, as
        ``pci=disable_acs_redir=`` leaves a port)."""
        dom, bus, devfn = _parse(address)
        address = _fmt(dom, bus, devfn)
        if address in self.functions:
            raise ValueError(f"{address} already exists")
        if parent is None:
            base = self._root_bus(dom, bus, self.sys + "/devices")
        else:
            p = self.fn(parent)
            parent = p.address
            base = p.path if p.bridge else self._root_bus(dom, bus, p.path)
        d = f"{base}/{address}"
        os.makedirs(d + "/power")
        if link is not None and len(link) == 2:
            link = (*link, *link)
        f = PciSpec(address, vendor, device, class_code, subsystem or (vendor, device), revision, driver, parent, d,
                    numa_node, 16 + (devfn + bus) % 16 if irq is None else irq, link,
                    pcie_type if link else None, tuple(reset_methods), header_type, acs, iommu_group,
                    multifunction=multifunction, boot_vga=boot_vga, acs_ctrl=acs_ctrl)
        idx = 0
        for bar in bars:
            if bar is not None:
                kind, size = bar
                f.bars.append((idx, kind, self._alloc(dom, kind, size), size))
                idx += 1 if not _BAR_KINDS[kind][2] else 2
            else:
                idx += 1
        if rom:
            f.rom = (self._alloc(dom, "mem", rom), rom)
        self.functions[address] = f
        cpulist, cpumask = self._cpus(numa_node)
        a = {"vendor": f"0x{vendor:04x}", "device": f"0x{device:04x}", "subsystem_vendor": f"0x{f.subsystem[0]:04x}",
             "subsystem_device": f"0x{f.subsystem[1]:04x}", "class": f"0x{class_code:06x}",
             "revision": f"0x{revision:02x}", "irq": f.irq, "numa_node": numa_node, "local_cpulist": cpulist,
             "local_cpus": cpumask, "enable": int(driver is not None), "msi_bus": 1, "d3cold_allowed": 1,
             "power_state": "D0", "driver_override": driver_override or "(null)", "broken_parity_status": 0,
             "dma_mask_bits": 64 if driver else 32, "consistent_dma_mask_bits": 64 if driver else 32,
             "ari_enabled": 0, "remove": "", "rescan": "", "power/control": "on", "power/runtime_status": "active"}
        if reset_methods:
            a.update(reset_method=" ".join(reset_methods), reset="")
        if class_code >> 8 == 0x0300:
            a["boot_vga"] = int(bool(boot_vga))
        if link:
            a.update(current_link_speed=link[0], current_link_width=link[1], max_link_speed=link[2],
                     max_link_width=link[3])
        for name in omit:
            a.pop(name, None)
        _attrs(d, a)
        if "uevent" not in omit:
            self._pci_uevent(f)
        _link(d + "/subsystem", self.sys + "/bus/pci")
        _link(f"{self.sys}/bus/pci/devices/{address}", d)
        self._bind(d, address, driver)
        return d

    def bridge(self, address: str, *, parent: str | None = None, kind: str = "root_port", vendor: int = 0x8086,
               device: int = 0x2030, class_code: int = 0x060400, acs: bool | None = None,
               secondary: int | None = None, driver: str | None | bool = True,
               link: tuple | None = ("8.0 GT/s PCIe", 16), subsystem: tuple[int, int] = (0, 0), revision: int = 4,
               **kw) -> str:
        """A PCI bridge (type-1 header). ``kind``: root_port, upstream, downstream (PCIe switch ports, driver
        pcieport), pcie_to_pci or pci (no driver). ``acs=False`` (default for pcie_to_pci/pci) puts the bridge and
        everything behind it in one IOMMU group. ``secondary``: bus number when nothing sits behind the bridge;
        otherwise bus numbers come from its children at build()."""
        if kind not in _PORT_TYPES:
            raise ValueError(f"bridge kind {kind!r}: use one of {', '.join(_PORT_TYPES)}")
        pcie = _PORT_TYPES[kind]
        if driver is True:
            driver = "pcieport" if pcie in (4, 5, 6) else None
        d = self.pci(address, vendor, device, class_code, parent=parent, driver=driver or None, header_type=1,
                     link=link if pcie else None, pcie_type=pcie, subsystem=subsystem, revision=revision,
                     reset_methods=kw.pop("reset_methods", ()), **kw)
        f = self.fn(address)
        f.bridge, f.secondary = kind, secondary
        f.acs = acs if acs is not None else pcie in (4, 5, 6)
        return d

    def bind(self, address: str, driver: str | None) -> None:
        """Bind a function to ``driver`` (or unbind with None), like writing to bind/unbind."""
        f = self.fn(address)
        f.driver = driver
        self._bind(f.path, f.address, driver)
        self._pci_uevent(f)
        _attrs(f.path, {"enable": int(driver is not None)})

    def sriov(self, pf: str, totalvfs: int, numvfs: int, vf_device: int, *, offset: int = 0x80, stride: int = 1,
              vf_driver: str | None = None, vf_drivers: list | None = None, vf_bars=(("mem64pf", 0x4000),),
              vf_subsystem: tuple[int, int] | None = None, iommu_groups: list | None = None) -> list[str]:
        """Make ``pf`` an SR-IOV PF with ``numvfs`` VFs enabled; returns the VF directories (siblings of the PF).
        VF n is at routing ID PF + offset + n*stride. ``vf_drivers`` gives one driver (or None) per VF."""
        p = self.fn(pf)
        pf = p.address
        dom, bus, devfn = _parse(pf)
        iov, idx = [], 0
        for kind, size in vf_bars:
            iov.append((idx, kind, self._alloc(dom, kind, size * totalvfs), size))
            idx += 2 if _BAR_KINDS[kind][2] else 1
        p.sriov = dict(total=totalvfs, num=numvfs, offset=offset, stride=stride, vf_device=vf_device, bars=iov)
        _attrs(p.path, {"sriov_totalvfs": totalvfs, "sriov_numvfs": numvfs, "sriov_offset": offset,
                        "sriov_stride": stride, "sriov_vf_device": f"{vf_device:x}", "sriov_drivers_autoprobe": 1})
        out = []
        for n in range(numvfs):
            rid = (bus << 8 | devfn) + offset + n * stride
            addr = _fmt(dom, rid >> 8, rid & 0xFF)
            drv = vf_drivers[n] if vf_drivers is not None else vf_driver
            d = self.pci(addr, p.vendor, vf_device, p.class_code, subsystem=vf_subsystem or p.subsystem,
                         revision=p.revision, driver=drv, parent=p.parent, numa_node=p.numa_node, irq=0,
                         link=("Unknown", 0, p.link[2], p.link[3]) if p.link else None,
                         iommu_group=iommu_groups[n] if iommu_groups else None)
            vf = self.functions[addr]
            vf.physfn = pf
            vf.bars = [(idx, kind, start + n * size, size) for idx, kind, start, size in iov]
            _link(d + "/physfn", p.path)
            _link(f"{p.path}/virtfn{n}", d)
            out.append(d)
        return out

    def netdev(self, address: str, ifname: str, mac: str, *, operstate: str = "up", phys_port_name: str | None = "",
               phys_switch_id: str | None = None) -> str:
        """A network interface <function>/net/<ifname> (and /sys/class/net/<ifname>)."""
        f = self.fn(address)
        f.netdevs.append(ifname)
        os.makedirs(f.path + "/net", exist_ok=True)
        return self._netdev(f.path + "/net", ifname, mac, operstate, phys_port_name, phys_switch_id, 1, f.path)

    def _netdev(self, base, ifname, mac, operstate, port_name, switch_id, type_, device=None) -> str:
        d = f"{base}/{ifname}"
        os.makedirs(d + "/queues", exist_ok=True)
        idx = 1 if ifname == "lo" else self._ifindex
        self._ifindex += ifname != "lo"
        a = {"address": mac, "broadcast": "ff:ff:ff:ff:ff:ff" if type_ == 1 else mac, "operstate": operstate,
             "carrier": int(operstate == "up"), "ifindex": idx, "iflink": idx, "type": type_, "addr_len": 6,
             "mtu": 1500 if type_ == 1 else 65536, "flags": "0x1003" if operstate != "down" else "0x1002",
             "tx_queue_len": 1000, "dev_id": "0x0", "dev_port": 0, "uevent": f"INTERFACE={ifname}\nIFINDEX={idx}"}
        if port_name is not None:
            a["phys_port_name"] = port_name
        if switch_id is not None:
            a["phys_switch_id"] = switch_id
        _attrs(d, a)
        if device:
            _link(d + "/device", device)
        _link(d + "/subsystem", self.sys + "/class/net")
        _link(f"{self.sys}/class/net/{ifname}", d)
        return d

    def virtual_netdev(self, name: str, mac: str) -> str:
        """A software interface with no device behind it (/sys/devices/virtual/net/<name>): an Open vSwitch
        internal port, a dummy, a veth end."""
        return self._netdev(f"{self.sys}/devices/virtual/net", name, mac, "up", None, None, 1)

    def net_upper(self, kind: str, name: str, lowers: list[str] | tuple[str, ...], *,
                  mode: str = "active-backup") -> str:
        """A bond, bridge, team, Open vSwitch datapath ("openvswitch": ovs-system over its ports) or VLAN interface
        ``name`` over ``lowers`` under /sys/devices/virtual/net. All but VLANs are masters: each lower gets a
        ``master`` link; every kind gets the adjacency links the kernel makes (upper_<name> on each lower,
        lower_<lower> on the new interface). Bonds add bonding/ and each slave's bonding_slave/; bridges add
        bridge/, brif/<port> and each port's brport/ with its ``bridge`` link. It takes the first lower's MAC
        address. Returns the directory."""
        if kind not in ("bond", "bridge", "team", "openvswitch", "vlan") or (kind == "vlan" and len(lowers) != 1):
            raise ValueError("net_upper(): kind is bond, bridge, team, openvswitch, or vlan over exactly one lower")
        dirs = {low: os.path.realpath(f"{self.sys}/class/net/{low}") for low in lowers}
        macs = {low: Path(d, "address").read_text().strip() for low, d in dirs.items()}
        d = self._netdev(f"{self.sys}/devices/virtual/net", name, macs[lowers[0]], "up", None, None, 1)
        for low, ld in dirs.items():
            if kind != "vlan":
                _link(ld + "/master", d)
            _link(f"{ld}/upper_{name}", d)
            _link(f"{d}/lower_{low}", ld)
        if kind == "bond":
            os.makedirs(d + "/bonding")
            _attrs(d + "/bonding", {"mode": f"{mode} {_BOND_MODES[mode]}", "slaves": " ".join(lowers),
                                    "active_slave": lowers[0], "miimon": 100, "mii_status": "up"})
            for i, (low, ld) in enumerate(dirs.items()):
                os.makedirs(ld + "/bonding_slave")
                _attrs(ld + "/bonding_slave", {"state": "active" if i == 0 or mode != "active-backup" else "backup",
                                               "mii_status": "up", "link_failure_count": 0,
                                               "perm_hwaddr": macs[low], "queue_id": 0})
        elif kind == "bridge":
            os.makedirs(d + "/brif")
            os.makedirs(d + "/bridge")
            _attrs(d + "/bridge", {"bridge_id": "8000." + macs[lowers[0]].replace(":", ""), "stp_state": 0,
                                   "forward_delay": 1500, "hello_time": 200, "max_age": 2000, "ageing_time": 30000,
                                   "vlan_filtering": 0})
            for n, (low, ld) in enumerate(dirs.items(), 1):
                os.makedirs(ld + "/brport")
                _attrs(ld + "/brport", {"state": 3, "port_no": f"0x{n:x}", "path_cost": 100, "priority": 32})
                _link(ld + "/brport/bridge", d)
                _link(f"{d}/brif/{low}", ld + "/brport")
        return d

    def mdev_types(self, address: str, types: list[dict]) -> None:
        """mdev_supported_types/<id>/{name, description, available_instances, device_api, devices/} on a parent;
        each dict has id, name, description, available_instances and optionally device_api."""
        f = self.fn(address)
        for t in types:
            d = f"{f.path}/mdev_supported_types/{t['id']}"
            os.makedirs(d + "/devices")
            _attrs(d, {"name": t["name"], "description": t.get("description", ""), "create": "",
                       "available_instances": t.get("available_instances", 1),
                       "device_api": t.get("device_api", "vfio-pci")})
        os.makedirs(self.sys + "/class/mdev_bus", exist_ok=True)
        _link(f"{self.sys}/class/mdev_bus/{f.address}", f.path)

    def virtual_mdev_parent(self, name: str, types: list[dict], *, cls: str | None = None) -> str:
        """A non-PCI mdev parent such as the mtty sample driver's: /sys/devices/virtual/<cls>/<name> (class ``cls``,
        default ``name``) with mdev_supported_types as in :meth:`mdev_types` (``description`` only when given) and
        /sys/class/mdev_bus/<name>. :meth:`mdev` takes ``name`` as a parent afterwards."""
        cls = cls or name
        d = f"{self.sys}/devices/virtual/{cls}/{name}"
        os.makedirs(d + "/power", exist_ok=True)
        _attrs(d, {"uevent": ""})
        _link(d + "/subsystem", f"{self.sys}/class/{cls}")
        os.makedirs(f"{self.sys}/class/{cls}", exist_ok=True)
        _link(f"{self.sys}/class/{cls}/{name}", d)
        for t in types:
            td = f"{d}/mdev_supported_types/{t['id']}"
            os.makedirs(td + "/devices")
            _attrs(td, {"name": t["name"], "create": "", "available_instances": t.get("available_instances", 1),
                        "device_api": t.get("device_api", "vfio-pci"),
                        **({"description": t["description"]} if "description" in t else {})})
        os.makedirs(self.sys + "/class/mdev_bus", exist_ok=True)
        _link(f"{self.sys}/class/mdev_bus/{name}", d)
        if not hasattr(self, "_virtual_mdev_parents"):
            self._virtual_mdev_parents: dict[str, str] = {}
        self._virtual_mdev_parents[name] = d
        return d

    def mdev(self, parent: str, uuid: str, type_id: str, *, iommu_group: int | None = None,
             driver: str = "vfio_mdev") -> str:
        """A mediated device instance <parent>/<uuid>; it gets its own IOMMU group at build()."""
        virtual = getattr(self, "_virtual_mdev_parents", {}).get(parent)
        f = self.fn(parent) if virtual is None else None
        ppath, paddr = (f.path, f.address) if f is not None else (virtual, parent)
        d, tdir = f"{ppath}/{uuid}", f"{ppath}/mdev_supported_types/{type_id}"
        os.makedirs(d + "/power")
        _attrs(d, {"remove": "", "uevent": f"DRIVER={driver}\nMDEV_TYPE={type_id}"})
        _link(d + "/mdev_type", tdir)
        _link(d + "/subsystem", self.sys + "/bus/mdev")
        os.makedirs(self.sys + "/bus/mdev/devices", exist_ok=True)
        drv = self.driver(driver, "mdev")
        _link(d + "/driver", drv)
        _link(f"{drv}/{uuid}", d)
        _link(f"{self.sys}/bus/mdev/devices/{uuid}", d)
        _link(f"{tdir}/devices/{uuid}", d)
        avail = int(open(tdir + "/available_instances").read())
        _attrs(tdir, {"available_instances": max(avail - 1, 0)})
        self.mdevs[uuid] = dict(parent=paddr, type=type_id, path=d, iommu_group=iommu_group, driver=driver)
        return d

    def nvidia_vgpu(self, address: str, creatable: list[str], current: str = "0") -> None:
        """NVIDIA SR-IOV vGPU (no mdev): <VF>/nvidia/creatable_vgpu_types ("ID : NAME" lines), current_vgpu_type."""
        d = self.fn(address).path + "/nvidia"
        os.makedirs(d, exist_ok=True)
        _put(d + "/creatable_vgpu_types", "".join(line + "\n" for line in creatable))
        _attrs(d, {"current_vgpu_type": current})

    def mdevctl(self, parent: str, uuid: str, type_id: str, *, start: str = "auto", attrs: list | None = None) -> str:
        """An mdevctl definition, /etc/mdevctl.d/<parent>/<uuid> (no extension), as `mdevctl define` writes it."""
        d = self.root / "etc" / "mdevctl.d" / parent
        d.mkdir(parents=True, exist_ok=True)
        doc = {"mdev_type": type_id, "start": start, "attrs": attrs or []}
        _put(str(d / uuid), json.dumps(doc, indent=2) + "\n", 0o644)
        return str(d / uuid)

    def nvme(self, address: str, index: int = 0, *, model: str = "Samsung SSD 970 EVO Plus 1TB",
             serial: str = "S4EWNX0N000000", size_gib: int = 931, partitions: tuple[int, ...] = ()) -> str:
        """An NVMe controller nvme<index> with namespace n1 and partitions (sizes in MiB) under the function,
        plus /sys/block, /sys/class/{nvme,block}, /sys/dev and /dev entries. Returns the namespace directory."""
        ctrl = self._nvme_ctrl(address, index, model, serial, 4)
        disk = f"nvme{index}n1"
        ns = self._block(ctrl, disk, size_gib << 21, "disk", None)
        _attrs(ns, {"nsid": 1, "removable": 0, "range": 0, "ext_range": 256, "capability": 0,
                    "queue/logical_block_size": 512, "queue/rotational": 0})
        _link(ns + "/device", ctrl)
        _link(f"{self.sys}/block/{disk}", ns)
        self._partitions(ns, disk, partitions)
        return ns

    def _nvme_ctrl(self, address: str, index: int, model: str, serial: str, cntlid: int) -> str:
        f = self.fn(address)
        ctrl = f"{f.path}/nvme/nvme{index}"
        os.makedirs(ctrl + "/power")
        _attrs(ctrl, {"dev": f"240:{index}", "model": model, "serial": serial, "firmware_rev": "2B2QEXM7",
                      "address": f.address, "transport": "pcie", "state": "live", "cntlid": cntlid,
                      "numa_node": f.numa_node,
                      "uevent": f"MAJOR=240\nMINOR={index}\nDEVNAME=nvme{index}\nNVME_TRTYPE=pcie"})
        _link(ctrl + "/device", f.path)
        os.makedirs(self.sys + "/class/nvme", exist_ok=True)
        _link(ctrl + "/subsystem", self.sys + "/class/nvme")
        _link(f"{self.sys}/class/nvme/nvme{index}", ctrl)
        _link(f"{self.sys}/dev/char/240:{index}", ctrl)
        _put(f"{self.dev}/nvme{index}", "")
        return ctrl

    def nvme_multipath(self, controllers: list[tuple[str, int]], *, subsystem: int | None = None,
                       model: str = "SAMSUNG MZWLR3T8HBLS-00007", serial: str = "S6CRNE0R100001",
                       size_gib: int = 3576, partitions: tuple[int, ...] = ()) -> str:
        """One namespace reached through several NVMe controllers (a dual-port drive under native NVMe multipath):
        each (function address, controller index) gets nvme<i> under its function and the hidden path device
        nvme<k>c<i>n1; the subsystem /sys/devices/virtual/nvme-subsystem/nvme-subsys<k> links to every controller
        (nvme<i> -> the controller) and holds the head disk nvme<k>n1 that is mounted and stacked on. ``k`` is
        ``subsystem``, by default the first controller's index. Returns the head's directory."""
        k = controllers[0][1] if subsystem is None else subsystem
        sub = f"{self.sys}/devices/virtual/nvme-subsystem/nvme-subsys{k}"
        os.makedirs(sub + "/power")
        nqn = f"nqn.1994-11.com.samsung:nvme:PM1733:2.5-inch:{serial}"
        _attrs(sub, {"subsysnqn": nqn, "model": model, "serial": serial, "firmware_rev": "EPK9CB5Q",
                     "iopolicy": "numa", "subsystype": "nvm", "uevent": f"NVME_SUBSYS_NQN={nqn}"})
        os.makedirs(self.sys + "/class/nvme-subsystem", exist_ok=True)
        _link(sub + "/subsystem", self.sys + "/class/nvme-subsystem")
        _link(f"{self.sys}/class/nvme-subsystem/nvme-subsys{k}", sub)
        disk = f"nvme{k}n1"
        head = self._block(sub, disk, size_gib << 21, "disk", None, stack=True)
        _attrs(head, {"nsid": 1, "removable": 0, "range": 0, "ext_range": 256, "capability": 0x200,
                      "queue/logical_block_size": 512, "queue/rotational": 0})
        _link(head + "/device", sub)
        _link(f"{self.sys}/block/{disk}", head)
        for cntlid, (address, index) in enumerate(controllers, 1):
            ctrl = self._nvme_ctrl(address, index, model, serial, cntlid)
            _attrs(ctrl, {"subsysnqn": nqn})
            _link(f"{sub}/nvme{index}", ctrl)
            path = self._block(ctrl, f"nvme{k}c{index}n1", size_gib << 21, "disk", None, stack=True)
            _attrs(path, {"nsid": 1, "ana_state": "optimized", "queue/rotational": 0})
            _link(path + "/device", ctrl)
            _link(f"{self.sys}/block/nvme{k}c{index}n1", path)
        self._partitions(head, disk, partitions, stack=True)
        return head

    def sata(self, controller: str, *, model: str = "Samsung SSD 870 EVO 1TB", serial: str | None = None,
             size_gib: int = 931, partitions: tuple[int, ...] = (), rotational: bool = False) -> str:
        """A SATA disk on the next libata port of an AHCI function: <fn>/ata<N>/host<M>/target<M>:0:0/<M>:0:0:0/
        block/sd<x>, numbered as sd does (sda 8:0, sdb 8:16, ... sdq 65:0; partition n at disk minor + n), with
        partitions (sizes in MiB), holders/ and slaves/. Returns the disk directory."""
        f = self.fn(controller)
        idx, host = self._sd, self._scsi_host
        self._sd, self._scsi_host, self._ata = idx + 1, host + 1, self._ata + 1
        if idx >= 16 * len(_SD_MAJORS) or len(partitions) > 15:
            raise ValueError("sata(): at most 256 disks with 15 partitions each")
        major, minor, name = _SD_MAJORS[idx // 16], (idx % 16) * 16, "sd" + _sd_letters(idx)
        ata = f"{f.path}/ata{self._ata}"
        target = f"{ata}/host{host}/target{host}:0:0"
        sdev = f"{target}/{host}:0:0:0"
        for d, ue in ((ata, ""), (f"{ata}/host{host}", "DEVTYPE=scsi_host"), (target, "DEVTYPE=scsi_target")):
            os.makedirs(d + "/power")
            _attrs(d, {"uevent": ue})
        os.makedirs(sdev + "/power")
        serial = serial or f"S4X6NF0N{idx:06d}"
        _attrs(sdev, {"vendor": f"{'ATA':<8}", "model": f"{model[:16]:<16}", "rev": "2B6Q", "state": "running",
                      "wwid": f"t10.ATA     {model:<40}{serial:>20}",
                      "type": 0, "scsi_level": 6, "queue_depth": 32, "device_blocked": 0,
                      "uevent": "DEVTYPE=scsi_device\nDRIVER=sd\nMODALIAS=scsi:t-0x00"})
        os.makedirs(self.sys + "/bus/scsi/devices", exist_ok=True)
        _link(sdev + "/subsystem", self.sys + "/bus/scsi")
        _link(f"{self.sys}/bus/scsi/devices/{host}:0:0:0", sdev)
        self._bind(sdev, f"{host}:0:0:0", "sd", "scsi")
        disk = self._block(sdev + "/block", name, size_gib << 21, "disk", None, major=major, minor=minor, stack=True)
        _attrs(disk, {"removable": 0, "range": 16, "ext_range": 256, "capability": 0x50,
                      "queue/logical_block_size": 512, "queue/rotational": int(rotational)})
        _link(disk + "/device", sdev)
        _link(f"{self.sys}/block/{name}", disk)
        self._partitions(disk, name, partitions, major=major, first_minor=minor, stack=True)
        return disk

    def _stack(self, upper: str, name: str, lowers: list[str] | tuple[str, ...]) -> None:
        """bd_link_disk_holder(): <upper>/slaves/<lower> -> the lower device, <lower>/holders/<name> -> upper."""
        for low in lowers:
            if low not in self.blocks:
                raise KeyError(f"no block device {low!r}; make it with nvme()/sata()/dm()/md() first")
            os.makedirs(self.blocks[low] + "/holders", exist_ok=True)
            _link(f"{upper}/slaves/{low}", self.blocks[low])
            _link(f"{self.blocks[low]}/holders/{name}", upper)

    def _size(self, name: str) -> int:
        with open(self.blocks[name] + "/size") as fh:
            return int(fh.read())

    def dm(self, name: str, lowers: list[str] | tuple[str, ...], *, uuid: str | None = None,
           sectors: int | None = None) -> str:
        """A device-mapper device dm-<n> called ``name`` (an LVM volume "vg0-root", "luks-<uuid>", a multipath
        WWID) over the block devices ``lowers``: /sys/devices/virtual/block/dm-<n> (253:<n>) with
        dm/{name,uuid,suspended}, slaves/ and the lowers' holders/ links, /dev/dm-<n> and /dev/mapper/<name> ->
        ../dm-<n>. ``uuid`` defaults to an LVM one. Returns the directory."""
        n = self._dm
        self._dm += 1
        sectors = sum(self._size(low) for low in lowers) if sectors is None else sectors
        d = self._block(self.sys + "/devices/virtual/block", f"dm-{n}", sectors, "disk", None, major=253, minor=n,
                        stack=True)
        os.makedirs(d + "/dm")
        uuid = uuid or "LVM-" + hashlib.sha256(name.encode()).hexdigest()[:64]
        _attrs(d, {"dm/name": name, "dm/uuid": uuid, "dm/suspended": 0, "dm/use_blk_mq": 1,
                   "removable": 0, "range": 1, "ext_range": 1, "queue/rotational": 0})
        self._stack(d, f"dm-{n}", lowers)
        _link(f"{self.sys}/block/dm-{n}", d)
        os.makedirs(self.dev + "/mapper", exist_ok=True)
        _link(f"{self.dev}/mapper/{name}", f"{self.dev}/dm-{n}")
        return d

    def md(self, index: int, lowers: list[str] | tuple[str, ...], *, level: str = "raid1",
           partitions: tuple[int, ...] = ()) -> str:
        """An MD RAID array md<index> (9:<index>) over ``lowers``: /sys/devices/virtual/block/md<index> with
        md/{level,raid_disks,array_state,metadata_version}, md/dev-<lower>/ (each with its ``block`` link) and
        md/rd<slot> links, slaves/ and the lowers' holders/ links, and partitions md<index>p<n>. Returns it."""
        name = f"md{index}"
        sizes = [self._size(low) for low in lowers]
        data = sum(sizes) if level == "raid0" else min(sizes) * (len(sizes) - 1 if level in ("raid5", "raid6")
                                                                  and len(sizes) > 2 else 1)
        d = self._block(self.sys + "/devices/virtual/block", name, max(data - 262144, 0), "disk", None, major=9,
                        minor=index, stack=True)
        os.makedirs(d + "/md")
        _attrs(d, {"md/level": level, "md/raid_disks": len(lowers), "md/array_state": "clean",
                   "md/metadata_version": "1.2", "md/chunk_size": 0 if level == "raid1" else 524288,
                   "md/sync_action": "idle", "removable": 0, "range": 1, "ext_range": 256})
        for slot, low in enumerate(lowers):
            rd = f"{d}/md/dev-{low}"
            os.makedirs(rd)
            _attrs(rd, {"state": "in_sync", "slot": slot, "errors": 0, "offset": 262144})
            _link(rd + "/block", self.blocks[low])
            _link(f"{d}/md/rd{slot}", rd)
        self._stack(d, name, lowers)
        _link(f"{self.sys}/block/{name}", d)
        self._partitions(d, name, partitions, stack=True)
        return d

    def _block(self, under: str, name: str, sectors: int, devtype: str, partn: int | None, *, major: int = 259,
               minor: int | None = None, stack: bool = False) -> str:
        """A block device directory. Without ``minor`` it takes the next extended (259) minor. ``stack``: give it
        the ``holders/`` directory (and ``slaves/`` for a whole disk) that the kernel creates for every disk and
        partition; dm()/md() create them on demand on lower devices made without."""
        d = f"{under}/{name}"
        os.makedirs(d + ("/queue" if devtype == "disk" else "/power"))
        if minor is None:
            minor = self._blk_minor
            self._blk_minor += 1
        extra = f"\nPARTN={partn}" if partn else ""
        _attrs(d, {"dev": f"{major}:{minor}", "size": sectors, "ro": 0,
                   "uevent": f"MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE={devtype}{extra}"})
        _link(d + "/subsystem", self.sys + "/class/block")
        _link(f"{self.sys}/class/block/{name}", d)
        _link(f"{self.sys}/dev/block/{major}:{minor}", d)
        _put(f"{self.dev}/{name}", "")
        if stack:
            os.makedirs(d + "/holders", exist_ok=True)
            if devtype == "disk":
                os.makedirs(d + "/slaves", exist_ok=True)
        self.blocks[name] = d
        return d

    def _partitions(self, disk_dir: str, disk: str, sizes: tuple[int, ...], *, major: int = 259,
                    first_minor: int | None = None, stack: bool = False) -> list[str]:
        """Partitions (sizes in MiB) as subdirectories of the disk: sda1, nvme0n1p1, md0p1 (a "p" after a digit)."""
        sep = "p" if disk[-1].isdigit() else ""
        start, out = 2048, []
        for n, mib in enumerate(sizes, 1):
            p = self._block(disk_dir, f"{disk}{sep}{n}", mib << 11, "partition", n, major=major,
                            minor=None if first_minor is None else first_minor + n, stack=stack)
            _attrs(p, {"partition": n, "start": start})
            start += mib << 11
            out.append(p)
        return out

    def remove_pci(self, address: str) -> None:
        """Simulate a function vanishing (hot unplug, fell off the bus): its directory and everything below it
        (children of a bridge, VFs of a PF, netdevs, USB buses) go, and so do the links that pointed there."""
        f = self.fn(address)
        address = f.address
        gone = {a for a, g in self.functions.items() if g.path == f.path or g.path.startswith(f.path + "/")
                or g.physfn == address}
        for a in gone:
            shutil.rmtree(self.functions.pop(a).path, ignore_errors=True)
        for uuid in [u for u, m in self.mdevs.items() if m["parent"] in gone]:
            del self.mdevs[uuid]
        self.usb = {k: v for k, v in self.usb.items() if os.path.isdir(v)}
        # drop dangling links everywhere, and IOMMU groups left empty (the kernel frees them)
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                p = f"{dirpath}/{name}"
                if os.path.islink(p) and not os.path.exists(p):
                    os.unlink(p)
        groups = f"{self.sys}/kernel/iommu_groups"
        for g in os.listdir(groups):
            if not os.listdir(f"{groups}/{g}/devices"):
                shutil.rmtree(f"{groups}/{g}")
                if os.path.exists(f"{self.dev}/vfio/{g}"):
                    os.unlink(f"{self.dev}/vfio/{g}")
                self.groups.pop(int(g), None)
        for g, members in self.groups.items():
            members[:] = [m for m in members if m not in gone]

    # -- IOMMU ---------------------------------------------------------------------------------------------
    def iommu(self, vendor: str | None = "intel", *, units: int | None = None, group_type: str = "DMA",
              at: str | None = None) -> None:
        """IOMMU on: "intel" (dmarN units under devices/virtual/iommu, ACPI DMAR table) or "amd" (ivhdN under the
        IOMMU's own PCI function ``at`` if given, IVRS table). None: no IOMMU (groups and class/iommu stay empty).
        ``group_type``: the groups' ``type`` ("DMA", "DMA-FQ", "identity" with iommu=pt)."""
        if vendor is None:
            self._iommu = None
            return
        n = units or (self.nodes if vendor == "intel" else 1)
        self._iommu = dict(vendor=vendor, units=[("dmar" if vendor == "intel" else "ivhd") + str(i) for i in range(n)],
                           type=group_type, at=at)
        sig = b"DMAR" if vendor == "intel" else b"IVRS"
        body = b""
        for i in range(n):
            if vendor == "intel":  # DRHD: type 0, length 16, flags (INCLUDE_PCI_ALL on the last), segment, base
                body += struct.pack("<HHBBHQ", 0, 16, int(i == n - 1), 0, 0, 0xFBFFC000 - i * 0x10000000)
            else:  # IVHD type 0x11: device 00:00.2, capability offset 0x40, base address
                body += struct.pack("<BBHHHQHHI", 0x11, 0x30, 24, 0x0002, 0x40, 0xFD200000, 0, 0, 0) + bytes(16)
        head = struct.pack("<BB10s", 46, 1, bytes(10)) if vendor == "intel" else struct.pack("<I8s", 0x203043, bytes(8))
        length = 36 + len(head) + len(body)
        table = bytearray(sig + struct.pack("<IBB6s8sI4sI", length, 1, 0, b"INTEL " if vendor == "intel" else b"AMD   ",
                                            b"EDK2    ", 2, b"INTL", 0x20200925) + head + body)
        table[9] = (-sum(table)) & 0xFF
        _put(f"{self.sys}/firmware/acpi/tables/{sig.decode()}", bytes(table), 0o400)

    def _group_key(self, f: PciSpec) -> tuple:
        """Isolation unit of a function, the kernel's rule (drivers/iommu/iommu.c pci_device_group, no quirks): the
        topmost bridge above it that does not isolate (see _isolates) takes it into its group, else it stands
        alone; that function, when multifunction without working ACS, shares with its slot. Devices behind a
        VMD-style endpoint share its group."""
        chain, p = [], f.parent
        while p:
            chain.append(self.functions[p])
            p = chain[-1].parent
        base = f
        for a in reversed(chain):  # topmost first
            if not a.bridge:
                return self._group_key(a)
            if base is f and not _isolates(a):
                base = a
        if base.multifunction and not _isolates(base) and base.physfn is None:
            return ("slot", base.address[:-2])
        return ("fn", base.address)

    # -- USB -----------------------------------------------------------------------------------------------
    def usb_bus(self, busnum: int, controller: str, *, speed: str = "480", ports: int = 4) -> str:
        """A root hub usb<busnum> under a host controller function (speed "480": 1d6b:0002, "5000"/"10000":
        1d6b:0003 SuperSpeed)."""
        ss = float(speed) >= 5000
        name = f"usb{busnum}"
        self._devnum[busnum] = 1
        ctrl = self.fn(controller)
        return self._usb_node(ctrl.path, name, busnum, 1, "0", 0x1D6B, 3 if ss else 2,
                              int(KERNEL_RELEASE[0]) << 8 | int(KERNEL_RELEASE.split(".")[1]),
                              f"Linux {KERNEL_RELEASE} xhci-hcd", "xHCI Host Controller", ctrl.address, speed,
                              (9, 0, 3 if ss else 1), ports, "unknown", [(9, "hub")], "3.00" if ss else "2.00")

    def usb_device(self, port_path: str, vid: int, pid: int, *, manufacturer: str | None = None,
                   product: str | None = None, serial: str | None = None, speed: str = "12", device_class: int = 0,
                   interfaces=None, hub_ports: int = 0, bcd_device: int = 0x0100, removable: str = "removable",
                   version: str = "2.00") -> str:
        """A USB device at ``port_path`` ("1-1.2": bus 1, root port 1, hub port 2); its parent hub must exist.
        ``interfaces``: (class, driver) or (class, driver, subclass, protocol) per interface."""
        bus_s, _, ports = port_path.partition("-")
        busnum = int(bus_s)
        parent = f"usb{busnum}" if "." not in ports else f"{busnum}-{ports.rsplit('.', 1)[0]}"
        if hub_ports:
            device_class = 9
        if interfaces is None:
            interfaces = [(9, "hub")] if hub_ports else [(0xFF, None)]
        self._devnum[busnum] += 1
        return self._usb_node(self.usb[parent], port_path, busnum, self._devnum[busnum], ports, vid, pid, bcd_device,
                              manufacturer, product, serial, speed, (device_class, 0, 0), hub_ports, removable,
                              interfaces, version)

    def _usb_node(self, under, name, busnum, devnum, devpath, vid, pid, bcd, manufacturer, product, serial, speed,
                  cls, maxchild, removable, interfaces, version) -> str:
        d = f"{under}/{name}"
        os.makedirs(d + "/power")
        minor = (busnum - 1) * 128 + devnum - 1
        a = {"idVendor": f"{vid:04x}", "idProduct": f"{pid:04x}", "bcdDevice": f"{bcd:04x}", "busnum": busnum,
             "devnum": devnum, "devpath": devpath, "speed": speed, "bDeviceClass": f"{cls[0]:02x}",
             "bDeviceSubClass": f"{cls[1]:02x}", "bDeviceProtocol": f"{cls[2]:02x}",
             "bNumInterfaces": f"{len(interfaces):2d}", "bConfigurationValue": 1, "bNumConfigurations": 1,
             "bMaxPacketSize0": 9 if float(speed) >= 5000 else 64, "bmAttributes": "e0" if cls[0] == 9 else "80",
             "bMaxPower": "0mA" if devpath == "0" else "100mA", "maxchild": maxchild, "removable": removable,
             "authorized": 1, "version": f"{version:>5}", "quirks": "0x0", "ltm_capable": "no", "urbnum": 42,
             "rx_lanes": 1, "tx_lanes": 1, "dev": f"189:{minor}", "configuration": "",
             "uevent": f"MAJOR=189\nMINOR={minor}\nDEVNAME=bus/usb/{busnum:03d}/{devnum:03d}\nDEVTYPE=usb_device\n"
                       f"DRIVER=usb\nPRODUCT={vid:x}/{pid:x}/{bcd:x}\nTYPE={cls[0]}/{cls[1]}/{cls[2]}\n"
                       f"BUSNUM={busnum:03d}\nDEVNUM={devnum:03d}"}
        for k, v in (("manufacturer", manufacturer), ("product", product), ("serial", serial)):
            if v is not None:
                a[k] = v
        _attrs(d, a)
        self._usb_register(d, name, "usb")
        os.makedirs(f"{self.dev}/bus/usb/{busnum:03d}", exist_ok=True)
        _put(f"{self.dev}/bus/usb/{busnum:03d}/{devnum:03d}", "", 0o664)
        prefix = f"{busnum}-0" if devpath == "0" else name
        for i, spec in enumerate(interfaces):
            icls, drv, isub, iproto = (*spec, 0, 0)[:4]
            iname = f"{prefix}:1.{i}"
            idir = f"{d}/{iname}"
            os.makedirs(idir + "/power")
            mod = (f"usb:v{vid:04X}p{pid:04X}d{bcd:04X}dc{cls[0]:02X}dsc{cls[1]:02X}dp{cls[2]:02X}"
                   f"ic{icls:02X}isc{isub:02X}ip{iproto:02X}in{i:02X}")
            drvline = f"DRIVER={drv}\n" if drv else ""
            _attrs(idir, {"bInterfaceClass": f"{icls:02x}", "bInterfaceSubClass": f"{isub:02x}",
                          "bInterfaceProtocol": f"{iproto:02x}", "bInterfaceNumber": f"{i:02x}",
                          "bAlternateSetting": f"{0:2d}", "bNumEndpoints": "01", "authorized": 1,
                          "supports_autosuspend": 1, "modalias": mod,
                          "uevent": f"DEVTYPE=usb_interface\n{drvline}PRODUCT={vid:x}/{pid:x}/{bcd:x}\n"
                                    f"TYPE={cls[0]}/{cls[1]}/{cls[2]}\nINTERFACE={icls}/{isub}/{iproto}\n"
                                    f"MODALIAS={mod}"})
            self._usb_register(idir, iname, drv)
        return d

    def _usb_register(self, d: str, name: str, driver: str | None) -> None:
        self.usb[name] = d
        _link(d + "/subsystem", self.sys + "/bus/usb")
        _link(f"{self.sys}/bus/usb/devices/{name}", d)
        self._bind(d, name, driver, "usb")

    # -- serial ports and consoles --------------------------------------------------------------------------
    def serial(self, name: str, *, backing: str = "platform", address: str | None = None, ghost: bool = False,
               port: int | None = None, irq: int | None = None, uart_type: int = 4, pnp_id: str = "00:04",
               serial_base: bool = False) -> str:
        """A tty: ttyS<n> backed by the legacy "platform" serial8250 probe, a "pnp" device, a "pci" function
        (``address``), or ttyUSB<n> on USB device ``address`` ("1-1.3", interface 0). ``ghost``: a port the kernel
        registered without a UART (type 0 = PORT_UNKNOWN). ``serial_base``: the layout of kernels >= 6.5, with the
        serial-base controller and port devices between the hardware and the tty (<dev>/<dev>:0/<dev>:0.<k>/tty/).
        Returns the tty directory."""
        line = int(re.search(r"\d+$", name).group())
        legacy = [(0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3)]
        if port is None:
            port = legacy[line][0] if backing in ("platform", "pnp") and line < 4 else 0
        irq = irq if irq is not None else (legacy[line][1] if line < 4 else 0)
        if name.startswith(("ttyUSB", "ttyACM")):
            intf = self.usb[f"{address}:1.0"]
            dev = f"{intf}/{name}"
            os.makedirs(dev + "/power")
            drv_name = os.readlink(intf + "/driver").rsplit("/", 1)[-1]
            _attrs(dev, {"port_number": 0, "uevent": f"DRIVER={drv_name}"})
            os.makedirs(self.sys + "/bus/usb-serial/devices", exist_ok=True)
            _link(dev + "/subsystem", self.sys + "/bus/usb-serial")
            _link(f"{self.sys}/bus/usb-serial/devices/{name}", dev)
            self._bind(dev, name, drv_name, "usb-serial")
            tty = self._tty(dev, name, 188, line)
            by_id = f"{self.dev}/serial/by-id"
            os.makedirs(by_id, exist_ok=True)
            udev = self.usb[address]
            ident = "_".join(open(f"{udev}/{k}").read().strip().replace(" ", "_")
                             for k in ("manufacturer", "product", "serial") if os.path.exists(f"{udev}/{k}"))
            _link(f"{by_id}/usb-{ident}-if00-port0", f"{self.dev}/{name}")
            return tty
        if backing == "platform":
            dev = f"{self.sys}/devices/platform/serial8250"
            if not os.path.isdir(dev):
                os.makedirs(dev + "/power")
                _attrs(dev, {"driver_override": "(null)", "modalias": "platform:serial8250",
                             "uevent": "DRIVER=serial8250\nMODALIAS=platform:serial8250"})
                self._platform(dev, "serial8250", "platform", "serial8250")
        elif backing == "pnp":
            dev = f"{self.sys}/devices/pnp0/{pnp_id}"
            os.makedirs(dev + "/power")
            _attrs(dev, {"id": "PNP0501", "options": "", "uevent": "DRIVER=serial",
                         "resources": f"state = active\nio 0x{port:x}-0x{port + 7:x}\nirq {irq}"})
            self._platform(dev, pnp_id, "pnp", "serial")
        elif backing == "pci":
            dev = self.fn(address).path
        else:
            raise ValueError(f"serial backing {backing!r}: use platform, pnp, pci or usb")
        if serial_base:
            dev = self._serial_base(dev)
        tty = self._tty(dev, name, 4, 64 + line)
        mmio = backing == "pci" and self.fn(address).bars
        _attrs(tty, {"type": 0 if ghost else uart_type, "port": f"0x{port:X}", "irq": irq, "uartclk": 1843200,
                     "line": line, "io_type": 2 if mmio else 0, "flags": "0x10000040" if not ghost else "0x0",
                     "iomem_base": f"0x{mmio[0][2] + 0x1000 * line:X}" if mmio else "0x0", "iomem_reg_shift": 0,
                     "xmit_fifo_size": 1 if ghost else 16, "close_delay": 50, "closing_wait": 3000,
                     "custom_divisor": 0, "console": "N"})
        return tty

    def _serial_base(self, dev: str) -> str:
        """serial_base_device_init(): controller "<dev name>:0" and its next port "<dev name>:0.<k>" on the
        serial-base bus; returns the port directory."""
        base = os.path.basename(dev)
        ctrl = f"{dev}/{base}:0"
        k = sum(1 for e in os.listdir(ctrl) if e.startswith(f"{base}:0.")) if os.path.isdir(ctrl) else 0
        port = f"{ctrl}/{base}:0.{k}"
        os.makedirs(ctrl + "/power", exist_ok=True)
        os.makedirs(port + "/power")
        os.makedirs(self.sys + "/bus/serial-base/devices", exist_ok=True)
        for d, kind in ((ctrl, "ctrl"), (port, "port")):
            _attrs(d, {"uevent": f"DEVTYPE={kind}\nDRIVER={kind}"})
            _link(d + "/subsystem", self.sys + "/bus/serial-base")
            _link(f"{self.sys}/bus/serial-base/devices/{os.path.basename(d)}", d)
            if not os.path.islink(d + "/driver"):
                self._bind(d, os.path.basename(d), kind, "serial-base")
        return port

    def _platform(self, dev: str, name: str, bus: str, driver: str) -> None:
        os.makedirs(f"{self.sys}/bus/{bus}/devices", exist_ok=True)
        _link(dev + "/subsystem", f"{self.sys}/bus/{bus}")
        _link(f"{self.sys}/bus/{bus}/devices/{name}", dev)
        self._bind(dev, name, driver, bus)

    def _tty(self, dev: str, name: str, major: int, minor: int) -> str:
        tty = f"{dev}/tty/{name}"
        os.makedirs(tty + "/power")
        _attrs(tty, {"dev": f"{major}:{minor}", "uevent": f"MAJOR={major}\nMINOR={minor}\nDEVNAME={name}"})
        _link(tty + "/device", dev)
        _link(tty + "/subsystem", self.sys + "/class/tty")
        _link(f"{self.sys}/class/tty/{name}", tty)
        _put(f"{self.dev}/{name}", "", 0o660)
        return tty

    def console(self, active: str = "tty0") -> None:
        """/sys/class/tty/console/active ("tty0 ttyS0") and the virtual ttys; marks serial consoles."""
        virt = f"{self.sys}/devices/virtual/tty"
        for name, dev in (("tty", "5:0"), ("console", "5:1"), ("tty0", "4:0"), ("tty1", "4:1")):
            os.makedirs(f"{virt}/{name}/power", exist_ok=True)
            _attrs(f"{virt}/{name}", {"dev": dev, "uevent": f"MAJOR={dev[0]}\nMINOR={dev[2:]}\nDEVNAME={name}"})
            _link(f"{virt}/{name}/subsystem", self.sys + "/class/tty")
            _link(f"{self.sys}/class/tty/{name}", f"{virt}/{name}")
            _put(f"{self.dev}/{name}", "", 0o620)
        _attrs(f"{virt}/console", {"active": active})
        for name in active.split():
            if name.startswith("ttyS") and os.path.exists(f"{self.sys}/class/tty/{name}/console"):
                _attrs(f"{self.sys}/class/tty/{name}", {"console": "Y"})

    # -- proc, modules -------------------------------------------------------------------------------------
    def modules(self, *names: str) -> None:
        """Loaded modules beyond those implied by bound drivers (vfio, kvm...): /proc/modules and /sys/module."""
        self._modules.update(names)

    def proc(self, cmdline: str = f"BOOT_IMAGE=/boot/vmlinuz-{KERNEL_RELEASE} root=/dev/sda2 ro quiet", *,
             cpu_vendor: str = "GenuineIntel", model_name: str | None = None, mounts=(), swaps=(),
             kvm: bool = True, cpu_flags: str | None = None, mountinfo: bool = False) -> None:
        """/proc/{cmdline,cpuinfo,mounts,swaps,version}, NUMA nodes and CPUs; ``mounts``: (device, mountpoint,
        fstype[, options]) added to the usual pseudo filesystems (``mountinfo``: also in /proc/self/mountinfo);
        ``swaps``: (device, size KiB[, "partition" | "file"]) entries."""
        p, intel = self.proc_dir, cpu_vendor == "GenuineIntel"
        _put(p + "/cmdline", cmdline + "\n")
        model_name = model_name or ("Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz" if intel
                                    else "AMD Ryzen 5 PRO 4650G with Radeon Graphics")
        flags = cpu_flags or ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx "
                              "fxsr sse sse2 ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl cpuid pni "
                              "pclmulqdq " + ("vmx ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic popcnt aes xsave avx "
                                             "f16c rdrand tpr_shadow vnmi flexpriority ept vpid avx2 avx512f"
                                             if intel else "ssse3 fma cx16 sse4_1 sse4_2 popcnt aes xsave avx f16c "
                                             "rdrand svm extapic cr8_legacy abm sse4a npt lbrv nrip_save avic"))
        total, blocks = self.nodes * self.cpus_per_node, []
        for cpu in range(total):
            node, core = divmod(cpu, self.cpus_per_node)
            blocks.append(
                f"processor\t: {cpu}\nvendor_id\t: {cpu_vendor}\ncpu family\t: {6 if intel else 23}\n"
                f"model\t\t: {85 if intel else 96}\nmodel name\t: {model_name}\nstepping\t: 4\n"
                f"cpu MHz\t\t: 2100.000\ncache size\t: 22528 KB\nphysical id\t: {node}\nsiblings\t: "
                f"{self.cpus_per_node}\ncore id\t\t: {core}\ncpu cores\t: {self.cpus_per_node}\napicid\t\t: {cpu}\n"
                f"fpu\t\t: yes\nfpu_exception\t: yes\ncpuid level\t: 22\nwp\t\t: yes\nflags\t\t: {flags}\n"
                f"bogomips\t: 4200.00\nclflush size\t: 64\ncache_alignment\t: 64\n"
                f"address sizes\t: 46 bits physical, 48 bits virtual\npower management:\n\n")
        _put(p + "/cpuinfo", "".join(blocks))
        self._proc_mounts = list(mounts)
        self._mountinfo = self._mountinfo or mountinfo
        self._write_mounts()
        _put(p + "/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
             + "".join(f"{_mangle(s[0]):<40}{'file' + chr(9) if s[2:] == ('file',) else 'partition'}\t{s[1]}"
                       "\t\t0\t\t-2\n" for s in swaps))
        _put(p + "/version", f"Linux version {KERNEL_RELEASE} (buildd@lcy02-amd64-051) (gcc 13.2.0) "
                             "#45-Ubuntu SMP PREEMPT_DYNAMIC\n")
        os.makedirs(p + "/sys/kernel", exist_ok=True)
        _put(p + "/sys/kernel/osrelease", KERNEL_RELEASE + "\n")
        system = self.sys + "/devices/system"
        allcpus = f"0-{total - 1}" if total > 1 else "0"
        os.makedirs(system + "/cpu", exist_ok=True)
        _attrs(system + "/cpu", {"online": allcpus, "possible": allcpus, "present": allcpus})
        for node in range(self.nodes):
            os.makedirs(f"{system}/node/node{node}", exist_ok=True)
            _attrs(f"{system}/node/node{node}", {"cpulist": self._cpus(node)[0], "cpumap": self._cpus(node)[1]})
        nodes = f"0-{self.nodes - 1}" if self.nodes > 1 else "0"
        _attrs(system + "/node", {"online": nodes, "possible": nodes, "has_cpu": nodes})
        if kvm:
            self.modules("kvm_intel" if intel else "kvm_amd")
            _put(self.dev + "/kvm", "", 0o660)
        self._proc_written = True

    def mount(self, source: str, mountpoint: str, fstype: str = "ext4", options: str = "rw,relatime") -> None:
        """Mount ``source`` (/dev/nvme0n1p2, /dev/mapper/vg0-root, /dev/md0...) on ``mountpoint``: a line in
        /proc/mounts and in /proc/self/mountinfo, whose third field is the filesystem's device number - the block
        device's major:minor, or an anonymous 0:N for btrfs (as the kernel shows it; "subvol=" sets the root)."""
        self._mounts.append((source, mountpoint, fstype, options))
        self._mountinfo = True
        self._write_mounts()

    def _proc_self(self) -> str:
        """/proc/<PID> with the links of a host: /proc/self -> <PID>, /proc/net -> self/net."""
        d = f"{self.proc_dir}/{PID}"
        if not os.path.isdir(d):
            os.makedirs(d + "/net")
            os.symlink(str(PID), self.proc_dir + "/self")
            os.symlink("self/net", self.proc_dir + "/net")
        return d

    def _write_mounts(self) -> None:
        entries = [(m[0], m[1], m[2], m[3] if len(m) > 3 else "rw,relatime") for m in self._proc_mounts + self._mounts]
        lines = [f"{d} {m} {t} {o} 0 0\n" for d, m, t, o, _ in _PSEUDO]
        lines += [f"{src} {mp} {fs} {opts} 0 0\n" for src, mp, fs, opts in entries]
        _put(self.proc_dir + "/mounts", "".join(lines))
        if not self._mountinfo:
            return
        root = [e for e in entries if e[1] == "/"][:1]
        ordered = root + [e[:4] for e in _PSEUDO] + [e for e in entries if e not in root]
        dev_of = {e[1]: e[4] for e in _PSEUDO}
        ids: dict[str, int] = {}
        out = []
        for i, (src, mp, fs, opts) in enumerate(ordered):
            ids[mp] = mid = 22 + i
            parent = max((m for m in ids if m != mp and (m == "/" or mp.startswith(m + "/"))), key=len, default=None)
            pseudo = src in ("sysfs", "proc", "udev", "tmpfs", "cgroup2")
            devnum = (dev_of.get(mp) if pseudo else self._mount_devnum(src, fs)) or f"0:{40 + i}"
            words = opts.split(",")
            vfs = [w for w in words if w in _VFS_FLAGS]
            sb = [vfs[0] if vfs and vfs[0] in ("ro", "rw") else "rw"] + [w for w in words if w not in _VFS_FLAGS]
            subvol = next((w[7:] for w in words if w.startswith("subvol=")), "/")
            out.append(f"{mid} {1 if parent is None else ids[parent]} {devnum} {_mangle(subvol)} {_mangle(mp)} "
                       f"{','.join(vfs)} shared:{i + 1} - {fs} {_mangle(src)} {','.join(sb)}\n")
        _put(self._proc_self() + "/mountinfo", "".join(out))

    def _mount_devnum(self, source: str, fstype: str) -> str | None:
        """major:minor of the block device behind a mount source; None (anonymous) for btrfs and non-devices."""
        if fstype == "btrfs" or not source.startswith("/dev/"):
            return None
        link = f"{self.dev}/{source[5:]}"
        name = os.path.basename(os.readlink(link)) if os.path.islink(link) else source[5:]
        if name not in self.blocks:
            return None
        with open(self.blocks[name] + "/dev") as fh:
            return fh.read().strip()

    def ip(self, ifname: str, cidr: str, *, gateway: str | None = None, metric: int = 0,
           flags: int | None = None) -> None:
        """An address on ``ifname`` as procfs shows it. IPv4 "192.0.2.10/24": its prefix route 192.0.2.0/24 in
        /proc/net/route (the main table; none for a /32), plus the default route when ``gateway`` is given. IPv6
        "2001:db8::10/64": a line of /proc/net/if_inet6 with the scope of the address (00 global, 20 link-local,
        10 host, 40 site-local) and ``flags`` (default 0x80, IFA_F_PERMANENT)."""
        iface = ipaddress.ip_interface(cidr)
        if iface.version == 4:
            if iface.network.prefixlen < 32:
                self.route(ifname, str(iface.network), metric=metric)
            if gateway:
                self.route(ifname, "0.0.0.0/0", gateway=gateway, metric=metric)
            return
        if gateway:
            raise ValueError("IPv6 routes are in /proc/net/ipv6_route, which the builder does not write")
        a = iface.ip
        scope = 0x20 if a.is_link_local else 0x10 if a.is_loopback else 0x40 if a.is_site_local else 0x00
        self._inet6.append((a.packed.hex(), iface.network.prefixlen, scope, 0x80 if flags is None else flags, ifname))
        self._write_net()

    def route(self, ifname: str, dest: str, *, gateway: str | None = None, metric: int = 0) -> None:
        """An IPv4 route of the main table in /proc/net/route (RTF_UP, RTF_GATEWAY with ``gateway``, RTF_HOST for
        a /32)."""
        net = ipaddress.IPv4Network(dest)
        flags = 0x1 | (0x2 if gateway else 0) | (0x4 if net.prefixlen == 32 else 0)
        self._routes.append((ifname, int(net.network_address), int(net.netmask),
                             int(ipaddress.IPv4Address(gateway)) if gateway else 0, flags, metric))
        self._write_net()

    def _write_net(self) -> None:
        d = self._proc_self() + "/net"
        lines = [f"{_ROUTE_HEADER:<127}\n"]
        for ifc, dest, mask, gw, flags, metric in sorted(self._routes, key=lambda r: (r[1], -r[2])):
            row = (f"{ifc}\t{_be32_hex(dest)}\t{_be32_hex(gw)}\t{flags:04X}\t0\t0\t{metric}\t{_be32_hex(mask)}"
                   "\t0\t0\t0")
            lines.append(f"{row:<127}\n")
        _put(d + "/route", "".join(lines))
        rows = [("0" * 31 + "1", 1, 128, 0x10, 0x80, "lo")]
        for addr, plen, scope, flags, ifc in self._inet6:
            with open(f"{self.sys}/class/net/{ifc}/ifindex") as fh:
                rows.append((addr, int(fh.read()), plen, scope, flags, ifc))
        _put(d + "/if_inet6", "".join(f"{a} {i:02x} {p:02x} {s:02x} {f:02x} {n:>8}\n" for a, i, p, s, f, n in rows))

    def _write_modules(self) -> None:
        wanted = set(self._modules)
        pci_drivers = {f.driver for f in self.functions.values() if f.driver}
        other = {m["driver"] for m in self.mdevs.values()}
        usb = set(os.listdir(self.sys + "/bus/usb/drivers"))
        for drv in pci_drivers | other | usb:
            if drv not in _BUILTIN:
                wanted.add(_DRIVER_MODULE.get(drv, drv.replace("-", "_")))
        if "vfio_pci" in wanted:
            wanted.add("vfio_iommu_type1")
        todo = list(wanted)
        while todo:
            for dep in _MODULE_DEPS.get(todo.pop(), ()):
                if dep not in wanted:
                    wanted.add(dep)
                    todo.append(dep)
        holders = {m: sorted(h for h in wanted if m in _MODULE_DEPS.get(h, ())) for m in wanted}
        lines = []
        for m in sorted(wanted):
            d = f"{self.sys}/module/{m}"
            os.makedirs(d + "/holders", exist_ok=True)
            os.makedirs(d + "/drivers", exist_ok=True)
            _attrs(d, {"initstate": "live", "refcnt": len(holders[m]), "coresize": 16384})
            for h in holders[m]:
                _link(f"{d}/holders/{h}", f"{self.sys}/module/{h}")
            used = "".join(h + "," for h in holders[m]) or "-"
            lines.append(f"{m} 16384 {len(holders[m])} {used} Live 0x0000000000000000\n")
        _put(self.proc_dir + "/modules", "".join(lines))
        for bus in ("pci", "usb", "mdev"):
            base = f"{self.sys}/bus/{bus}/drivers"
            for drv in os.listdir(base) if os.path.isdir(base) else ():
                mod = _DRIVER_MODULE.get(drv, drv.replace("-", "_"))
                if mod in wanted:
                    _link(f"{base}/{drv}/module", f"{self.sys}/module/{mod}")
                    _link(f"{self.sys}/module/{mod}/drivers/{bus}:{drv}", f"{base}/{drv}")
        if "vfio" in wanted:
            os.makedirs(self.dev + "/vfio", exist_ok=True)
            _put(self.dev + "/vfio/vfio", "", 0o666)

    # -- finalize ------------------------------------------------------------------------------------------
    def build(self) -> Path:
        """Write what needs the whole tree: bus numbers, bridge windows, multifunction bits, config and resource,
        pci_bus entries, IOMMU groups and units, modules, /dev/vfio. Returns the root."""
        fns = sorted(self.functions.values(), key=lambda f: (f.dom, f.bus, f.devfn))
        kids: dict[str, list[PciSpec]] = {}
        for f in fns:
            kids.setdefault(f.parent, []).append(f)
        used: dict[int, set[int]] = {}
        for f in fns:
            used.setdefault(f.dom, set()).add(f.bus)
            if f.secondary is not None:
                used[f.dom].add(f.secondary)
        spans: dict[str, tuple[int, int, list]] = {}

        def walk(b: PciSpec) -> tuple[int, int, list]:
            """(secondary, subordinate, BAR ranges below) of bridge b."""
            below = kids.get(b.address, [])
            ranges: list[tuple[str, int, int]] = []
            if below:
                sec = min(c.bus for c in below)
                sub = max(c.bus for c in below)
            else:
                sec = b.secondary if b.secondary is not None else max(used[b.dom]) + 1
                used[b.dom].add(sec)
                sub = sec
            for c in below:
                bars = [(k, s, z) for _, k, s, z in c.bars] + ([("mem", *c.rom)] if c.rom else [])
                bars += [(k, s, z * c.sriov["total"]) for _, k, s, z in c.sriov["bars"]] if c.sriov else []
                ranges += [("io" if k == "io" else "pf" if k == "mem64pf" else "mem", s, s + z - 1) for k, s, z in bars]
                if c.bridge:
                    csec, csub, cr = spans[c.address] if c.address in spans else walk(c)
                    sub = max(sub, csub)
                    ranges += cr
            spans[b.address] = (sec, sub, ranges)
            return spans[b.address]

        for f in fns:
            if f.bridge and f.address not in spans:
                walk(f)
        slots: dict[str, int] = {}
        for f in fns:
            if f.physfn is None:
                slots[f.address[:-2]] = slots.get(f.address[:-2], 0) + 1
        vga_bridges = set()  # bridges with the boot VGA below them forward VGA cycles (BridgeCtl VGA+)
        for f in fns:
            p = f.parent if f.boot_vga else None
            while p:
                vga_bridges.add(p)
                p = self.functions[p].parent
        for f in fns:
            mf = f.multifunction or slots.get(f.address[:-2], 0) > 1
            f.multifunction = mf and f.physfn is None
            windows = sec = sub = vga = None
            if f.bridge:
                sec, sub, ranges = spans[f.address]
                windows = {}
                for kind, align in (("io", 0x1000), ("mem", 0x100000), ("pf", 0x100000)):
                    rs = [(s, e) for k, s, e in ranges if k == kind]
                    if rs:
                        windows[kind] = (min(s for s, _ in rs) // align * align,
                                         -(-(max(e for _, e in rs) + 1) // align) * align - 1)
                vga = f.address in vga_bridges
                _attrs(f.path, {"secondary_bus_number": sec, "subordinate_bus_number": sub})
                self._pci_bus(f.path, f.dom, sec, f.numa_node)
            _put(f.path + "/config", _config(f, sec or 0, sub or 0, windows or {}, bool(vga)))
            _put(f.path + "/resource", _resource(f, windows))
        node = {(f.dom, f.bus): f.numa_node for f in reversed(fns)}
        for (dom, bus), d in self._root_buses.items():
            self._pci_bus(d, dom, bus, node.get((dom, bus), -1))
        self._write_groups(fns)
        self._write_modules()
        if not self._proc_written:
            self.proc()
            self._write_modules()
        if self._mountinfo:
            self._write_mounts()  # device numbers of devices made after mount()/proc()
        return self.root

    def _pci_bus(self, under: str, dom: int, bus: int, node: int) -> None:
        d = f"{under}/pci_bus/{dom:04x}:{bus:02x}"
        os.makedirs(d + "/power", exist_ok=True)
        cpulist, mask = self._cpus(node)
        _attrs(d, {"cpulistaffinity": cpulist, "cpuaffinity": mask, "rescan": "", "uevent": ""})
        _link(d + "/device", under)
        _link(d + "/subsystem", self.sys + "/class/pci_bus")
        _link(f"{self.sys}/class/pci_bus/{dom:04x}:{bus:02x}", d)

    def _write_groups(self, fns: list[PciSpec]) -> None:
        groups: dict[int, list[tuple[str, str]]] = {}
        taken = {f.iommu_group for f in fns if f.iommu_group is not None}
        taken |= {m["iommu_group"] for m in self.mdevs.values() if m["iommu_group"] is not None}
        nxt = iter(n for n in range(1 << 20) if n not in taken)
        keys: dict[tuple, int] = {}
        for f in fns:
            f.group = f.iommu_group
            if f.group is None and self._iommu and self.auto_groups:
                key = self._group_key(f)
                if key not in keys:
                    keys[key] = next(nxt)
                f.group = keys[key]
            if f.group is not None:
                if not self._iommu:
                    raise ValueError(f"{f.address}: iommu_group given but the host has no IOMMU (call iommu())")
                groups.setdefault(f.group, []).append((f.address, f.path))
        for uuid, m in self.mdevs.items():  # mdevs always get their own group, IOMMU or not
            m["group"] = m["iommu_group"] if m["iommu_group"] is not None else next(nxt)
            groups.setdefault(m["group"], []).append((uuid, m["path"]))
        base = self.sys + "/kernel/iommu_groups"
        io = self._iommu or {}
        units = {}
        for i, unit in enumerate(io.get("units", ())):
            at = self.functions.get(io["at"]) if io.get("at") else None
            u = f"{at.path}/iommu/{unit}" if at else f"{self.sys}/devices/virtual/iommu/{unit}"
            os.makedirs(u + "/devices", exist_ok=True)
            os.makedirs(u + "/power", exist_ok=True)
            sub = "intel-iommu" if io["vendor"] == "intel" else "amd-iommu"
            os.makedirs(f"{u}/{sub}", exist_ok=True)
            _attrs(f"{u}/{sub}", {"cap": "d2008c40660462", "ecap": "f050da", "version": "1:0",
                                  "address": f"{0xFBFFC000 - i * 0x10000000:x}"} if sub == "intel-iommu"
                   else {"cap": "0x00190040", "features": "25bf732fa2295afe:53d"})
            _attrs(u, {"uevent": ""})
            _link(f"{self.sys}/class/iommu/{unit}", u)
            units[i] = u
        vfio_groups = set()
        for g, members in sorted(groups.items()):
            d = f"{base}/{g}"
            os.makedirs(d + "/devices", exist_ok=True)
            regions = "0x00000000fee00000 0x00000000feefffff msi\n"
            if io.get("vendor") == "amd":
                regions += "0x000000fd00000000 0x000000ffffffffff reserved\n"
            _put(d + "/type", (io.get("type", "DMA") if g not in {m["group"] for m in self.mdevs.values()}
                               else "blocked") + "\n")
            _put(d + "/reserved_regions", regions if io else "")
            for name, path in members:
                _link(f"{d}/devices/{name}", path)
                _link(path + "/iommu_group", d)
                f = self.functions.get(name)
                if f is not None and units and not os.path.isdir(path + "/iommu"):  # AMD's own IOMMU function
                    u = units[min(max(f.numa_node, 0), len(units) - 1)]
                    _link(path + "/iommu", u)
                    _link(f"{u}/devices/{name}", path)
                drv = f.driver if f is not None else self.mdevs[name]["driver"]
                if drv in ("vfio-pci", "vfio_mdev", "nvidia_vgpu_vfio"):
                    vfio_groups.add(g)
        self.groups = {g: [n for n, _ in ms] for g, ms in groups.items()}
        for g in vfio_groups:
            os.makedirs(self.dev + "/vfio", exist_ok=True)
            _put(f"{self.dev}/vfio/{g}", "", 0o600)


def _acs_cap(f: PciSpec) -> int:
    """ACS capability register: ports offer SV TB RR CR UF, endpoints also DT (0x40)."""
    return 0x1F if f.bridge else 0x5F


def _isolates(f: PciSpec) -> bool:
    """The kernel's pci_acs_enabled(f, SV|RR|CR|UF) without quirks: conventional PCI and PCIe-to-PCI bridges never;
    root and downstream ports only with the controls on; upstream ports and endpoints need ACS only when
    multifunction."""
    if not f.link or f.pcie_type in (7, 8, 10):
        return False
    if not (f.pcie_type in (4, 6) or f.multifunction and f.pcie_type in (0, 1, 5, 9)):
        return True
    req = 0x1D & _acs_cap(f)
    return f.acs and f.acs_ctrl & req == req


def _config(f: PciSpec, sec: int, sub: int, windows: dict, vga: bool) -> bytes:
    """The function's config space as the kernel serves it: 4096 bytes for PCIe, 256 for conventional PCI."""
    c = bytearray(4096 if f.link else 256)
    pk = struct.pack_into
    kinds = {k for _, k, _, _ in f.bars}
    cmd = int("io" in kinds) | (2 if kinds - {"io"} else 0) | (4 if f.driver else 0)
    cmd |= 0x400 if f.driver and f.link else 0  # bound PCIe functions use MSI: INTx disabled
    if f.bridge:
        cmd |= 0x7
    pk("<HHHHB", c, 0, f.vendor, f.device, cmd, 0x0010, f.revision)
    c[9:12] = f.class_code.to_bytes(3, "little")
    c[0x0C], c[0x0E] = 0x10, f.header_type | (0x80 if f.multifunction else 0)
    if f.header_type == 0:
        for idx, kind, start, _ in f.bars:
            pk("<I", c, 0x10 + 4 * idx, (start & 0xFFFFFFFF) | _BAR_KINDS[kind][0])
            if _BAR_KINDS[kind][2]:
                pk("<I", c, 0x14 + 4 * idx, start >> 32)
        pk("<HH", c, 0x2C, *f.subsystem)
        if f.rom:
            pk("<I", c, 0x30, f.rom[0])
    else:
        c[0x18:0x1B] = bytes((f.bus, sec, sub))
        io, mem, pf = windows.get("io"), windows.get("mem"), windows.get("pf")
        c[0x1C:0x1E] = bytes(((io[0] >> 8) & 0xF0 | 1, (io[1] >> 8) & 0xF0 | 1)) if io else b"\xf1\x01"
        if io:
            pk("<HH", c, 0x30, io[0] >> 16, io[1] >> 16)
        pk("<HH", c, 0x20, *(((mem[0] >> 16) & 0xFFF0, (mem[1] >> 16) & 0xFFF0) if mem else (0xFFF0, 0)))
        if pf:
            pk("<HHII", c, 0x24, (pf[0] >> 16) & 0xFFF0 | 1, (pf[1] >> 16) & 0xFFF0 | 1, pf[0] >> 32, pf[1] >> 32)
        else:
            pk("<HH", c, 0x24, 0xFFF1, 0x0001)
        pk("<H", c, 0x3E, 0x0002 | (0x0008 if vga else 0))
    c[0x34], c[0x3C], c[0x3D] = 0x40, min(f.irq, 0xFF), 0 if f.physfn else 1
    pk("<BBHH", c, 0x40, 0x01, 0x60 if f.link else 0, 0x0003, 0x0008)  # power management
    if not f.link:
        return bytes(c)
    cur, width, mx, mwidth = f.link
    ptype = f.pcie_type or 0
    slot = ptype in (4, 6)
    devcap = 0x1 | 0x8000 | (0x10000000 if "flr" in f.reset_methods else 0)
    pk("<BBHIHH", c, 0x60, 0x10, 0, 0x2 | ptype << 4 | (0x100 if slot else 0), devcap, 0x2810, 0)
    if ptype != 9:  # RC integrated endpoints have no link
        ms = _SPEEDS.get(mx, 0)
        lnkcap = ms | mwidth << 4 | 0xC00 | (0x100000 if slot else 0) | ((f.devfn >> 3) << 24 if slot else 0)
        lnksta = _SPEEDS.get(cur, 0) | width << 4 | 0x1000 | (0x2000 if slot else 0)
        pk("<IHH", c, 0x6C, lnkcap, 0x0040, lnksta)
        pk("<IHH", c, 0x8C, ((1 << ms) - 1) << 1 if ms else 0, ms, 0)
        if slot:
            pk("<IHH", c, 0x74, ((f.devfn >> 3) + 1) << 19, 0, 0x0040)
    ext = []
    if f.acs:
        ext.append((0x000D, struct.pack("<HH", _acs_cap(f), f.acs_ctrl)))
    if f.sriov:
        s = f.sriov
        vfbars = [0] * 6
        for idx, kind, start, _ in s["bars"]:
            vfbars[idx] = (start & 0xFFFFFFFF) | _BAR_KINDS[kind][0]
            if _BAR_KINDS[kind][2]:
                vfbars[idx + 1] = start >> 32
        ext.append((0x0010, struct.pack("<IHHHHHBBHHHHII6II", 0, 0x9 if s["num"] else 0, 0, s["total"], s["total"],
                                        s["num"], f.devfn & 7, 0, s["offset"], s["stride"], 0, s["vf_device"],
                                        0x553, 1, *vfbars, 0)))
    off = 0x100
    for i, (cid, body) in enumerate(ext):
        nxt = 0 if i == len(ext) - 1 else off + (4 + len(body) + 15) // 16 * 16
        pk("<I", c, off, cid | 1 << 16 | nxt << 20)
        c[off + 4:off + 4 + len(body)] = body
        off = nxt
    return bytes(c)


def _resource(f: PciSpec, windows: dict | None) -> str:
    """sysfs `resource`: 6 BARs, ROM, 6 SR-IOV BARs (13 lines); bridges add 4 windows (17 lines)."""
    lines = [_ZERO] * (17 if f.bridge else 13)
    for idx, kind, start, size in f.bars:
        lines[idx] = _res(start, size, _BAR_KINDS[kind][1])
    if f.rom:
        lines[6] = _res(*f.rom, _ROM_FLAGS)
    if f.sriov:
        for idx, kind, start, size in f.sriov["bars"]:
            lines[7 + idx] = _res(start, size * f.sriov["total"], _BAR_KINDS[kind][1])
    for i, kind in enumerate(("io", "mem", "pf")):
        if windows and kind in windows:
            s, e = windows[kind]
            lines[13 + i] = _res(s, e - s + 1, _WIN_FLAGS[kind])
    return "".join(lines)
