"""PCI functions, read straight from sysfs (no lspci).

One :class:`PciFunction` per entry of ``/sys/bus/pci/devices``. Reading is done once per function and cheaply:
one ``scandir`` of the function's directory tells which optional attributes exist (so absent ones cost no failed
``open``), ``uevent`` gives the driver and IDs in one read, and the first 64 bytes of ``config`` give the revision
and header type. Per-attribute files are the fallback when ``uevent``/``config`` are missing (old captures).

A function that vanishes mid-scan (hot unplug, a GPU falling off the bus) is skipped, never a crash.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .root import DirReader, HostRoot, parse_int

__all__ = [
    "PciAddress", "PciFunction", "MdevType", "MdevInstance", "parse_address", "normalize_address",
    "read_function", "scan_pci",
]

# domain can be 4 hex digits or more (VMD / Hyper-V give 32-bit domains like 10000:00:00.0)
_BDF_RE = re.compile(r"^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")
_FULL_BDF_RE = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass(frozen=True, slots=True, order=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @property
    def slot_name(self) -> str:
        """The address without the function ("0000:42:00"): functions of one card share it."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}"


def parse_address(text: str) -> PciAddress:
    """Parse "0000:42:00.1", "42:00.1" (domain 0) or a 32-bit domain "10000:00:00.0".

    Raises ValueError naming the expected form.
    """
    m = _BDF_RE.match(text.strip())
    if not m or int(m.group(3), 16) > 0x1F:
        raise ValueError(
            f"{text!r} is not a PCI address; use DOMAIN:BUS:SLOT.FUNCTION such as 0000:42:00.0 (or 42:00.0)"
        )
    dom, bus, slot, fn = m.groups()
    return PciAddress(int(dom or "0", 16), int(bus, 16), int(slot, 16), int(fn))


def normalize_address(text: str) -> str:
    return str(parse_address(text))


@dataclass(frozen=True, slots=True)
class MdevType:
    """One entry of ``mdev_supported_types``: a vGPU (or other mediated device) profile."""

    id: str
    name: str | None
    description: str | None
    available_instances: int | None
    device_api: str | None


@dataclass(frozen=True, slots=True)
class MdevInstance:
    uuid: str
    type_id: str | None
    parent: str


@dataclass(frozen=True, slots=True)
class PciFunction:
    address: str
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int | None
    subsystem_device_id: int | None
    class_code: int
    revision: int | None
    driver: str | None
    driver_override: str | None
    iommu_group: int | None
    numa_node: int  # -1 = unknown / single node, as the kernel reports it
    boot_vga: bool | None  # None: attribute absent (not a VGA device)
    reset_methods: tuple[str, ...]
    current_link_speed: str | None
    current_link_width: int | None
    max_link_speed: str | None
    max_link_width: int | None
    parent: str | None  # upstream bridge address, None for devices on a root bus
    header_type: int | None  # 0 endpoint, 1 PCI bridge, 2 CardBus (multifunction bit stripped)
    sriov_totalvfs: int | None
    sriov_numvfs: int | None
    physfn: str | None  # set for a VF: its PF's address
    vf_index: int | None  # set for a VF: N of the PF's virtfnN link
    vfs: tuple[str, ...]  # set for a PF: addresses of its VFs in virtfn order
    netdevs: tuple[str, ...]
    mdev_types: tuple[MdevType, ...]
    mdevs: tuple[MdevInstance, ...]
    nvidia_creatable_vgpu_types: tuple[str, ...] | None
    nvidia_current_vgpu_type: str | None
    accessible: bool = True  # False when config space reads all ones (device fell off the bus / powered off)

    @property
    def pci_address(self) -> PciAddress:
        return parse_address(self.address)

    @property
    def ids(self) -> str:
        return f"{self.vendor_id:04x}:{self.device_id:04x}"

    @property
    def base_class(self) -> int:
        return self.class_code >> 16

    @property
    def subclass(self) -> int:
        return (self.class_code >> 8) & 0xFF

    @property
    def class_prefix(self) -> int:
        """Base class and subclass as one 16-bit number: 0x0300 VGA, 0x0403 HD audio, 0x0604 PCI bridge."""
        return self.class_code >> 8

    @property
    def is_bridge(self) -> bool:
        return self.header_type in (1, 2) or self.base_class == 0x06 and self.subclass in (0x04, 0x09)

    @property
    def is_vf(self) -> bool:
        return self.physfn is not None

    @property
    def is_pf(self) -> bool:
        return bool(self.sriov_totalvfs)


