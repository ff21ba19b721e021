"""SR-IOV facts: a PF named the way an operator knows it, its VFs, their representors. Read-only, through HostRoot.

A PF is named (:func:`resolve_pf`) by a PCI address (``0000:3b:00.0``, ``3b:00.0``), a network interface of the PF
(``enp59s0f0np0``), a devlink handle (``pci/0000:3b:00.0``, ``netdevsim/netdevsim1``) or a device name on another
bus (``netdevsim1``). Whatever the spelling, a PF is a device directory with ``sriov_numvfs``; PCI is not assumed
(netdevsim's PFs live on the netdevsim bus, and its VFs are indices without devices of their own).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import NotFoundError, UsageError
from .pci import normalize_address
from .root import HostRoot

__all__ = ["PfRef", "VfEntry", "PfState", "resolve_pf", "read_pf", "representors", "sriov_pfs", "REP_RE"]

REP_RE = re.compile(r"^(?:c\d+)?pf(\d+)vf(\d+)$")
_SF_RE = re.compile(r"^(?:c\d+)?pf\d+sf\d+$")


@dataclass(frozen=True, slots=True)
class PfRef:
    """An SR-IOV PF: ``bus``/``name`` as devlink names it, its sysfs device directory and its PF netdev."""

    bus: str  # "pci", "netdevsim"
    name: str  # "0000:3b:00.0", "netdevsim1"
    path: str  # host-root path of the device directory
    netdev: str | None  # the PF's own interface (never a representor), None when it has none

    @property
    def address(self) -> str | None:
        return self.name if self.bus == "pci" else None

    @property
    def devlink(self) -> str:
        return f"{self.bus}/{self.name}"

    @property
    def key(self) -> str:
        """File-name-safe identity for records: the PCI address, else "<bus>-<name>"."""
        return self.name if self.bus == "pci" else f"{self.bus}-{self.name}"

    def __str__(self) -> str:
        return f"{self.name} ({self.netdev})" if self.netdev else self.name

    def to_json(self) -> dict:
        return {"pf": self.name, "bus": self.bus, "devlink": self.devlink, "netdev": self.netdev}


@dataclass(frozen=True, slots=True)
class VfEntry:
    index: int
    address: str | None  # the VF's PCI address; None where VFs are not devices (netdevsim)
    driver: str | None
    netdevs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PfState:
    pf: PfRef
    driver: str | None
    numvfs: int
    totalvfs: int | None  # None when the bus does not say (netdevsim without debugfs)
    autoprobe: bool | None  # None when there is no sriov_drivers_autoprobe (not PCI)
    vfs: tuple[VfEntry, ...]


# -- naming a PF -------------------------------------------------------------------------------------------------
def _bus_of(h: HostRoot, dev_path: str) -> str | None:
    return h.link_name(dev_path + "/subsystem")


def _own_netdev(h: HostRoot, dev_path: str) -> str | None:
    """The PF's interface under its device: not a VF/SF representor (in switchdev mode they hang off the PF too)."""
    for name in h.listdir(dev_path + "/net"):
        port = h.read(f"{dev_path}/net/{name}/phys_port_name") or ""
        if not REP_RE.match(port) and not _SF_RE.match(port):
            return name
    return None


def _forms() -> str:
    return ("name a PF by PCI address (0000:3b:00.0), interface (enp59s0f0np0) or devlink handle "
            "(pci/0000:3b:00.0, netdevsim/netdevsim1)")


