"""The PCIe tree from config space: what each function is (root port, switch port, PCIe-to-PCI bridge, endpoint) and
its Access Control Services (ACS) capability, read from sysfs ``config`` through the HostRoot (never setpci).

Facts only (floor 0). What the kernel makes of them, the IOMMU grouping rule, lives in ``host/isolation.py``.

Config space layout used here (PCI Local Bus and PCI Express Base specifications):

- 0x0E header type: bits 0-6 the layout (0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus), bit 7 multifunction.
- 0x34 the first standard capability (status bit 4 says the list exists). The PCI Express capability (ID 0x10)
  has its flags at +2: bits 4-7 are the device/port type.
- 0x100 the extended capability list (PCIe only, 4096-byte config): a 32-bit header per capability, bits 0-15
  the ID, 16-19 the version, 20-31 the offset of the next one (0 ends the list).
- ACS (extended ID 0x000D): the capability register at +4, the control register at +6, with the same bit per
  feature: source validation, translation blocking, P2P request redirect, P2P completion redirect, upstream
  forwarding, P2P egress control, direct translated P2P.

Non-root users read only the first 64 bytes of ``config`` (the kernel cuts it): then nothing past the header is
known, and :attr:`PcieFacts.short` says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .root import HostRoot

__all__ = ["Acs", "PcieFacts", "ACS_BITS", "REQUIRED_ACS", "PORT_KINDS", "read_pcie", "parse_config",
           "extended_caps", "scan_pcie", "root_bus", "EXT_CAP_ACS", "kind_words"]

EXT_CAP_ACS = 0x000D
CAP_EXP = 0x10
# (lspci's name, bit): the order lspci -vvv prints them in ACSCap:/ACSCtl:
ACS_BITS: tuple[tuple[str, int], ...] = (("SrcValid", 0x01), ("TransBlk", 0x02), ("ReqRedir", 0x04),
                                         ("CmpltRedir", 0x08), ("UpstreamFwd", 0x10), ("EgressCtrl", 0x20),
                                         ("DirectTrans", 0x40))
# what the kernel requires for isolation (drivers/iommu/iommu.c REQ_ACS_FLAGS): SV | RR | CR | UF
REQUIRED_ACS = 0x01 | 0x04 | 0x08 | 0x10
_SHORT_NAMES = {0x01: "SV", 0x02: "TB", 0x04: "RR", 0x08: "CR", 0x10: "UF", 0x20: "EC", 0x40: "DT"}
# PCI Express capability, device/port type
PORT_KINDS = {0: "endpoint", 1: "legacy_endpoint", 4: "root_port", 5: "upstream", 6: "downstream",
              7: "pcie_to_pci", 8: "pci_to_pcie", 9: "rc_endpoint", 10: "rc_event_collector"}
_WORDS = {"endpoint": "endpoint", "legacy_endpoint": "legacy endpoint", "root_port": "root port",
          "upstream": "switch upstream port", "downstream": "switch downstream port",
          "pcie_to_pci": "PCIe-to-PCI bridge", "pci_to_pcie": "PCI-to-PCIe bridge",
          "rc_endpoint": "root complex integrated endpoint", "rc_event_collector": "root complex event collector",
          "pci_bridge": "conventional PCI bridge", "pci": "conventional PCI function", "unknown": "function"}


def _u16(cfg: bytes, at: int) -> int:
    return int.from_bytes(cfg[at:at + 2], "little")


def _u32(cfg: bytes, at: int) -> int:
    return int.from_bytes(cfg[at:at + 4], "little")


@dataclass(frozen=True, slots=True)
class Acs:
    """The ACS extended capability of one function: where it is and its capability/control registers."""

    offset: int
    version: int
    cap: int
    ctrl: int

    def bits(self, value: int) -> dict[str, bool]:
        """{"SrcValid": True, ...} for the capability or control register, lspci's names and order."""
        return {name: bool(value & bit) for name, bit in ACS_BITS}

    @property
    def missing(self) -> tuple[str, ...]:
        """The required controls (SV, RR, CR, UF) this port offers but has switched off, short names. A feature
        the capability register does not offer counts as hard-wired on (the kernel's reading of the spec)."""
        off = REQUIRED_ACS & self.cap & ~self.ctrl
        return tuple(short for bit, short in _SHORT_NAMES.items() if off & bit)

    @property
    def enabled(self) -> bool:
        return not self.missing


