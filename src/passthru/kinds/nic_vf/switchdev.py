"""switchdev and Open vSwitch offload: ``devlink dev eswitch set <handle> mode switchdev|legacy`` (every VF then gets a
representor interface on the host, recognised by its ``phys_port_name`` ``pfNvfM``) and OVS's
``other_config:hw-offload=true`` (takes effect after an OVS restart), through ``writers/tools.py``."""

from __future__ import annotations

import time
from typing import Any, Callable

from ...errors import HostError, UsageError
from ...host.root import HostRoot
from ...host.sriov import read_pf, representors, resolve_pf, sriov_pfs
from ...writers.tools import Devlink, Ovs
from .records import SriovStore
from .vfcount import vfs_in_use

__all__ = ["switchdev", "offload_ovs", "OVS_RESTART", "REP_WAIT_SECONDS"]

REP_WAIT_SECONDS = 10.0


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
