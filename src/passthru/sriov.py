"""SR-IOV PFs and their VF count: the one writer of ``sriov_numvfs`` and ``sriov_drivers_autoprobe``.

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

import errno
import json
import os
import re
import time
from dataclasses import dataclass, field

from .config import Paths
from .errors import HostError, NotFoundError, UsageError
from .host.pci import normalize_address
from .host.root import HostRoot
from .statefs import FileLock, caller, fsync_dir, read_record, write_atomic
from .vfio.kernel import Kernel

__all__ = ["PfRef", "VfEntry", "PfState", "SriovKernel", "SriovStore", "CountResult", "resolve_pf", "read_pf",
           "representors", "vf_uses", "vfs_in_use", "count_vfs", "sriov_pfs", "REP_RE"]

# phys_port_name of a VF representor: "pf0vf3" (mlx5, ice, netdevsim), "c1pf0vf3" (multi-host controllers)
REP_RE = re.compile(r"^(?:c\d+)?pf(\d+)vf(\d+)$")
_SF_RE = re.compile(r"^(?:c\d+)?pf\d+sf\d+$")
_SCHEMA = 1
WAIT_SECONDS = 30.0  # creating 64 VFs (each probed by its driver with autoprobe on) takes seconds on real NICs

_NUMVFS_HINTS = {
    errno.EBUSY: "the PF already has VFs, or they are in use",
    errno.ENOENT: "the PF's driver does not support SR-IOV configuration (or no driver is bound to it)",
    errno.ENOMEM: "more VFs than the device allows",
    errno.ERANGE: "more VFs than the device allows",
    errno.ENOSPC: "not enough resources (bus numbers, MMIO space, firmware VF limit) for that many VFs",
    errno.EINVAL: "the kernel rejected the value",
    errno.EPERM: "permission denied (run as root)",
    errno.EACCES: "permission denied (run as root)",
    errno.EOPNOTSUPP: "the PF's driver does not support SR-IOV configuration",
}


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


# -- records -----------------------------------------------------------------------------------------------------
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SriovStore:
    """Records under ``<state>/sriov/``: ``<pf>.json`` (prior VF count, autoprobe, eswitch mode of a PF passthru
    changed) and ``<pf>.vf<N>.json`` (prior settings of a VF passthru configured). Written atomically, before the
    host is touched; audit lines go to the shared ``<state>/audit.log``."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.dir = os.path.join(paths.state_dir, "sriov")

    def lock(self) -> FileLock:
        return FileLock(os.path.join(self.paths.state_dir, "sriov.lock"), "SR-IOV change (passthru vf ...)")

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name + ".json")

    def _load(self, name: str) -> dict | None:
        return read_record(self._path(name), "move it away and retry")

    def _save(self, name: str, doc: dict) -> dict:
        doc = {"schema": _SCHEMA, **doc, "since": doc.get("since") or _now(), "by": doc.get("by") or caller()}
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        write_atomic(self._path(name), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), 0o600)
        return doc

    def _drop(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            return
        fsync_dir(self.dir)

    def pf(self, pf: PfRef) -> dict | None:
        return self._load(pf.key)

    def save_pf(self, pf: PfRef, doc: dict) -> dict:
        return self._save(pf.key, {**doc, **pf.to_json()})

    def drop_pf(self, pf: PfRef) -> None:
        self._drop(pf.key)

    def vf(self, pf: PfRef, index: int) -> dict | None:
        return self._load(f"{pf.key}.vf{index}")

    def save_vf(self, pf: PfRef, index: int, doc: dict) -> dict:
        return self._save(f"{pf.key}.vf{index}", {**doc, **pf.to_json(), "vf": index})

    def drop_vf(self, pf: PfRef, index: int) -> None:
        self._drop(f"{pf.key}.vf{index}")

    def vfs(self, pf: PfRef) -> dict[int, dict]:
        """VF index -> its settings record, for one PF."""
        out = {}
        prefix = pf.key + ".vf"
        for name in sorted(_listdir(self.dir)):
            if name.startswith(prefix) and name.endswith(".json") and name[len(prefix):-5].isdigit():
                doc = self._load(name[:-5])
                if doc is not None:
                    out[int(name[len(prefix):-5])] = doc
        return out

    def audit(self, action: str, device: str, before: object, after: object, **extra: object) -> None:
        from .vfio.state import Store

        Store(self.paths).audit(action, device, before, after, **extra)


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


# -- in use ------------------------------------------------------------------------------------------------------
def vf_uses(h: HostRoot, paths: Paths, state: PfState) -> dict[int, list[str]]:
    """VF index -> why destroying (or re-plumbing) it would hurt: bound to vfio-pci (probably in a VM), used by the
    host (host/usage.py: addresses, routes, mounts, consoles), held by ``passthru bind``, or carrying settings
    passthru applied. VFs with nothing known are left out."""
    from .host.iommu import is_vfio_driver
    from .host.usage import host_uses
    from .vfio.state import Store

    out: dict[int, list[str]] = {}
    addrs = [v.address for v in state.vfs if v.address]
    uses = host_uses(h, addrs) if addrs else {}
    held = Store(paths)
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


# -- the writer --------------------------------------------------------------------------------------------------
class SriovKernel(Kernel):
    """The sysfs writes of SR-IOV, one write each: ``sriov_numvfs`` and ``sriov_drivers_autoprobe``. Tests
    replace :meth:`Kernel.write` (the fake creates and removes VFs in a fixture tree)."""

    def _sriov_write(self, path: str, data: str, what: str) -> None:
        try:
            self.write(path, data)
        except OSError as e:
            hint = _NUMVFS_HINTS.get(e.errno or 0, e.strerror or str(e))
            name = "EOPNOTSUPP" if e.errno == errno.EOPNOTSUPP else errno.errorcode.get(e.errno or 0, str(e.errno))
            raise HostError(f"{what}: {hint} ({name}: {os.strerror(e.errno) if e.errno else e})") from None

    def set_numvfs(self, pf: PfRef, n: int) -> None:
        self._sriov_write(pf.path + "/sriov_numvfs", str(n), f"{pf}: writing {n} to sriov_numvfs")

    def set_autoprobe(self, pf: PfRef, on: bool) -> None:
        self._sriov_write(pf.path + "/sriov_drivers_autoprobe", "1" if on else "0",
                          f"{pf}: writing {int(on)} to sriov_drivers_autoprobe")

    def numvfs_of(self, pf: PfRef) -> int | None:
        return self.h.read_int(pf.path + "/sriov_numvfs")

    def wait_numvfs(self, pf: PfRef, n: int) -> None:
        """Until the PF reports ``n`` VFs and, on PCI, exactly ``n`` virtfn links exist."""
        def done() -> bool:
            if self.numvfs_of(pf) != n:
                return False
            return pf.bus != "pci" or sum(1 for _ in self.h.walk_links(pf.path, "virtfn")) == n
        self.wait_for(done, f"{pf}: waiting for {n} VFs")


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
