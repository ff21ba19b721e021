"""VF settings: MAC, VLAN with its QoS priority, spoof check, trust, min/max TX rate (Mbit/s), link state.

Each setting is one netlink message (``writers/netlink.py``); before the first, the VF's current settings are read
(RTEXT_FILTER_VF) and recorded as its prior state (``<state>/sriov/<pf>.vf<N>.json``, journal first), so
``passthru vf reset`` - or releasing the VM (:meth:`NicKind.after_release`) - puts exactly those back. If a message
fails, the ones already sent are undone and the error names the setting and the kernel's reason (EOPNOTSUPP: the PF's
driver has no such VF operation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ...errors import HostError, UsageError
from ...host.root import HostRoot
from ...host.sriov import PfRef, PfState, read_pf, representors, resolve_pf, sriov_pfs
from ...writers.netlink import LINK_NAMES, LINK_STATES, SETTINGS, VfConfig, VfNetlink
from .records import SriovStore
from .vfcount import vf_uses

__all__ = ["SETTINGS", "LINK_STATES", "VfResult", "normalize_settings", "vf_messages", "ip_words", "set_vf",
           "reset_vf", "list_vfs"]

# one netlink message per group, in this order; a group's keys are set (and restored) together
_GROUPS = (("mac", ("mac",)), ("vlan", ("vlan", "qos")), ("rate", ("min_tx_rate", "max_tx_rate")),
           ("spoofchk", ("spoofchk",)), ("trust", ("trust",)), ("link_state", ("link_state",)))
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


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
            if text.isdigit() and int(text) in LINK_NAMES:
                text = LINK_NAMES[int(text)]
            if text not in LINK_STATES:
                raise UsageError(f"link_state: {value!r}; use auto, enable or disable")
            out[key] = text
    if out.get("max_tx_rate") and out.get("min_tx_rate", 0) > out["max_tx_rate"]:
        raise UsageError(f"min_tx_rate {out['min_tx_rate']} is above max_tx_rate {out['max_tx_rate']} (Mbit/s)")
    return out


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
            words.append(f"state {LINK_NAMES.get(v, v)}")
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
