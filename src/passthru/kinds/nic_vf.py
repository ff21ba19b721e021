"""The NIC kind: a VF's network settings over netlink, switchdev (devlink), representors, Open vSwitch offload.

**VF settings** go through the PF's interface, as ``ip link set PF vf N ...`` does, with pyroute2 behind one small
boundary (:class:`VfNetlink`): MAC, VLAN with its QoS priority, spoof check, trust, min/max TX rate (Mbit/s) and
link state (auto / enable / disable). Each setting is one netlink message; before the first, the VF's current
settings are read (RTEXT_FILTER_VF) and recorded as its prior state (``<state>/sriov/<pf>.vf<N>.json``, journal
first), so ``passthru vf reset`` - or releasing the VM (:meth:`NicKind.after_release`) - puts exactly those back.
If a message fails, the ones already sent are undone and the error names the setting and the kernel's reason
(EOPNOTSUPP: the PF's driver has no such VF operation).

**switchdev.** ``devlink dev eswitch show|set <handle> mode switchdev|legacy`` (the iproute2 CLI, by argument list,
JSON output, bounded time: pyroute2's devlink has no eswitch commands). In switchdev mode every VF gets a
representor interface on the host, recognised by its ``phys_port_name`` ``pfNvfM``. **Open vSwitch** offloads flows
to the NIC with ``other_config:hw-offload=true`` (``ovs-vsctl``; takes effect after an OVS restart).

**Doctor.** :func:`sriov_findings` returns ``sriov.eswitch``, ``sriov.representors`` and ``sriov.ovs_offload``
findings for the PFs that have VFs.

The netlink, devlink and ovs-vsctl boundaries are injectable, so fixture trees test every path; the real-kernel lab
runs them against netdevsim.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import HostError, PassthruError, UsageError
from ..host.root import HostRoot
from ..sriov import (PfRef, PfState, SriovStore, read_pf, representors, resolve_pf, sriov_pfs)
from .base import DeviceKind, register

__all__ = ["VfConfig", "VfNetlink", "Devlink", "Ovs", "NicKind", "VfResult", "SETTINGS", "LINK_STATES",
           "normalize_settings", "vf_messages", "ip_words", "parse_vfinfo", "ToolMissing", "set_vf", "reset_vf", "list_vfs", "switchdev", "offload_ovs",
           "sriov_findings", "vf_of"]

SETTINGS = ("mac", "vlan", "qos", "spoofchk", "trust", "min_tx_rate", "max_tx_rate", "link_state")
LINK_STATES = {"auto": 0, "enable": 1, "disable": 2}  # IFLA_VF_LINK_STATE_*
_LINK_NAMES = {v: k for k, v in LINK_STATES.items()}
# one netlink message per group, in this order; a group's keys are set (and restored) together
_GROUPS = (("mac", ("mac",)), ("vlan", ("vlan", "qos")), ("rate", ("min_tx_rate", "max_tx_rate")),
           ("spoofchk", ("spoofchk",)), ("trust", ("trust",)), ("link_state", ("link_state",)))
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_U32_UNSET = 0xFFFFFFFF  # the kernel's -1: the driver did not report this setting
TOOL_TIMEOUT = 30.0
REP_WAIT_SECONDS = 10.0
_NL_HINTS = {
    errno.EOPNOTSUPP: "the PF's driver does not support this VF setting",
    errno.EINVAL: "the driver rejected the value (or the VF index)",
    errno.ENODEV: "the interface is gone",
    errno.EPERM: "permission denied (run as root)",
    errno.EBUSY: "the driver refuses while the VF is in use",
    errno.ERANGE: "the value is out of the driver's range",
}


# -- settings ----------------------------------------------------------------------------------------------------
def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "1", "true", "yes"):
        return True
    if text in ("off", "0", "false", "no"):
        return False
    raise UsageError(f"{key}: expected on or off, got {value!r}")


def _int(key: str, value: Any, low: int, high: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not low <= n <= high:
        raise UsageError(f"{key}: {value!r} is out of range ({low}-{high})")
    return n


def normalize_settings(options: dict) -> dict:
    """Validate VF settings {mac, vlan, qos, spoofchk, trust, min_tx_rate, max_tx_rate, link_state}; None values
    are dropped. Returns them normalized (lowercase MAC, ints, bools, link state names). UsageError names the bad
    one."""
    unknown = sorted(set(options) - set(SETTINGS))
    if unknown:
        raise UsageError(f"unknown VF setting {', '.join(unknown)}; use {', '.join(SETTINGS)}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "mac":
            mac = str(value).strip().lower().replace("-", ":")
            if not _MAC_RE.match(mac):
                raise UsageError(f"mac: {value!r} is not a MAC address (52:54:00:12:34:56)")
            if int(mac[:2], 16) & 1:
                raise UsageError(f"mac: {value} is a multicast address; a VF needs a unicast one")
            out[key] = mac
        elif key == "vlan":
            out[key] = _int(key, value, 0, 4095)
        elif key == "qos":
            out[key] = _int(key, value, 0, 7)
        elif key in ("spoofchk", "trust"):
            out[key] = _bool(key, value)
        elif key in ("min_tx_rate", "max_tx_rate"):
            out[key] = _int(key, value, 0, 0xFFFFFFFE)
        elif key == "link_state":
            text = str(value).strip().lower()
            if text.isdigit() and int(text) in _LINK_NAMES:
                text = _LINK_NAMES[int(text)]
            if text not in LINK_STATES:
                raise UsageError(f"link_state: {value!r}; use auto, enable or disable")
            out[key] = text
    if out.get("max_tx_rate") and out.get("min_tx_rate", 0) > out["max_tx_rate"]:
        raise UsageError(f"min_tx_rate {out['min_tx_rate']} is above max_tx_rate {out['max_tx_rate']} (Mbit/s)")
    return out


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
            link_state=_LINK_NAMES.get(link) if link is not None else None,
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
            raise _nl_error(e, f"{ifname}: reading VF settings") from None
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
            raise _nl_error(e, f"{ifname}: {what}") from None


def _errname(code: int) -> str:
    """EOPNOTSUPP, as the kernel's headers call it (Python's errorcode says ENOTSUP, the same number on Linux)."""
    return "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode.get(code, str(code))


def _nl_error(e: Exception, what: str) -> HostError:
    code = getattr(e, "code", None)
    if isinstance(code, int) and code > 0:
        name = _errname(code)
        hint = _NL_HINTS.get(code, os.strerror(code))
        return HostError(f"{what}: {hint} ({name}: {os.strerror(code)}, netlink error {code})")
    return HostError(f"{what}: {e}")


# -- messages ----------------------------------------------------------------------------------------------------
def _spec(index: int, group: str, v: dict) -> dict:
    if group == "mac":
        return {"vf": index, "mac": v["mac"]}
    if group == "vlan":
        return {"vf": index, "vlan": {"vlan": v.get("vlan") or 0, "qos": v.get("qos") or 0}}
    if group == "rate":
        return {"vf": index, "rate": {"min_tx_rate": v.get("min_tx_rate") or 0,
                                      "max_tx_rate": v.get("max_tx_rate") or 0}}
    if group == "link_state":
        return {"vf": index, "link_state": LINK_STATES[v["link_state"]]}
    return {"vf": index, group: int(bool(v[group]))}


def vf_messages(index: int, wanted: dict, current: VfConfig | None) -> list[tuple[str, dict, dict]]:
    """(group, pyroute2 vf dict, prior values of that group) for each group ``wanted`` changes, in a fixed order.
    With ``current`` (the kernel's view) groups already as wanted are left out and missing halves (QoS when only
    the VLAN is given is 0, as `ip` does; the other TX rate) come from it."""
    cur = current.settings() if current is not None else {}
    out = []
    for group, keys in _GROUPS:
        if not any(k in wanted for k in keys):
            continue
        target = {k: wanted[k] for k in keys if k in wanted}
        if group == "vlan":
            if "vlan" not in wanted:
                target["vlan"] = cur.get("vlan")
                if not target["vlan"]:
                    raise UsageError("a QoS priority goes with a VLAN: give the VLAN too (--vlan)")
            target.setdefault("qos", 0)
        elif group == "rate":
            for k in keys:
                target.setdefault(k, cur.get(k) or 0)
        prior = {k: cur.get(k) for k in keys}
        if current is not None and all((cur.get(k) or 0) == (target.get(k) or 0) if group in ("vlan", "rate")
                                       else cur.get(k) == target.get(k) for k in keys):
            continue
        out.append((group, _spec(index, group, target), prior))
    return out


def _restore_messages(index: int, prior: dict) -> tuple[list[tuple[str, dict, dict]], list[str]]:
    """Messages that put ``prior`` back, and the settings that cannot be (the driver did not report them)."""
    msgs, unknown = [], []
    for group, keys in _GROUPS:
        if not any(k in prior for k in keys):
            continue
        lead = keys[0]
        if prior.get(lead) is None and group not in ("rate",):
            unknown.append(lead)
            continue
        msgs.append((group, _spec(index, group, {k: prior.get(k) for k in keys}), {}))
    return msgs, unknown


# -- set / reset -------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class VfResult:
    pf: PfRef
    vf: int
    status: str  # "changed" | "unchanged" | "dry-run" | "restored"
    messages: list[dict] = field(default_factory=list)  # the vf dicts sent, in order
    before: dict | None = None
    after: dict | None = None
    prior: dict = field(default_factory=dict)  # what passthru restores (recorded)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": 1, **self.pf.to_json(), "vf": self.vf, "status": self.status, "messages": self.messages,
                "before": self.before, "after": self.after, "prior": self.prior, "warnings": self.warnings}


def _live_netlink(h: HostRoot, netlink: VfNetlink | None) -> VfNetlink:
    if netlink is not None:
        return netlink
    if not h.is_live:
        raise UsageError(f"{h.base} is not this machine's root: VF settings go to the running kernel (drop --root / "
                         "PASSTHRU_ROOT; --dry-run works on any root)")
    return VfNetlink()


def _check_vf(state: PfState, index: int) -> None:
    if index < 0 or index >= state.numvfs:
        have = f"VFs 0-{state.numvfs - 1}" if state.numvfs else "no VFs (`passthru vf count PF N` makes them)"
        raise UsageError(f"{state.pf}: no VF {index}; it has {have}")
    if state.pf.netdev is None:
        raise UsageError(f"{state.pf}: the PF has no network interface (driver {state.driver or 'none'}); VF "
                         "settings go through the PF's interface, so it needs its host driver")


def set_vf(h: HostRoot, paths: Any, pf_text: str, index: int, options: dict, *, netlink: VfNetlink | None = None,
           dry_run: bool = False, owner: str | None = None) -> VfResult:
    """Apply VF settings (see :func:`normalize_settings`); the prior values of what changes are recorded first and
    kept across later calls, so :func:`reset_vf` returns the VF to how passthru found it."""
    pf = resolve_pf(h, pf_text)
    wanted = normalize_settings(options)
    if not wanted:
        raise UsageError("nothing to set: give --mac, --vlan, --qos, --spoofchk, --trust, --rate-min, --rate-max or "
                         "--link-state")
    state = read_pf(h, pf)
    _check_vf(state, index)
    if dry_run:
        msgs = vf_messages(index, wanted, None)
        return VfResult(pf, index, "dry-run", [m for _, m, _ in msgs])
    nl = _live_netlink(h, netlink)
    store = SriovStore(paths)
    try:
        with store.lock():
            current = nl.vf(pf.netdev, index)
            msgs = vf_messages(index, wanted, current)
            rec = store.vf(pf, index) or {}
            prior = dict(rec.get("prior") or {})
            result = VfResult(pf, index, "unchanged", [m for _, m, _ in msgs], current.settings(), None, prior)
            if not msgs:
                result.after = current.settings()
                return result
            for _, _, p in msgs:
                for k, v in p.items():
                    prior.setdefault(k, v)
            doc = {"prior": prior, "applied": {**(rec.get("applied") or {}), **wanted}, "phase": "applying",
                   "owner": owner or rec.get("owner"), "since": rec.get("since")}
            store.save_vf(pf, index, doc)
            store.audit("vf_set", f"{pf.name} vf {index}", {k: current.settings()[k] for k in wanted}, wanted)
            sent: list[tuple[str, dict, dict]] = []
            try:
                for group, spec, p in msgs:
                    nl.set_vf(pf.netdev, spec, f"setting VF {index} {group} ({ip_words(spec)})")
                    sent.append((group, spec, p))
            except HostError as e:
                undo = _undo(nl, pf, index, sent)
                if rec:
                    store.save_vf(pf, index, rec)
                else:
                    store.drop_vf(pf, index)
                store.audit("vf_set_failed", f"{pf.name} vf {index}", None, None, error=str(e))
                raise HostError(f"{e}; {undo}") from None
            store.save_vf(pf, index, {**doc, "phase": "applied"})
            after = nl.vf(pf.netdev, index)
    finally:
        if netlink is None:
            nl.close()
    result.status, result.after, result.prior = "changed", after.settings(), prior
    result.warnings = [f"{k}: asked {v!r}, the kernel reports {after.settings()[k]!r}"
                       for k, v in wanted.items() if after.settings()[k] is not None and after.settings()[k] != v]
    return result


def ip_words(spec: dict) -> str:
    """A vf dict as the words of `ip link set PF vf N ...` ("mac 52:54:00:12:34:56", "vlan 100 qos 3")."""
    words = []
    for k, v in spec.items():
        if k == "vf":
            continue
        if isinstance(v, dict):
            words += [f"{a} {b}" for a, b in v.items()]
        elif k in ("spoofchk", "trust"):
            words.append(f"{k} {'on' if v else 'off'}")
        elif k == "link_state":
            words.append(f"state {_LINK_NAMES.get(v, v)}")
        else:
            words.append(f"{k} {v}")
    return " ".join(words)



def _undo(nl: VfNetlink, pf: PfRef, index: int, sent: list[tuple[str, dict, dict]]) -> str:
    if not sent:
        return "nothing was changed"
    failed = []
    for group, _, p in reversed(sent):
        msgs, _unknown = _restore_messages(index, p)
        for g, spec, _ in msgs:
            try:
                nl.set_vf(pf.netdev, spec, f"putting VF {index} {g} back")
            except HostError as e:
                failed.append(str(e))
    return ("undoing the settings already made failed too: " + "; ".join(failed)) if failed else \
        f"the settings already made ({', '.join(g for g, _, _ in sent)}) were put back"


def reset_vf(h: HostRoot, paths: Any, pf_text: str, index: int, *, netlink: VfNetlink | None = None,
             prior: dict | None = None, dry_run: bool = False) -> VfResult:
    """Put back the VF settings passthru recorded (or ``prior``, from an assignment record) and drop the record."""
    pf = resolve_pf(h, pf_text)
    store = SriovStore(paths)
    rec = store.vf(pf, index)
    if prior is None:
        if rec is None:
            raise UsageError(f"{pf}: passthru has not changed the settings of VF {index} (no record in {store.dir}); "
                             "nothing to reset")
        prior = rec.get("prior") or {}
    state = read_pf(h, pf)
    _check_vf(state, index)
    msgs, unknown = _restore_messages(index, prior)
    result = VfResult(pf, index, "dry-run", [m for _, m, _ in msgs], prior=prior,
                      warnings=[f"{k}: not restored, the driver did not report it before" for k in unknown])
    if dry_run:
        return result
    nl = _live_netlink(h, netlink)
    try:
        with store.lock():
            before = nl.vf(pf.netdev, index)
            if rec is not None:
                store.save_vf(pf, index, {**rec, "phase": "restoring"})
            store.audit("vf_reset", f"{pf.name} vf {index}", before.settings(), prior)
            errors = []
            for group, spec, _ in msgs:
                try:
                    nl.set_vf(pf.netdev, spec, f"restoring VF {index} {group} ({ip_words(spec)})")
                except HostError as e:
                    errors.append(str(e))
            if errors:
                if rec is not None:
                    store.save_vf(pf, index, {**rec, "phase": "restore-failed", "error": errors[0]})
                raise HostError("; ".join(errors) + f" (the record stays: retry `passthru vf reset {pf.name} {index}`)")
            store.drop_vf(pf, index)
            after = nl.vf(pf.netdev, index)
    finally:
        if netlink is None:
            nl.close()
    result.status, result.before, result.after = "restored", before.settings(), after.settings()
    return result


# -- listing -----------------------------------------------------------------------------------------------------
def list_vfs(h: HostRoot, paths: Any, pf_text: str | None = None, *, netlink: VfNetlink | None = None) -> dict:
    """The VFs of one PF (or of every SR-IOV PF): index, address, driver, the host's interfaces on it, the settings
    from netlink (when this is the live host and the PF has an interface; else sysfs only), representor and whether
    passthru recorded settings for it."""
    from ..sriov import vf_uses

    pfs = [resolve_pf(h, pf_text)] if pf_text else sriov_pfs(h)
    live = netlink is not None or h.is_live
    nl = netlink if netlink is not None else (VfNetlink() if live else None)
    docs = []
    try:
        for pf in pfs:
            state = read_pf(h, pf)
            reps = representors(h, pf)
            recs = SriovStore(paths).vfs(pf)
            source, settings, note = "sysfs", {}, None
            if nl is not None and pf.netdev and state.numvfs:
                try:
                    settings = {c.vf: c.settings() for c in nl.vfs(pf.netdev)}
                    source = "netlink"
                except HostError as e:
                    note = str(e)
            uses = vf_uses(h, paths, state)
            vfs = []
            for v in state.vfs:
                row = {"index": v.index, "address": v.address, "driver": v.driver, "netdevs": list(v.netdevs),
                       **settings.get(v.index, dict.fromkeys(SETTINGS)), "representor": reps.get(v.index),
                       "in_use": "; ".join(uses.get(v.index, [])) or None, "recorded": v.index in recs}
                vfs.append(row)
            docs.append({**pf.to_json(), "driver": state.driver, "numvfs": state.numvfs, "totalvfs": state.totalvfs,
                         "autoprobe": state.autoprobe, "source": source, "note": note, "vfs": vfs})
    finally:
        if netlink is None and nl is not None:
            nl.close()
    return {"schema": 1, "pfs": docs}


# -- devlink: switchdev ------------------------------------------------------------------------------------------
class ToolMissing(HostError):
    """A command-line tool passthru drives is not installed."""


def _run_tool(argv: list[str], timeout: float, install: str) -> tuple[int, str, str]:
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                           check=False)
    except FileNotFoundError:
        raise ToolMissing(f"{argv[0]} not found: {install}") from None
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]}: no answer after {timeout:g} s"
    return p.returncode, p.stdout, p.stderr


def _err(stderr: str, rc: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return "; ".join(lines[-2:]) if lines else f"exit {rc}"


class Devlink:
    """``devlink`` (iproute2) by argument list with a timeout: the eswitch mode of a devlink handle. Tests replace
    :meth:`run`."""

    INSTALL = "install iproute2 (apt-get install iproute2 / dnf install iproute)"

    def __init__(self, timeout: float = TOOL_TIMEOUT) -> None:
        self.timeout = timeout

    def run(self, args: list[str]) -> tuple[int, str, str]:
        return _run_tool(["devlink", *args], self.timeout, self.INSTALL)

    def eswitch_mode(self, handle: str) -> str:
        rc, out, err = self.run(["-j", "dev", "eswitch", "show", handle])
        if rc != 0:
            raise HostError(f"devlink dev eswitch show {handle}: {_err(err, rc)}")
        try:
            doc = json.loads(out)
            mode = doc["dev"][handle]["mode"]
        except (ValueError, KeyError, TypeError):
            m = re.search(r"\bmode (\S+)", out)  # a devlink without JSON output
            if not m:
                raise HostError(f"devlink dev eswitch show {handle}: no mode in its output {out.strip()!r}") from None
            mode = m.group(1)
        return str(mode)

    def set_eswitch_mode(self, handle: str, mode: str) -> None:
        rc, _, err = self.run(["dev", "eswitch", "set", handle, "mode", mode])
        if rc != 0:
            raise HostError(f"devlink dev eswitch set {handle} mode {mode}: {_err(err, rc)}")


def _tool(h: HostRoot, given: Any, make: Callable[[], Any], what: str) -> Any:
    if given is not None:
        return given
    if not h.is_live:
        raise UsageError(f"{h.base} is not this machine's root: {what} acts on the running host (drop --root / "
                         "PASSTHRU_ROOT; --dry-run works on any root)")
    return make()


def switchdev(h: HostRoot, paths: Any, pf_text: str, mode: str = "switchdev", *, force: bool = False,
              dry_run: bool = False, devlink: Devlink | None = None,
              wait_seconds: float = REP_WAIT_SECONDS) -> dict:
    """Set the PF's eswitch mode (recording the prior one) and, for switchdev, wait for one representor per VF."""
    from ..sriov import vfs_in_use

    if mode not in ("switchdev", "legacy"):
        raise UsageError(f"--mode {mode}: use switchdev or legacy")
    pf = resolve_pf(h, pf_text)
    state = read_pf(h, pf)
    doc: dict[str, Any] = {"schema": 1, **pf.to_json(), "numvfs": state.numvfs, "before": None, "after": mode,
                           "status": "dry-run", "command": ["devlink", "dev", "eswitch", "set", pf.devlink, "mode",
                                                            mode], "representors": {}, "missing": [], "warnings": []}
    busy = vfs_in_use(h, paths, state) if state.numvfs else []
    if busy and not force:
        raise UsageError(f"refusing to change the eswitch mode of {pf}: {busy[0]}"
                         f"{f' (and {len(busy) - 1} more)' if len(busy) > 1 else ''}; their traffic would stop until "
                         "the new mode is wired up; stop that use first, or pass --force")
    if dry_run:
        return doc
    dl = _tool(h, devlink, Devlink, "devlink")
    store = SriovStore(paths)
    with store.lock():
        before = dl.eswitch_mode(pf.devlink)
        doc["before"] = before
        if before != mode:
            rec = store.pf(pf) or {}
            new = {**rec, "eswitch": mode, "prior_eswitch": rec.get("prior_eswitch", before),
                   "phase": "eswitch", "since": rec.get("since")}
            if new["prior_eswitch"] == mode:
                new.pop("prior_eswitch")
            store.save_pf(pf, new)
            store.audit("eswitch_mode", pf.name, before, mode)
            dl.set_eswitch_mode(pf.devlink, mode)
            now = dl.eswitch_mode(pf.devlink)
            if now != mode:
                raise HostError(f"{pf}: devlink accepted mode {mode} but reports {now}")
            if "prior_eswitch" in new or "prior_numvfs" in new:
                store.save_pf(pf, {**new, "phase": "done"})
            else:
                store.drop_pf(pf)
            doc["status"] = "changed"
        else:
            doc["status"] = "unchanged"
    want = set(range(state.numvfs)) if mode == "switchdev" else set()
    deadline = time.monotonic() + wait_seconds
    while True:  # switchdev: one representor per VF; legacy: none left
        reps = representors(h, pf)
        if (want <= set(reps) if want else not reps) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    doc["representors"] = {str(k): v for k, v in sorted(reps.items())}
    doc["missing"] = sorted(want - set(reps))
    if doc["missing"]:
        doc["warnings"].append(f"no representor for VF {', '.join(map(str, doc['missing']))} after "
                               f"{wait_seconds:g} s (phys_port_name pf*vfN); see dmesg")
    if mode == "legacy" and reps:
        doc["warnings"].append(f"representors still present after {wait_seconds:g} s: {', '.join(reps.values())}")
    return doc


