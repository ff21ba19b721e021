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

    settings.py    VF settings over netlink (set, reset, list), recorded and undone
    vfcount.py     the VF count (``passthru vf count``): refusals, records, rollback
    switchdev.py   eswitch mode (devlink) and Open vSwitch hw-offload
    checks.py      doctor findings
    records.py     ``<state>/sriov/`` records (prior VF count, eswitch mode, VF settings)

Facts are ``host/sriov.py``; the writers ``writers/sriov.py`` (sriov_numvfs), ``writers/netlink.py`` (VF settings),
``writers/tools.py`` (devlink, ovs-vsctl). The netlink, devlink and ovs-vsctl boundaries are injectable, so fixture trees test every path; the real-kernel lab
runs them against netdevsim.
"""

from __future__ import annotations

from ...host.root import HostRoot
from ...config import Paths
from ...discovery import Device
from ...errors import HostError, PassthruError, UsageError
from ...identity import pci_address
from ...findings import Finding
from ...host.pci import normalize_address
from ...host.sriov import PfRef, resolve_pf
from ...writers.netlink import VfConfig, VfNetlink, parse_vfinfo
from ...writers.tools import Devlink, Ovs, ToolMissing
from ..base import DeviceKind, register
from .checks import sriov_findings
from .records import SriovStore
from .settings import (LINK_STATES, SETTINGS, VfResult, ip_words, list_vfs, normalize_settings, reset_vf, set_vf,
                       vf_messages)
from .switchdev import offload_ovs, switchdev

__all__ = ["VfConfig", "VfNetlink", "Devlink", "Ovs", "NicKind", "VfResult", "SETTINGS", "LINK_STATES",
           "normalize_settings", "vf_messages", "ip_words", "parse_vfinfo", "ToolMissing", "set_vf", "reset_vf", "list_vfs", "switchdev", "offload_ovs",
           "sriov_findings", "vf_of"]


# -- the kind ----------------------------------------------------------------------------------------------------
def vf_of(h: HostRoot, identity: str) -> tuple[PfRef, int]:
    """(PF, VF index) of a VF identity: "pci:0000:3b:00.2" / "0000:3b:00.2" (a PCI VF), or "vf:PF:N" with any PF
    spelling (netdevsim/netdevsim1, enp59s0f0np0) for VFs that are no devices."""
    text = identity.strip()
    if text.startswith("vf:"):
        pf_text, _, n = text[3:].rpartition(":")
        if not pf_text or not n.isdigit():
            raise UsageError(f"{identity!r}: expected vf:PF:INDEX, e.g. vf:netdevsim/netdevsim1:0")
        return resolve_pf(h, pf_text), int(n)
    addr = normalize_address(pci_address(text) or text)
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

    def checks(self, h: HostRoot, device: Device) -> list[Finding]:
        fact = getattr(device, "fact", None)
        if fact is None or not getattr(fact, "sriov_numvfs", None):
            return []
        return [f for f in sriov_findings(h, device.id, devlink=self.devlink, ovs=None)
                if f.id != "sriov.ovs_offload"]

    def before_assign(self, h: HostRoot, paths: Paths, vm: str, identity: str, options: dict) -> dict | None:
        wanted = normalize_settings(options or {})
        if not wanted:
            return None
        pf, index = vf_of(h, identity)
        res = set_vf(h, paths, pf.devlink, index, wanted, netlink=self.netlink, owner=f"VM {vm}")
        return {"pf": pf.devlink, "vf": index, "prior": res.prior, "applied": wanted}

    def after_release(self, h: HostRoot, paths: Paths, vm: str, identity: str, prior: dict | None) -> None:
        if not prior or not prior.get("prior"):
            return None
        reset_vf(h, paths, prior["pf"], int(prior["vf"]), netlink=self.netlink, prior=prior["prior"])
        return None

    def abandon(self, h: HostRoot, paths: Paths, vm: str, identity: str) -> None:
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
