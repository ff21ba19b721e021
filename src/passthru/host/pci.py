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
from dataclasses import dataclass, field

from .root import HostRoot

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
    extra: dict[str, str] = field(default_factory=dict, compare=False)

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


def _int_or_none(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text.split()[0], base) if text else None
    except (ValueError, IndexError):
        return None


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


def _split_list(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    # reset_method is space separated; creatable_vgpu_types is one type per line ("ID : NAME" on some drivers)
    return tuple(p.strip() for p in re.split(r"[\n ]+" if "\n" not in text else r"\n", text) if p.strip())


def read_function(h: HostRoot, address: str) -> PciFunction | None:
    """Read one function; None if it is not there (or vanished while being read)."""
    devices = h.sys + "/bus/pci/devices"
    d = f"{devices}/{address}"
    try:
        with os.scandir(d) as it:
            names = {e.name for e in it}
    except OSError:
        return None
    read = h.read

    ue = _parse_uevent(read(d + "/uevent") or "") if "uevent" in names else {}
    vendor, device = _hex_pair(ue.get("PCI_ID"))
    sub_v, sub_d = _hex_pair(ue.get("PCI_SUBSYS_ID"))
    class_code = _int_or_none(ue.get("PCI_CLASS"), 16)

    cfg = h.read_bytes(d + "/config", 64) if "config" in names else None
    revision = header_type = None
    if cfg and len(cfg) >= 16:
        revision = cfg[8]
        header_type = cfg[14] & 0x7F
        if vendor is None:
            vendor = int.from_bytes(cfg[0:2], "little")
            device = int.from_bytes(cfg[2:4], "little")
        if class_code is None:
            class_code = int.from_bytes(cfg[9:12], "little")
        if sub_v is None and header_type == 0 and len(cfg) >= 48:
            sub_v = int.from_bytes(cfg[44:46], "little")
            sub_d = int.from_bytes(cfg[46:48], "little")
    # per-attribute fallbacks (captures without uevent/config, or unreadable config)
    if vendor is None:
        vendor = h.read_hex(d + "/vendor")
        device = h.read_hex(d + "/device")
    if class_code is None:
        class_code = h.read_hex(d + "/class")
    if sub_v is None and "subsystem_vendor" in names:
        sub_v = h.read_hex(d + "/subsystem_vendor")
        sub_d = h.read_hex(d + "/subsystem_device")
    if revision is None and "revision" in names:
        revision = h.read_hex(d + "/revision")
    if vendor is None or device is None or class_code is None:
        # vanished mid-read, or not a PCI function at all
        if not os.path.isdir(d):
            return None
        vendor = vendor if vendor is not None else 0xFFFF
        device = device if device is not None else 0xFFFF
        class_code = class_code if class_code is not None else 0xFF0000

    driver = ue.get("DRIVER")
    if driver is None and "driver" in names:
        driver = h.link_name(d + "/driver")
    override = read(d + "/driver_override") if "driver_override" in names else None
    if override in ("(null)", ""):
        override = None

    group = None
    if "iommu_group" in names:
        g = h.link_name(d + "/iommu_group")
        group = int(g) if g and g.isdigit() else None

    numa = -1
    if "numa_node" in names:
        n = h.read_int(d + "/numa_node")
        numa = n if n is not None else -1

    # parent bridge from the device's real location: .../0000:00:01.0/0000:01:00.0
    parent = None
    target = h.readlink(d)
    if target:
        parts = target.rstrip("/").split("/")
        if len(parts) >= 2 and _FULL_BDF_RE.match(parts[-2]):
            parent = parts[-2]
    else:
        real = os.path.realpath(d)
        up = os.path.basename(os.path.dirname(real))
        parent = up if _FULL_BDF_RE.match(up) else None

    physfn = vf_index = None
    if "physfn" in names:
        physfn = h.link_name(d + "/physfn")
    virtfns = [n for n in names if n.startswith("virtfn") and n[6:].isdigit()]
    vfs: tuple[str, ...] = ()
    if virtfns:
        vfs = tuple(
            v for v in (h.link_name(f"{d}/{n}") for n in sorted(virtfns, key=lambda n: int(n[6:]))) if v
        )
    if physfn:
        for n, tgt in h.walk_links(f"{d}/physfn", "virtfn"):
            if tgt == address and n[6:].isdigit():
                vf_index = int(n[6:])
                break

    netdevs = tuple(h.listdir(d + "/net")) if "net" in names else ()

    mdev_types = _read_mdev_types(h, d) if "mdev_supported_types" in names else ()
    mdevs = _read_mdev_instances(h, d, address, names) if mdev_types or any("-" in n for n in names) else ()

    nv_types = nv_current = None
    if "nvidia" in names:
        raw = read(d + "/nvidia/creatable_vgpu_types")
        nv_types = tuple(line.strip() for line in (raw or "").splitlines() if line.strip())
        nv_current = read(d + "/nvidia/current_vgpu_type")

    def opt(name: str) -> str | None:
        return read(f"{d}/{name}") if name in names else None

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
        boot_vga=(opt("boot_vga") == "1") if "boot_vga" in names else None,
        reset_methods=tuple((opt("reset_method") or "").split()),
        current_link_speed=_speed(opt("current_link_speed")),
        current_link_width=_int_or_none(opt("current_link_width")),
        max_link_speed=_speed(opt("max_link_speed")),
        max_link_width=_int_or_none(opt("max_link_width")),
        parent=parent,
        header_type=header_type,
        sriov_totalvfs=_int_or_none(opt("sriov_totalvfs")),
        sriov_numvfs=_int_or_none(opt("sriov_numvfs")),
        physfn=physfn,
        vf_index=vf_index,
        vfs=vfs,
        netdevs=netdevs,
        mdev_types=mdev_types,
        mdevs=mdevs,
        nvidia_creatable_vgpu_types=nv_types,
        nvidia_current_vgpu_type=nv_current,
    )


def _speed(text: str | None) -> str | None:
    if not text or text.startswith("Unknown"):
        return None
    return text


def scan_pci(h: HostRoot) -> list[PciFunction]:
    """Every PCI function of the host, sorted by address. Vanished functions are skipped."""
    out = []
    for address in h.listdir(h.sys + "/bus/pci/devices"):
        fn = read_function(h, address)
        if fn is not None:
            out.append(fn)
    out.sort(key=lambda f: parse_address(f.address))
    return out