# -- Open vSwitch ------------------------------------------------------------------------------------------------
class Ovs:
    """``ovs-vsctl`` by argument list with a timeout: ``other_config:hw-offload``. Tests replace :meth:`run`."""

    INSTALL = ("install Open vSwitch (Debian/Ubuntu: apt-get install openvswitch-switch; RHEL/Fedora: "
               "dnf install openvswitch) and start it")

    def __init__(self, timeout: float = TOOL_TIMEOUT) -> None:
        self.timeout = timeout

    def run(self, args: list[str]) -> tuple[int, str, str]:
        return _run_tool(["ovs-vsctl", f"--timeout={int(self.timeout)}", *args], self.timeout + 5, self.INSTALL)

    def hw_offload(self) -> bool:
        rc, out, err = self.run(["--if-exists", "get", "Open_vSwitch", ".", "other_config:hw-offload"])
        if rc != 0:
            raise HostError(f"ovs-vsctl get Open_vSwitch . other_config:hw-offload: {_err(err, rc)} (is "
                            "ovs-vswitchd running? systemctl start openvswitch-switch)")
        return out.strip().strip('"').lower() == "true"

    def set_hw_offload(self, on: bool = True) -> None:
        value = "true" if on else "false"
        rc, _, err = self.run(["set", "Open_vSwitch", ".", f"other_config:hw-offload={value}"])
        if rc != 0:
            raise HostError(f"ovs-vsctl set Open_vSwitch . other_config:hw-offload={value}: {_err(err, rc)}")


