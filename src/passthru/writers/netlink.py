"""The VF-settings writer: one netlink message per setting through the PF's interface, as ``ip link set PF vf N ...``
does, with pyroute2 behind :class:`VfNetlink` (tests give a fake ``iproute``). What to send, the records and the
undo are the NIC kind's (``kinds/nic_vf/settings.py``)."""

from __future__ import annotations

import copy
import errno
import os
from dataclasses import dataclass
from typing import Any

from ..errors import HostError

__all__ = ["VfConfig", "VfNetlink", "parse_vfinfo", "nl_error", "errname", "SETTINGS", "LINK_STATES",
           "LINK_NAMES"]

SETTINGS = ("mac", "vlan", "qos", "spoofchk", "trust", "min_tx_rate", "max_tx_rate", "link_state")
LINK_STATES = {"auto": 0, "enable": 1, "disable": 2}  # IFLA_VF_LINK_STATE_*
LINK_NAMES = {v: k for k, v in LINK_STATES.items()}

_U32_UNSET = 0xFFFFFFFF  # the kernel's -1: the driver did not report this setting
_NL_HINTS = {
    errno.EOPNOTSUPP: "the PF's driver does not support this VF setting",
    errno.EINVAL: "the driver rejected the value (or the VF index)",
    errno.ENODEV: "the interface is gone",
    errno.EPERM: "permission denied (run as root)",
    errno.EBUSY: "the driver refuses while the VF is in use",
    errno.ERANGE: "the value is out of the driver's range",
}


@dataclass(frozen=True, slots=True)
class VfConfig:
    """One VF as the kernel reports it through the PF (None: the driver does not report that setting)."""

    vf: int
    mac: str | None = None
    vlan: int | None = None
    qos: int | None = None
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: str | None = None
    min_tx_rate: int | None = None
    max_tx_rate: int | None = None

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in SETTINGS}


def _u32(v: Any) -> int | None:
    return None if v is None or v == _U32_UNSET else int(v)


def parse_vfinfo(msg: Any) -> list[VfConfig]:
    """VFs from an RTM_NEWLINK answer asked with ext_mask=1 (IFLA_VFINFO_LIST); [] when it has none."""
    vlist = msg.get_attr("IFLA_VFINFO_LIST")
    if vlist is None:
        return []
    out = []
    for info in vlist.get_attrs("IFLA_VF_INFO"):
        a = {name: info.get_attr(f"IFLA_VF_{name.upper()}")
             for name in ("mac", "vlan", "rate", "spoofchk", "trust", "link_state", "tx_rate")}
        first = next((v for v in a.values() if v is not None), None)
        if first is None:
            continue
        vlan, rate = a["vlan"], a["rate"]
        spoof, trust, link = (None if a[k] is None else _u32(a[k].get(k)) for k in ("spoofchk", "trust", "link_state"))
        out.append(VfConfig(
            vf=int(first.get("vf")),
            mac=a["mac"].get("mac") if a["mac"] is not None else None,
            vlan=_u32(vlan.get("vlan")) if vlan is not None else None,
            qos=_u32(vlan.get("qos")) if vlan is not None else None,
            spoofchk=None if spoof is None else bool(spoof),
            trust=None if trust is None else bool(trust),
            link_state=LINK_NAMES.get(link) if link is not None else None,
            min_tx_rate=_u32(rate.get("min_tx_rate")) if rate is not None else None,
            max_tx_rate=_u32(rate.get("max_tx_rate")) if rate is not None else None,
        ))
    return sorted(out, key=lambda c: c.vf)


class VfNetlink:
    """The netlink boundary of VF settings: ``get`` with RTEXT_FILTER_VF and one ``set`` per message, through a
    pyroute2 ``IPRoute`` (in ``netns`` if given). ``iproute`` injects a stand-in with the same ``link`` /
    ``link_lookup`` methods (tests). pyroute2 consumes the ``vf`` dict it is given (it pops keys, also from the
    nested vlan/rate dicts), so :meth:`set_vf` always hands it a deep copy."""

    def __init__(self, netns: str | None = None, iproute: Any = None) -> None:
        self.netns = netns
        self._ip = iproute
        self._own = iproute is None

    def ip(self) -> Any:
        if self._ip is None:
            from pyroute2 import IPRoute

            self._ip = IPRoute(netns=self.netns) if self.netns else IPRoute()
        return self._ip

    def close(self) -> None:
        if self._own and self._ip is not None:
            self._ip.close()
            self._ip = None

    def __enter__(self) -> "VfNetlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index(self, ifname: str) -> int:
        found = self.ip().link_lookup(ifname=ifname)
        if not found:
            raise HostError(f"{ifname}: no such interface in this network namespace")
        return int(found[0])

    def vfs(self, ifname: str) -> list[VfConfig]:
        """Every VF of the PF ``ifname`` as the kernel reports it."""
        try:
            msgs = self.ip().link("get", index=self.index(ifname), ext_mask=1)
        except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError, socket errors
            raise nl_error(e, f"{ifname}: reading VF settings") from None
        return parse_vfinfo(msgs[0]) if msgs else []

    def vf(self, ifname: str, index: int) -> VfConfig:
        for c in self.vfs(ifname):
            if c.vf == index:
                return c
        raise HostError(f"{ifname}: the kernel reports no VF {index} on this interface (is it the PF, with VFs?)")

    def set_vf(self, ifname: str, spec: dict, what: str) -> None:
        """One ``RTM_SETLINK`` with IFLA_VFINFO_LIST: ``spec`` is pyroute2's vf dict ({"vf": N, "mac": ...})."""
        try:
            self.ip().link("set", index=self.index(ifname), vf=copy.deepcopy(spec))
        except HostError:
            raise
        except Exception as e:  # noqa: BLE001
            raise nl_error(e, f"{ifname}: {what}") from None


def errname(code: int) -> str:
    """EOPNOTSUPP, as the kernel's headers call it (Python's errorcode says ENOTSUP, the same number on Linux)."""
    return "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode.get(code, str(code))


def nl_error(e: Exception, what: str) -> HostError:
    code = getattr(e, "code", None)
    if isinstance(code, int) and code > 0:
        name = errname(code)
        hint = _NL_HINTS.get(code, os.strerror(code))
        return HostError(f"{what}: {hint} ({name}: {os.strerror(code)}, netlink error {code})")
    return HostError(f"{what}: {e}")