def resolve_pf(h: HostRoot, text: str) -> PfRef:
    """The SR-IOV PF ``text`` names. NotFoundError when nothing by that name exists, UsageError when it exists but
    is not a PF (a VF, a software interface, a device without SR-IOV)."""
    text = text.strip()
    bus = name = None
    netdev = None
    if "/" in text:
        b, _, n = text.partition("/")
        if b and n and "/" not in n:
            bus, name = b, normalize_address(n) if b == "pci" and _looks_pci(n) else n
    elif _looks_pci(text):
        bus, name = "pci", normalize_address(text)
    elif text and h.exists(f"{h.sys}/class/net/{text}"):
        dev = f"{h.sys}/class/net/{text}/device"
        if not h.exists(dev):
            raise UsageError(f"{text} is a software interface (no device behind it), not an SR-IOV PF; {_forms()}")
        real = h.realpath(dev)
        bus, name = _bus_of(h, real), os.path.basename(real)
        if not REP_RE.match(h.read(f"{h.sys}/class/net/{text}/phys_port_name") or ""):
            netdev = text  # a representor names its PF's device, but VF settings go through the PF's own netdev
        if bus is None:
            raise UsageError(f"{text}: cannot tell which bus its device {name} is on; {_forms()}")
    elif text and "." not in text and ":" not in text:
        for b in h.listdir(f"{h.sys}/bus"):
            if h.exists(f"{h.sys}/bus/{b}/devices/{text}"):
                bus, name = b, text
                break
    if bus is None or name is None:
        raise NotFoundError(f"no PF {text!r} on this host; {_forms()}")
    path = f"{h.sys}/bus/{bus}/devices/{name}"
    if not h.exists(path):
        raise NotFoundError(f"no device {bus}/{name} on this host; {_forms()}")
    if h.exists(path + "/physfn"):
        pf = h.link_name(path + "/physfn")
        raise UsageError(f"{text} is a VF of PF {pf}: name the PF (VF settings: `passthru vf set {pf} INDEX ...`)")
    if not h.exists(path + "/sriov_numvfs"):
        also = f" ({bus}/{name})" if text not in (name, f"{bus}/{name}") else ""
        raise UsageError(f"{text}{also} is not an SR-IOV PF (no sriov_numvfs): its device or driver has no SR-IOV, "
                         "or SR-IOV is off in the firmware")
    return PfRef(bus, name, path, netdev or _own_netdev(h, path))


def _looks_pci(text: str) -> bool:
    try:
        normalize_address(text)
    except ValueError:
        return False
    return True


def sriov_pfs(h: HostRoot) -> list[PfRef]:
    """Every SR-IOV PF of the host: PCI functions with ``sriov_totalvfs`` > 0, and devices of other buses with
    ``sriov_numvfs`` (netdevsim)."""
    out = []
    for bus in h.listdir(f"{h.sys}/bus"):
        base = f"{h.sys}/bus/{bus}/devices"
        for name in h.listdir(base):
            d = f"{base}/{name}"
            if not h.exists(d + "/sriov_numvfs") or h.exists(d + "/physfn"):
                continue
            if bus == "pci" and not h.read_int(d + "/sriov_totalvfs"):
                continue
            out.append(PfRef(bus, name, d, _own_netdev(h, d)))
    return out


# -- reading a PF ------------------------------------------------------------------------------------------------
def read_pf(h: HostRoot, pf: PfRef) -> PfState:
    numvfs = h.read_int(pf.path + "/sriov_numvfs") or 0
    totalvfs = h.read_int(pf.path + "/sriov_totalvfs")
    if totalvfs is None and pf.bus == "netdevsim":  # its limit is a debugfs knob (4 by default)
        totalvfs = h.read_int(f"{h.sys}/kernel/debug/netdevsim/{pf.name}/max_vfs")
    ap = h.read_int(pf.path + "/sriov_drivers_autoprobe")
    vfs: list[VfEntry] = []
    links = sorted((int(n[6:]), t) for n, t in h.walk_links(pf.path, "virtfn") if n[6:].isdigit())
    if links:
        for idx, addr in links:
            d = f"{pf.path}/virtfn{idx}"
            vfs.append(VfEntry(idx, addr, h.link_name(d + "/driver"), tuple(h.listdir(d + "/net"))))
    else:  # VFs that are no devices (netdevsim), or a PCI PF whose links are not there (yet)
        vfs = [VfEntry(i, None, None, ()) for i in range(numvfs)] if pf.bus != "pci" else []
    return PfState(pf, h.link_name(pf.path + "/driver"), numvfs, totalvfs, None if ap is None else bool(ap),
                   tuple(vfs))


def representors(h: HostRoot, pf: PfRef) -> dict[int, str]:
    """VF index -> representor interface, found by ``phys_port_name`` (pfNvfM) among the PF device's interfaces
    (switchdev mode: mlx5, ice and netdevsim put them there)."""
    out: dict[int, str] = {}
    for name in h.listdir(pf.path + "/net"):
        m = REP_RE.match(h.read(f"{pf.path}/net/{name}/phys_port_name") or "")
        if m:
            out.setdefault(int(m.group(2)), name)
    return out