OVS_RESTART = "restart Open vSwitch for it to take effect (systemctl restart openvswitch-switch)"


def offload_ovs(h: HostRoot, paths: Any, *, on: bool = True, dry_run: bool = False, ovs: Ovs | None = None) -> dict:
    """Turn Open vSwitch's hardware offload on (or off); idempotent, audited."""
    value = "true" if on else "false"
    doc: dict[str, Any] = {"schema": 1, "setting": "other_config:hw-offload", "before": None, "after": on,
                           "status": "dry-run",
                           "command": ["ovs-vsctl", "set", "Open_vSwitch", ".", f"other_config:hw-offload={value}"],
                           "notes": []}
    if dry_run:
        doc["notes"].append(OVS_RESTART)
        return doc
    o = _tool(h, ovs, Ovs, "ovs-vsctl")
    before = o.hw_offload()
    doc["before"] = before
    if before == on:
        doc["status"] = "unchanged"
        return doc
    SriovStore(paths).audit("ovs_hw_offload", "Open_vSwitch", before, on)
    o.set_hw_offload(on)
    if o.hw_offload() != on:
        raise HostError(f"ovs-vsctl accepted other_config:hw-offload={value} but does not report it")
    doc["status"] = "changed"
    doc["notes"].append(OVS_RESTART)
    if on:
        legacy = [p.name for p in sriov_pfs(h) if read_pf(h, p).numvfs and not representors(h, p)]
        if legacy:
            doc["notes"].append(f"PFs with VFs but no representors ({', '.join(legacy)}): `passthru vf switchdev PF` "
                                "puts them in switchdev mode, which offload needs")
    return doc


