"""The NIC kind's doctor findings: ``sriov.eswitch``, ``sriov.representors`` and ``sriov.ovs_offload`` for the PFs
that have VFs."""

from __future__ import annotations

from typing import Any

from ...errors import HostError
from ...findings import FAIL, PASS, SKIP, WARN, Finding
from ...host.root import HostRoot
from ...host.sriov import read_pf, representors, resolve_pf, sriov_pfs
from ...writers.tools import Devlink, Ovs, ToolMissing
from .switchdev import OVS_RESTART

__all__ = ["sriov_findings"]


# -- doctor ------------------------------------------------------------------------------------------------------
def sriov_findings(h: HostRoot, pf_text: str | None = None, *, devlink: Devlink | None = None,
                   ovs: Ovs | None = None) -> list[Any]:
    """Doctor findings for SR-IOV PFs with VFs (all of them, or one): ``sriov.eswitch`` (mode, via devlink),
    ``sriov.representors`` (one per VF in switchdev mode, by phys_port_name) and ``sriov.ovs_offload`` (Open
    vSwitch hw-offload when a PF is in switchdev mode). Read-only. devlink and ovs-vsctl run only on the live host
    (or when given)."""
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