@dataclass(frozen=True, slots=True)
class PcieFacts:
    """What config space says about one function's place in the tree."""

    address: str
    readable: int  # bytes of config we could read (0: none; 64: a non-root user's view)
    header_type: int | None  # 0, 1, 2 (multifunction bit stripped); None when unreadable
    multifunction: bool
    pcie_type: int | None  # PCI Express capability device/port type; None: no PCIe capability (or unknown)
    acs: Acs | None
    ext_caps: tuple[int, ...]  # extended capability IDs in list order

    @property
    def short(self) -> bool:
        """True when the config read stopped before the capability list (not root, or no config file)."""
        return self.readable < 256

    @property
    def kind(self) -> str:
        """root_port, upstream, downstream, pcie_to_pci, pci_to_pcie, endpoint, rc_endpoint, ..., pci_bridge
        (a conventional bridge: no PCIe capability), pci (a conventional function), unknown (config too short)."""
        if self.pcie_type is not None:
            return PORT_KINDS.get(self.pcie_type, f"pcie_type_{self.pcie_type}")
        if self.short:
            return "unknown"
        return "pci_bridge" if self.header_type == 1 else "pci"

    @property
    def kind_words(self) -> str:
        return kind_words(self.kind)


def kind_words(kind: str) -> str:
    """"root_port" -> "root port", "pcie_to_pci" -> "PCIe-to-PCI bridge", ..."""
    return _WORDS.get(kind, kind.replace("_", " "))


def extended_caps(cfg: bytes) -> list[tuple[int, int, int]]:
    """(id, version, offset) of every extended capability, following the chain from 0x100. Stops at a zero or
    all-ones header, an offset that points back into the first 256 bytes or past the data, or a loop."""
    out: list[tuple[int, int, int]] = []
    at, seen = 0x100, set()
    while 0x100 <= at <= len(cfg) - 4 and at not in seen:
        seen.add(at)
        head = _u32(cfg, at)
        if head in (0, 0xFFFFFFFF):
            break
        out.append((head & 0xFFFF, (head >> 16) & 0xF, at))
        at = (head >> 20) & 0xFFC
    return out


def _pcie_type(cfg: bytes) -> int | None:
    if len(cfg) < 0x40 or not cfg[6] & 0x10:
        return None
    ptr, seen = cfg[0x34] & 0xFC, set()
    while 0x40 <= ptr <= len(cfg) - 4 and ptr not in seen:
        seen.add(ptr)
        if cfg[ptr] == CAP_EXP:
            return (_u16(cfg, ptr + 2) >> 4) & 0xF
        ptr = cfg[ptr + 1] & 0xFC
    return None


def parse_config(address: str, cfg: bytes | None) -> PcieFacts:
    """The facts in one function's config space (``cfg`` as read; None or short is fine)."""
    cfg = cfg or b""
    if len(cfg) < 16 or cfg[0:4] == b"\xff\xff\xff\xff":
        return PcieFacts(address, len(cfg) if len(cfg) >= 16 else 0, None, False, None, None, ())
    header = cfg[0x0E]
    ptype = _pcie_type(cfg) if len(cfg) >= 256 else None
    caps = extended_caps(cfg) if len(cfg) > 0x100 else []
    acs = None
    for cid, ver, at in caps:
        if cid == EXT_CAP_ACS and at + 8 <= len(cfg):
            acs = Acs(at, ver, _u16(cfg, at + 4), _u16(cfg, at + 6))
            break
    return PcieFacts(address, len(cfg), header & 0x7F, bool(header & 0x80), ptype, acs, tuple(c for c, _, _ in caps))


def read_pcie(h: HostRoot, address: str) -> PcieFacts:
    """One function's facts from ``/sys/bus/pci/devices/<address>/config`` (all 4096 bytes when readable)."""
    return parse_config(address, h.read_bytes(f"{h.sys}/bus/pci/devices/{address}/config", 4096))


def scan_pcie(h: HostRoot, addresses: list[str] | tuple[str, ...]) -> dict[str, PcieFacts]:
    return {a: read_pcie(h, a) for a in addresses}


def root_bus(address: str, chain: list[str]) -> str:
    """The root complex's bus ("0000:00") a function hangs from: the bus of the topmost bridge in ``chain``
    (nearest first, as Inventory.upstream gives it), else the function's own bus."""
    top = chain[-1] if chain else address
    return top.rsplit(":", 1)[0]