# -- doctor ------------------------------------------------------------------------------------------------------
def sriov_findings(h: HostRoot, pf_text: str | None = None, *, devlink: Devlink | None = None,
                   ovs: Ovs | None = None) -> list[Any]:
    """Doctor findings for SR-IOV PFs with VFs (all of them, or one): ``sriov.eswitch`` (mode, via devlink),
    ``sriov.representors`` (one per VF in switchdev mode, by phys_port_name) and ``sriov.ovs_offload`` (Open
    vSwitch hw-offload when a PF is in switchdev mode). Read-only. devlink and ovs-vsctl run only on the live host
    (or when given)."""
    from ..findings import FAIL, PASS, SKIP, WARN, Finding

    states = [read_pf(h, p) for p in ([resolve_pf(h, pf_text)] if pf_text else sriov_pfs(h))]
    states = [s for s in states if s.numvfs]
    if not states:
        return [Finding("sriov.eswitch", "SR-IOV eswitch mode", SKIP, "no SR-IOV PF has VFs",
                        "`passthru vf count PF N` makes VFs")]
    live = h.is_live
    dl = devlink if devlink is not None else (Devlink() if live else None)
    o = ovs if ovs is not None else (Ovs() if live else None)
    offload: bool | None = None
    offload_err: HostError | None = None
    if o is not None:
        try:
            offload = o.hw_offload()
        except HostError as e:
            offload_err = e
    out = []
    any_switchdev = False
    for s in states:
        pf, reps = s.pf, representors(h, s.pf)
        mode, why = None, None
        if dl is None:
            why = "not the live host: the eswitch mode needs devlink on the host itself"
            mode = "switchdev" if reps else None
        else:
            try:
                mode = dl.eswitch_mode(pf.devlink)
            except ToolMissing as e:
                why = str(e)
            except HostError as e:
                why = f"no eswitch on this device ({e})"
        if mode is None:
            out.append(Finding("sriov.eswitch", "SR-IOV eswitch mode", SKIP, f"{pf}: {why}",
                               Devlink.INSTALL if "not found" in (why or "") else None, device=pf.name))
        elif mode == "switchdev":
            any_switchdev = True
            out.append(Finding("sriov.eswitch", "SR-IOV eswitch mode", PASS,
                               f"{pf}: switchdev{' (representors in sysfs)' if dl is None else ''}", device=pf.name))
        elif offload:
            out.append(Finding("sriov.eswitch", "SR-IOV eswitch mode", WARN,
                               f"{pf}: {mode}, but Open vSwitch hw-offload is on (offload needs switchdev)",
                               f"`passthru vf switchdev {pf.name}`", device=pf.name))
        else:
            out.append(Finding("sriov.eswitch", "SR-IOV eswitch mode", PASS,
                               f"{pf}: {mode} (VF MAC/VLAN through the PF: `passthru vf set`; switchdev only for "
                               "OVS offload)", device=pf.name))
        if mode == "switchdev":
            missing = [i for i in range(s.numvfs) if i not in reps]
            shown = ", ".join(f"VF {i} {n}" for i, n in sorted(reps.items())[:4])
            shown += f" and {len(reps) - 4} more" if len(reps) > 4 else ""
            if missing:
                out.append(Finding("sriov.representors", "VF representors", FAIL,
                                   f"{pf}: switchdev mode but no representor (phys_port_name pf*vfN) for VF "
                                   f"{', '.join(map(str, missing))}",
                                   f"check dmesg; `passthru vf switchdev {pf.name} --mode legacy` then switchdev "
                                   "again re-creates them", device=pf.name))
            else:
                out.append(Finding("sriov.representors", "VF representors", PASS,
                                   f"{pf}: {len(reps)} representors ({shown})", device=pf.name))
    if not any_switchdev:
        out.append(Finding("sriov.ovs_offload", "Open vSwitch hardware offload", SKIP,
                           "no PF is in switchdev mode: nothing to offload to"))
    elif o is None:
        out.append(Finding("sriov.ovs_offload", "Open vSwitch hardware offload", SKIP,
                           "not the live host: ovs-vsctl asks the running ovsdb"))
    elif isinstance(offload_err, ToolMissing):
        out.append(Finding("sriov.ovs_offload", "Open vSwitch hardware offload", WARN,
                           "a PF is in switchdev mode but ovs-vsctl is not installed", Ovs.INSTALL))
    elif offload_err is not None:
        out.append(Finding("sriov.ovs_offload", "Open vSwitch hardware offload", WARN, str(offload_err),
                           "start Open vSwitch (systemctl start openvswitch-switch)"))
    elif offload:
        out.append(Finding("sriov.ovs_offload", "Open vSwitch hardware offload", PASS,
                           "other_config:hw-offload=true"))
    else:
        out.append(Finding("sriov.ovs_offload", "Open vSwitch hardware offload", WARN,
                           "a PF is in switchdev mode but Open vSwitch's other_config:hw-offload is not true",
                           f"`passthru vf offload --ovs`, then {OVS_RESTART.split(' (')[0].lower()}"))
    return out


