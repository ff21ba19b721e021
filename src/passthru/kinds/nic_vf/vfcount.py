"""SR-IOV PFs and their VF count: ``passthru vf count`` (the writes are ``writers/sriov.py``'s).

A PF is named the way an operator knows it (:func:`resolve_pf`): a PCI address (``0000:3b:00.0``, ``3b:00.0``), a
network interface of the PF (``enp59s0f0np0``), a devlink handle (``pci/0000:3b:00.0``, ``netdevsim/netdevsim1``) or
a device name on another bus (``netdevsim1``). Whatever the spelling, a PF is a device directory with
``sriov_numvfs``; PCI is not assumed (netdevsim's PFs live on the netdevsim bus, and its VFs are indices without
devices of their own).

Counting (:func:`count_vfs`) is the kernel's two-step: a PF goes from N to M VFs only through 0 (the kernel answers
EBUSY otherwise), so passthru writes 0, waits until the VFs are gone, writes M and waits until M VFs exist, each wait
bounded. With ``autoprobe=False`` it first writes 0 to ``sriov_drivers_autoprobe``, so new VFs meant for VMs come up
without a host driver. Refused (nothing written): more than ``sriov_totalvfs``; destroying VFs that are in use (bound
to vfio-pci, carrying host addresses or mounts, held by ``passthru bind``, or with VF settings passthru applied)
unless ``force``. Journal first: the PF's prior count and autoprobe go to ``<state>/sriov/<pf>.json`` before the
first write (and stay there until the PF is back to them: ``restore=True`` puts them back); every write is a line in
``<state>/audit.log``.

VF settings (MAC, VLAN, trust...), switchdev and Open vSwitch offload are in :mod:`passthru.kinds.nic_vf`; their
records live next to these (:class:`SriovStore`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import Paths
from ...errors import HostError, UsageError
from ...host.iommu import is_vfio_driver
from ...host.root import HostRoot
from ...host.sriov import PfRef, PfState, read_pf, resolve_pf
from ...host.usage import host_uses
from ...vfio.state import Holdings
from ...writers.sriov import SriovKernel
from .records import SriovStore

__all__ = ["CountResult", "count_vfs", "vf_uses", "vfs_in_use", "WAIT_SECONDS"]

WAIT_SECONDS = 30.0  # creating 64 VFs (each probed by its driver with autoprobe on) takes seconds on real NICs


# -- in use ------------------------------------------------------------------------------------------------------
def vf_uses(h: HostRoot, paths: Paths, state: PfState) -> dict[int, list[str]]:
    """VF index -> why destroying (or re-plumbing) it would hurt: bound to vfio-pci (probably in a VM), used by the
    host (host/usage.py: addresses, routes, mounts, consoles), held by ``passthru bind``, or carrying settings
    passthru applied. VFs with nothing known are left out."""
    out: dict[int, list[str]] = {}
    addrs = [v.address for v in state.vfs if v.address]
    uses = host_uses(h, addrs) if addrs else {}
    held = Holdings(paths)
    for v in state.vfs:
        why: list[str] = []
        if v.address is not None:
            if is_vfio_driver(v.driver):
                why.append(f"bound to {v.driver} (probably in a VM)")
            why += [u.detail for u in uses.get(v.address, [])]
            if held.get(v.address) is not None:
                why.append(f"held by passthru bind (`passthru restore {v.address}`)")
        if why:
            out[v.index] = why
    for idx, rec in sorted(SriovStore(paths).vfs(state.pf).items()):
        owner = rec.get("owner") or "passthru vf set"
        out.setdefault(idx, []).append(f"has settings from {owner} (`passthru vf reset {state.pf.name} {idx}` puts "
                                       "them back)")
    return out


def vfs_in_use(h: HostRoot, paths: Paths, state: PfState) -> list[str]:
    """:func:`vf_uses` as sentences ("VF 4 (0000:3b:00.6) is bound to vfio-pci ..."); empty: nothing known."""
    addr = {v.index: v.address for v in state.vfs}
    return [f"VF {i}{f' ({addr[i]})' if addr.get(i) else ''} {'is ' if w.startswith(('bound', 'held')) else ''}{w}"
            for i, why in sorted(vf_uses(h, paths, state).items()) for w in why]


@dataclass(slots=True)
class CountResult:
    pf: PfRef
    before: int
    after: int
    autoprobe_before: bool | None
    autoprobe_after: bool | None
    status: str  # "changed" | "unchanged" | "dry-run"
    steps: list[str] = field(default_factory=list)  # the writes, in order ("sriov_numvfs=0")
    vfs: list[str] = field(default_factory=list)  # VF addresses after (PCI)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": 1, **self.pf.to_json(), "status": self.status, "before": self.before,
                "after": self.after, "autoprobe_before": self.autoprobe_before,
                "autoprobe_after": self.autoprobe_after, "steps": self.steps, "vfs": self.vfs,
                "warnings": self.warnings}


def count_vfs(h: HostRoot, paths: Paths, pf_text: str, n: int | None, *, force: bool = False,
              autoprobe: bool | None = None, restore: bool = False, dry_run: bool = False,
              kernel: SriovKernel | None = None) -> CountResult:
    """Set the PF's VF count to ``n`` (through 0), or with ``restore`` back to what passthru first found. See the
    module docstring for the refusals; raises UsageError (exit 2, nothing written) or HostError (a write failed)."""
    pf = resolve_pf(h, pf_text)
    state = read_pf(h, pf)
    store = SriovStore(paths)
    rec = store.pf(pf) or {}
    if restore:
        if n is not None:
            raise UsageError("give a VF count or --restore, not both")
        if "prior_numvfs" not in rec:
            raise UsageError(f"{pf}: passthru has not changed its VF count (no record in {store.dir}); nothing to "
                             "restore")
        n, autoprobe = int(rec["prior_numvfs"]), rec.get("prior_autoprobe")
    if n is None:
        raise UsageError("give the number of VFs (0 removes them all), or --restore")
    if n < 0:
        raise UsageError(f"{n}: the VF count cannot be negative")
    if state.totalvfs is not None and n > state.totalvfs:
        raise UsageError(f"{pf}: {n} VFs asked, the device supports at most {state.totalvfs} (sriov_totalvfs)")
    if autoprobe is not None and state.autoprobe is None:
        raise UsageError(f"{pf}: no sriov_drivers_autoprobe on this {pf.bus} device; drop --autoprobe")
    writes: list[tuple[str, int]] = []
    if autoprobe is not None and autoprobe != state.autoprobe:
        writes.append(("sriov_drivers_autoprobe", int(autoprobe)))
    if n != state.numvfs:
        if state.numvfs:
            writes.append(("sriov_numvfs", 0))
        if n:
            writes.append(("sriov_numvfs", n))
    result = CountResult(pf, state.numvfs, n, state.autoprobe,
                         state.autoprobe if autoprobe is None else autoprobe, "unchanged",
                         [f"{a}={v}" for a, v in writes], [v.address for v in state.vfs if v.address])
    if n != state.numvfs and state.numvfs:
        busy = vfs_in_use(h, paths, state)
        if busy and not force:
            more = f" (and {len(busy) - 1} more)" if len(busy) > 1 else ""
            raise UsageError(f"refusing to change the VF count of {pf}: its {state.numvfs} VFs would be destroyed "
                             f"and {busy[0]}{more}; stop that use first, or pass --force")
        result.warnings += [f"in use, destroyed anyway (--force): {b}" for b in busy]
    if not writes:
        if restore:
            with store.lock():
                store.drop_pf(pf)
        return result
    if dry_run:
        result.status = "dry-run"
        return result
    k = kernel or SriovKernel(h, wait_seconds=WAIT_SECONDS)
    k.require_live()
    with store.lock():
        rec = store.pf(pf) or {}
        prior = {"prior_numvfs": rec.get("prior_numvfs", state.numvfs),
                 "prior_autoprobe": rec.get("prior_autoprobe", state.autoprobe)}
        store.save_pf(pf, {**rec, **prior, "numvfs": n, "autoprobe": result.autoprobe_after, "phase": "counting",
                           "since": rec.get("since")})
        store.audit("sriov_count", pf.name, {"numvfs": state.numvfs, "autoprobe": state.autoprobe},
                    {"numvfs": n, "autoprobe": result.autoprobe_after}, steps=result.steps)
        done: list[tuple[str, int]] = []
        try:
            for attr, value in writes:
                if attr == "sriov_drivers_autoprobe":
                    k.set_autoprobe(pf, bool(value))
                else:
                    k.set_numvfs(pf, value)
                    k.wait_numvfs(pf, value)
                    if value == 0:
                        _drop_vf_records(store, pf)
                done.append((attr, value))
        except HostError as e:
            note = _roll_back(k, pf, state, done)
            now = read_pf(h, pf)
            store.save_pf(pf, {**prior, "numvfs": now.numvfs, "autoprobe": now.autoprobe, "phase": "failed",
                               "error": str(e), "since": rec.get("since")})
            store.audit("sriov_count_failed", pf.name, None, {"numvfs": now.numvfs}, error=str(e))
            raise HostError(f"{e}; {note}") from None
        if n == prior["prior_numvfs"] and result.autoprobe_after == prior["prior_autoprobe"] \
                and "prior_eswitch" not in rec:
            store.drop_pf(pf)  # back to what passthru found: nothing left to remember
        else:
            store.save_pf(pf, {**rec, **prior, "numvfs": n, "autoprobe": result.autoprobe_after, "phase": "done",
                               "since": rec.get("since")})
    after = read_pf(h, pf)
    result.status = "changed"
    result.vfs = [v.address for v in after.vfs if v.address]
    return result


def _drop_vf_records(store: SriovStore, pf: PfRef) -> None:
    """The PF's VFs are gone: settings recorded for them describe VFs that no longer exist (new VFs start from
    the driver's defaults)."""
    for idx in store.vfs(pf):
        store.drop_vf(pf, idx)
        store.audit("vf_record_dropped", f"{pf.name} vf {idx}", None, None, reason="VFs destroyed (VF count)")


def _roll_back(k: SriovKernel, pf: PfRef, state: PfState, done: list[tuple[str, int]]) -> str:
    """After a failed write: put the prior VF count back (new VFs, same count) and the prior autoprobe. Returns a
    sentence saying where the PF is now."""
    notes = []
    try:
        if any(a == "sriov_drivers_autoprobe" for a, _ in done):  # first: recreated VFs probe as they did
            k.set_autoprobe(pf, bool(state.autoprobe))
            notes.append("autoprobe as before")
        if any(a == "sriov_numvfs" for a, _ in done) or k.numvfs_of(pf) != state.numvfs:
            if k.numvfs_of(pf):
                k.set_numvfs(pf, 0)
                k.wait_numvfs(pf, 0)
            if state.numvfs:
                k.set_numvfs(pf, state.numvfs)
                k.wait_numvfs(pf, state.numvfs)
            notes.append(f"back to {state.numvfs} VFs")
    except HostError as e2:
        return f"putting the prior state back failed too ({e2}); the PF has {k.numvfs_of(pf)} VFs now"
    return ("the PF is " + " and ".join(notes)) if notes else "nothing was changed"