def _parse_uevent(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


def _hex_pair(value: str | None) -> tuple[int | None, int | None]:
    """"10DE:1B06" -> (0x10de, 0x1b06)."""
    if not value:
        return None, None
    a, _, b = value.partition(":")
    try:
        return int(a, 16), int(b, 16)
    except ValueError:
        return None, None


_int_or_none = parse_int


def _read_mdev_types(h: HostRoot, d: str) -> tuple[MdevType, ...]:
    types_dir = d + "/mdev_supported_types"
    out = []
    for tid in h.listdir(types_dir):
        t = f"{types_dir}/{tid}"
        out.append(
            MdevType(
                id=tid,
                name=h.read(t + "/name"),
                description=h.read(t + "/description"),
                available_instances=h.read_int(t + "/available_instances"),
                device_api=h.read(t + "/device_api"),
            )
        )
    return tuple(out)


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _read_mdev_instances(h: HostRoot, d: str, address: str, names: set[str]) -> tuple[MdevInstance, ...]:
    out = []
    for name in sorted(names):
        if _UUID_RE.match(name):
            type_id = h.link_name(f"{d}/{name}/mdev_type")
            out.append(MdevInstance(uuid=name, type_id=type_id, parent=address))
    return tuple(out)


_SPEEDS = {1: "2.5 GT/s PCIe", 2: "5.0 GT/s PCIe", 3: "8.0 GT/s PCIe", 4: "16.0 GT/s PCIe",
           5: "32.0 GT/s PCIe", 6: "64.0 GT/s PCIe"}
PCI_CAP_EXP = 0x10


def pcie_link_from_config(cfg: bytes) -> tuple[str | None, int | None, str | None, int | None] | None:
    """(current speed, current width, max speed, max width) from the PCI Express capability in config space,
    formatted as the kernel's current_link_speed etc.; None when the config is short (non-root reads get 64 bytes)
    or has no PCIe capability. Max speed follows the kernel: Link Capabilities 2's vector when set, else LnkCap."""
    if len(cfg) < 256 or not cfg[6] & 0x10:  # status: capabilities list
        return None
    ptr, hops = cfg[0x34] & 0xFC, 0
    while ptr and hops < 48:
        if cfg[ptr] == PCI_CAP_EXP:
            lnkcap = int.from_bytes(cfg[ptr + 0x0C: ptr + 0x10], "little")
            lnksta = int.from_bytes(cfg[ptr + 0x12: ptr + 0x14], "little")
            flags = int.from_bytes(cfg[ptr + 2: ptr + 4], "little")
            max_code = lnkcap & 0xF
            if flags & 0xF >= 2 and ptr + 0x30 <= len(cfg):  # capability version 2 has Link Capabilities 2
                vec = (int.from_bytes(cfg[ptr + 0x2C: ptr + 0x30], "little") >> 1) & 0x7F
                if vec:
                    max_code = vec.bit_length()
            cur_code, cur_w = lnksta & 0xF, (lnksta >> 4) & 0x3F
            return (_SPEEDS.get(cur_code), cur_w,
                    _SPEEDS.get(max_code), (lnkcap >> 4) & 0x3F)
        ptr, hops = cfg[ptr + 1] & 0xFC, hops + 1
    return None


def read_function(h: HostRoot, address: str, *, find_vf_index: bool = True,
                  bus: DirReader | None = None) -> PciFunction | None:
    """Read one function; None if it is not there (or vanished while being read).

    Cost matters (hosts have thousands of functions): IDs, class, revision, header type and the PCIe link come from
    one read of the first 256 bytes of ``config``; optional attributes are simply tried (a failed lookup is cheaper
    than listing the directory). ``uevent`` and the per-attribute files are the fallback when config is short or
    unreadable. ``find_vf_index=False`` skips finding a VF's index through its PF (scan_pci fills it in from the
    PF's virtfn links).
    """
    d = f"{h.sys}/bus/pci/devices/{address}"
    r = h.opendir(d) if bus is None else bus.sub(address)
    if r is None:
        return None  # not there, or vanished before we looked
    try:
        target = h.readlink(d) if bus is None else bus.readlink(address)
        return _read_function(h, r, d, address, find_vf_index, target)
    finally:
        r.close()


def _read_function(h: HostRoot, r: DirReader, d: str, address: str, find_vf_index: bool,
                   target: str | None) -> PciFunction | None:
    read, read_int, link_name = r.read, r.read_int, r.link_name
    cfg = r.read_bytes("config", 256)
    vendor = device = sub_v = sub_d = class_code = revision = header_type = None
    accessible = True
    if cfg and len(cfg) >= 16:
        if cfg[0:4] == b"\xff\xff\xff\xff" and cfg[9:12] == b"\xff\xff\xff":
            accessible = False  # config reads all ones: the device no longer answers (fell off the bus, D3cold)
        else:
            vendor = int.from_bytes(cfg[0:2], "little")
            device = int.from_bytes(cfg[2:4], "little")
            if vendor == 0xFFFF:  # an SR-IOV VF: its ID registers read all ones; the kernel knows the real IDs
                vendor = device = None
            revision = cfg[8]
            class_code = int.from_bytes(cfg[9:12], "little")
            header_type = cfg[14] & 0x7F
            if header_type == 0 and len(cfg) >= 48:
                sub_v = int.from_bytes(cfg[44:46], "little")
                sub_d = int.from_bytes(cfg[46:48], "little")
    if vendor is None:
        # no usable IDs in config: uevent (kernel-cached IDs), then the per-attribute files
        ue = _parse_uevent(read("uevent") or "")
        if not ue and not os.path.isdir(d):
            return None  # vanished
        vendor, device = _hex_pair(ue.get("PCI_ID"))
        if sub_v is None or sub_v == 0xFFFF:
            sub_v, sub_d = _hex_pair(ue.get("PCI_SUBSYS_ID"))
        if class_code is None:
            class_code = _int_or_none(ue.get("PCI_CLASS"), 16)
        if vendor is None:
            vendor, device = read_int("vendor", 16), read_int("device", 16)
        if class_code is None:
            class_code = read_int("class", 16)
        if sub_v is None:
            sub_v, sub_d = read_int("subsystem_vendor", 16), read_int("subsystem_device", 16)
        if revision is None:
            revision = read_int("revision", 16)
        if vendor is None or device is None or class_code is None:
            if not os.path.isdir(d):
                return None
            vendor = 0xFFFF if vendor is None else vendor
            device = 0xFFFF if device is None else device
            class_code = 0xFF0000 if class_code is None else class_code

    driver = link_name("driver")
    override = read("driver_override")
    if override in ("(null)", ""):
        override = None
    g = link_name("iommu_group")
    group = int(g) if g and g.isdigit() else None
    numa = read_int("numa_node")
    if numa is None:
        numa = -1

    # parent bridge from the device's real location: .../0000:00:01.0/0000:01:00.0
    parent = None
    if target:
        parts = target.rstrip("/").split("/")
        if len(parts) >= 2 and _FULL_BDF_RE.match(parts[-2]):
            parent = parts[-2]
    else:
        up = os.path.basename(os.path.dirname(os.path.realpath(d)))
        parent = up if _FULL_BDF_RE.match(up) else None

    # SR-IOV: a VF has a physfn link; a PF has sriov_totalvfs and virtfnN links
    endpoint = header_type in (0, None)  # bridges are never VFs, PFs or mdev parents
    physfn = link_name("physfn") if endpoint and r.has("physfn") else None
    vf_index = None
    if physfn and find_vf_index:
        for n, tgt in h.walk_links(f"{d}/physfn", "virtfn"):
            if tgt == address and n[6:].isdigit():
                vf_index = int(n[6:])
                break
    totalvfs = numvfs = None
    vfs: tuple[str, ...] = ()
    if physfn is None and endpoint and r.has("sriov_totalvfs"):
        totalvfs = read_int("sriov_totalvfs")
        if totalvfs is not None:
            numvfs = read_int("sriov_numvfs")
            links = sorted(((int(n[6:]), t) for n, t in h.walk_links(d, "virtfn") if n[6:].isdigit()))
            vfs = tuple(t for _, t in links)

    # network interfaces hang off network (02), serial-bus (0c: InfiniBand, CAN) and wireless (0d) functions
    netdevs = tuple(r.listdir("net")) if class_code >> 16 in (0x02, 0x0C, 0x0D) else ()
    # mdev parents are registered by their host driver (nvidia, i915, idxd...), never by vfio-pci or nothing
    mdev_parent = endpoint and driver is not None and not driver.endswith(("vfio-pci", "pci-stub", "pcieport"))
    mdev_types = _read_mdev_types(h, d) if mdev_parent and r.has("mdev_supported_types") else ()
    mdevs = _read_mdev_instances(h, d, address, set(h.listdir(d))) if mdev_types else ()

    nv_types = nv_current = None
    if vendor == 0x10DE:
        raw = read("nvidia/creatable_vgpu_types")
        if raw is not None:
            nv_types = tuple(line.strip() for line in raw.splitlines() if line.strip())
            nv_current = read("nvidia/current_vgpu_type")

    link = pcie_link_from_config(cfg) if cfg and accessible else None
    if link is None and (cfg is None or len(cfg) < 256 or not accessible):
        # short (non-root) or dead config: the kernel's attributes (present on PCIe devices only)
        link = (_speed(read("current_link_speed")), _int_or_none(read("current_link_width")),
                _speed(read("max_link_speed")), _int_or_none(read("max_link_width")))
    if link is None:
        link = (None, None, None, None)

    boot_vga = None
    if class_code >> 8 == 0x0300:
        bv = read("boot_vga")
        boot_vga = None if bv is None else bv == "1"

    return PciFunction(
        address=address,
        vendor_id=vendor,
        device_id=device,
        subsystem_vendor_id=sub_v,
        subsystem_device_id=sub_d,
        class_code=class_code,
        revision=revision,
        driver=driver,
        driver_override=override,
        iommu_group=group,
        numa_node=numa,
        boot_vga=boot_vga,
        reset_methods=tuple((read("reset_method") or "").split()),
        current_link_speed=link[0],
        current_link_width=link[1],
        max_link_speed=link[2],
        max_link_width=link[3],
        parent=parent,
        header_type=header_type,
        sriov_totalvfs=totalvfs,
        sriov_numvfs=numvfs,
        physfn=physfn,
        vf_index=vf_index,
        vfs=vfs,
        netdevs=netdevs,
        mdev_types=mdev_types,
        mdevs=mdevs,
        nvidia_creatable_vgpu_types=nv_types,
        nvidia_current_vgpu_type=nv_current,
        accessible=accessible,
    )


def _speed(text: str | None) -> str | None:
    if not text or text.startswith("Unknown"):
        return None
    return text


def scan_pci(h: HostRoot) -> list[PciFunction]:
    """Every PCI function of the host, sorted by address. Vanished functions are skipped."""
    out = []
    bus = h.opendir(h.sys + "/bus/pci/devices")
    if bus is None:
        return out
    with bus:
        for address in os.listdir(bus.fd):
            fn = read_function(h, address, find_vf_index=False, bus=bus)
            if fn is not None:
                out.append(fn)
    index = {vf: i for f in out for i, vf in enumerate(f.vfs)}
    for i, fn in enumerate(out):
        if fn.physfn is not None:
            if fn.address in index:
                # still private to this function: set in place rather than copy 2000 VFs with replace()
                object.__setattr__(fn, "vf_index", index[fn.address])
            else:  # PF not in this scan (vanished): ask its links directly
                again = read_function(h, fn.address)
                out[i] = again if again is not None else fn
    # kernel addresses are fixed-width lowercase hex except the domain: a longer domain is a larger one
    out.sort(key=lambda f: (f.address.index(":"), f.address))
    return out