# -- the kind ----------------------------------------------------------------------------------------------------
def vf_of(h: HostRoot, identity: str) -> tuple[PfRef, int]:
    """(PF, VF index) of a VF identity: "pci:0000:3b:00.2" / "0000:3b:00.2" (a PCI VF), or "vf:PF:N" with any PF
    spelling (netdevsim/netdevsim1, enp59s0f0np0) for VFs that are no devices."""
    from ..host.pci import normalize_address

    text = identity.strip()
    if text.startswith("vf:"):
        pf_text, _, n = text[3:].rpartition(":")
        if not pf_text or not n.isdigit():
            raise UsageError(f"{identity!r}: expected vf:PF:INDEX, e.g. vf:netdevsim/netdevsim1:0")
        return resolve_pf(h, pf_text), int(n)
    addr = normalize_address(text[4:] if text.startswith("pci:") else text)
    d = f"{h.sys}/bus/pci/devices/{addr}"
    pf_addr = h.link_name(d + "/physfn")
    if pf_addr is None:
        raise UsageError(f"{addr} is not an SR-IOV VF: VF settings (mac, vlan, trust...) apply to VFs only")
    for name, target in h.walk_links(f"{d}/physfn", "virtfn"):
        if target == addr and name[6:].isdigit():
            return resolve_pf(h, pf_addr), int(name[6:])
    raise HostError(f"{addr}: its PF {pf_addr} has no virtfn link to it")


class NicKind(DeviceKind):
    """NICs: a VF's MAC/VLAN/QoS/spoof check/trust/rates/link state per assignment, put back on release; doctor
    checks of a PF's eswitch and representors."""

    name = "nic"
    hotpluggable = True

    def __init__(self, netlink: VfNetlink | None = None, devlink: Devlink | None = None) -> None:
        self.netlink = netlink
        self.devlink = devlink

    def checks(self, h: HostRoot, device: Any) -> list[Any]:
        fact = getattr(device, "fact", None)
        if fact is None or not getattr(fact, "sriov_numvfs", None):
            return []
        return [f for f in sriov_findings(h, device.id, devlink=self.devlink, ovs=None)
                if f.id != "sriov.ovs_offload"]

    def before_assign(self, h: HostRoot, paths: Any, vm: str, identity: str, options: dict) -> dict | None:
        wanted = normalize_settings(options or {})
        if not wanted:
            return None
        pf, index = vf_of(h, identity)
        res = set_vf(h, paths, pf.devlink, index, wanted, netlink=self.netlink, owner=f"VM {vm}")
        return {"pf": pf.devlink, "vf": index, "prior": res.prior, "applied": wanted}

    def after_release(self, h: HostRoot, paths: Any, vm: str, identity: str, prior: dict | None) -> None:
        if not prior or not prior.get("prior"):
            return None
        reset_vf(h, paths, prior["pf"], int(prior["vf"]), netlink=self.netlink, prior=prior["prior"])
        return None

    def abandon(self, h: HostRoot, paths: Any, vm: str, identity: str) -> None:
        """set_vf journals the prior settings (owner "VM <vm>") before it changes anything: reset from that."""
        try:
            pf, index = vf_of(h, identity)
        except PassthruError:
            return None  # the VF is gone: nothing to put back
        rec = SriovStore(paths).vf(pf, index)
        if rec is not None and rec.get("owner") == f"VM {vm}":
            reset_vf(h, paths, pf.devlink, index, netlink=self.netlink)
        return None


register(NicKind())
