"""Assigning devices to VMs: specs -> inventory identities -> atomic claims -> vfio-pci takeover of PCI groups.

The store decides who holds what (never two VMs); the takeover moves PCI devices to vfio-pci. An assignment is
all-or-nothing: when a claim or a bind fails, what this call claimed is released and what it bound is given back.

    res = assign(session, "vm1", ["gpu", "usb:1-1.3"], numa=1)
    release(session, "vm1")
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field

from ..config import BUILTIN_KINDS
from ..discovery import Inventory
from ..errors import NotFoundError, PassthruError, UsageError
from ..failpoints import hit
from ..host.iommu import is_vfio_driver
from ..identity import parse as parse_identity
from ..identity import pci_address
from ..inventory.records import records_from
from ..inventory.spec import Spec, parse_spec
from ..inventory.store import Assignment, ClaimError, Store
from ..journal import journal_for
from ..kinds import kind_for
from ..kinds import serial as serial_kind
from ..kinds import usb as usb_kind
from ..names import check_uuid, check_vm
from ..vfio import Holdings
from ..vfio import bind as vfio_bind
from ..vfio import restore as vfio_restore
from ..vfio.plan import check_whole, plan_bind
from .kind_state import configure_vfs as _configure_vfs
from .kind_state import hook_path as _hook_path  # reconcile and the dry runs import these from here
from .kind_state import undo_kind as _undo_kind
from .session import Session
from .together import choose_together, host_use

__all__ = ["AssignResult", "open_store", "sync", "assign", "pci_addresses", "undo_assign", "assignment_json",
           "group_identities"]


@dataclass(slots=True)
class AssignResult:
    vm: str
    assignments: list[Assignment] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)  # PCI addresses this call moved (dry run: would move) to vfio-pci
    dry_run: bool = False
    moves: dict[str, str | None] = field(default_factory=dict)  # dry run: address -> its driver now
    vfs: list[str] = field(default_factory=list)  # dry run: VFs whose settings would be set

    def to_json(self) -> dict:
        """A dry run's assignments have no id (the rehearsal that made them was rolled back)."""
        rows = [assignment_json(a) | ({"id": None} if self.dry_run else {}) for a in self.assignments]
        doc = {"schema": 1, "vm": self.vm, "assignments": rows, "bound": self.bound}
        return doc | {"dry_run": True, "vf_settings": self.vfs} if self.dry_run else doc


def assignment_json(a: Assignment) -> dict:
    return {"id": a.id, "vm": a.vm, "vm_uuid": a.vm_uuid, "device": a.device, "state": a.state,
            "created": a.created, "updated": a.updated, "released": a.released}


def open_store(s: Session, dry_run: bool = False) -> Store:
    """The inventory; for a dry run, one that never creates its database (a missing one reads as empty)."""
    return Store(paths=s.paths, create=not dry_run)


def sync(s: Session, store: Store) -> Inventory:
    """Discover the host, mirror models.toml into the store and record what is present (and what went missing)."""
    inv = s.inventory()
    have = {m["name"]: m for m in store.models()}
    for m in s.models():
        old = have.pop(m.name, None)
        if old and (old["vendor_id"], old["device_id"], old["kind"]) == (m.vendor_id, m.device_id, m.kind):
            continue
        if old:
            store.remove_model(m.name, force=True)
        store.add_model(m.name, m.vendor_id, m.device_id, m.kind, m.description)
    for name in have:
        store.remove_model(name, force=True)
    out = store.sync_devices(records_from(inv))
    for action, identity, vm, detail in usb_kind.replaced_audits(out["replaced"]):
        store.audit(action, identity, vm, detail)  # a held USB port whose device changed is remembered
    return inv


def _kind_refusals(s: Session, store: Store, inv: Inventory, vm: str, idents: list[str], *,
                   attach: bool = False) -> None:
    """Refusals that depend on the host right now (kinds/serial.py, kinds/usb.py): a serial port another process
    holds open (a getty), a USB port whose device changed since the VM got it, a USB serial adapter given two
    ways. Run before anything is claimed; UsageError (exit 2) names the process or the change."""
    if not any(i.startswith(("serial:", "usb:")) for i in idents):
        return
    holders = {d["identity"]: d["vm"] for d in store.devices()}
    mine = {a.device: a for a in store.assignments(vm)}

    def changed(ident: str) -> tuple[str, str] | None:
        held = mine.get(ident)
        return None if held is None else usb_kind.replaced_change(
            store.audit_details(usb_kind.REPLACED, ident, vm, held.created))

    usb_kind.check_assign(inv, holders, changed, vm, idents)
    serial_kind.check_assign(s.host, inv, holders, vm, idents,
                             states={i: a.state for i, a in mine.items()} if attach else None)


def pci_addresses(identities: list[str]) -> list[str]:
    return [a for i in identities if (a := pci_address(i))]


def group_identities(inv: Inventory, address: str) -> list[str]:
    """The device and the other endpoints of its IOMMU group: they go to a VM together."""
    mates = [f.address for f in inv.group_mates(address) if not f.is_bridge]
    return [f"pci:{a}" for a in [address, *sorted(mates)]]


def _resolve(inv: Inventory, store: Store, spec: Spec) -> list[str]:
    """Identities a direct spec names (a PCI address brings its group); [] for specs that pick a free device."""
    if spec.form == "pci":
        fn = inv.pci_function(spec.value)
        if fn is None:
            raise NotFoundError(f"{spec.value}: no such PCI device on this host (`passthru devices` lists them)")
        if fn.is_bridge:
            raise UsageError(f"{spec.value} is a PCI bridge/port: assign the devices behind it")
        return group_identities(inv, spec.value)
    if spec.form in ("usb-port", "serial", "mdev"):
        ident = spec.identity
        known = {d["identity"]: d for d in store.devices()}
        if ident not in known:
            why = ""
            if spec.form == "serial":
                port = next((p for p in inv.serial if p.device == spec.value), None)
                if port is not None and port.console:
                    why = f": {spec.value} is a console of this host and is never offered"
                elif port is not None and port.ghost:
                    why = f": {spec.value} has no UART behind it (a ghost port)"
            if spec.form == "usb-port" and spec.value.startswith("usb"):
                why = ": root hubs are never offered"
            raise NotFoundError(f"{spec.text}: not an assignable device on this host{why}"
                                + ("" if why else " (`passthru devices` lists them)"))
        return [ident]
    return []


def _pick(store: Store, inv: Inventory, vm: str, spec: Spec, models: set[str], numa: int | None, policy: str,
          vm_uuid: str | None, op: dict | None = None) -> Assignment:
    if spec.form == "usb-id":
        vid, pid, *serial = spec.value.split(":", 2)
        cands = [d for d in store.devices(kind="usb", state="present")
                 if (d["vendor_id"], d["device_id"]) == (int(vid, 16), int(pid, 16))
                 and (not serial or d["serial"] == serial[0])]
        if not cands:
            raise NotFoundError(f"{spec.text}: no such USB device is plugged in (`passthru usb` lists them)")
        last: ClaimError | None = None
        for d in cands:
            try:
                return store.claim(vm, [d["identity"]], vm_uuid=vm_uuid, op=op)[0]
            except ClaimError as e:
                last = e
        assert last is not None
        raise ClaimError(f"no free device for {spec.text}: {last}")
    if spec.value in models:
        by = {"model": spec.value}
    elif spec.value in BUILTIN_KINDS or spec.value in {d["kind"] for d in store.devices()}:
        by = {"kind": spec.value}
    else:
        raise UsageError(f"{spec.text!r} is neither a device kind ({', '.join(BUILTIN_KINDS)}) nor a model "
                     "(`passthru model list`)")
    # a device the host uses (a mounted disk, a NIC with an address, its console) is never picked: hold each such
    # pick aside while asking again, then let go of them
    aside: list[tuple[Assignment, str]] = []
    try:
        while True:
            try:
                a = store.claim_any(vm, numa=numa, numa_policy=policy, vm_uuid=vm_uuid, op=op, **by)
            except ClaimError as e:
                if aside:
                    why = "; ".join(f"{parse_identity(x.device).key} ({use})" for x, use in aside)
                    raise ClaimError(f"{e}; skipped because the host uses them: {why}") from None
                raise
            use = host_use(inv, addr) if (addr := pci_address(a.device)) else None
            if use:
                aside.append((a, use))
                continue
            return a
    finally:
        for x, _ in aside:
            store.release(vm, x.device)


def assign(s: Session, vm: str, texts: list[str], *, numa: int | None = None, numa_policy: str = "strict",
           vm_uuid: str | None = None, bind: bool = True, kernel: object | None = None,
           vf_options: dict | None = None, keep_driver: Collection[str] = (), dry_run: bool = False,
           count: int = 1, same_switch: bool = False, same_numa: bool = False,
           allow_split: bool = False) -> AssignResult:
    """Claim the devices ``texts`` name for ``vm`` and take their PCI groups over for vfio-pci. ``vf_options``
    (mac, vlan, qos, spoofchk, trust, min_tx_rate, max_tx_rate, link_state) configure each NIC VF assigned, through
    its PF (kinds/nic_vf/); the prior settings are kept and put back on release. ``keep_driver``: PCI addresses
    the VM manager moves to vfio-pci itself (libvirt managed='yes', Proxmox hostpci): their groups are recorded
    (takeover "none") after the takeover's guards pass, and never bound here. ``dry_run``: the same checks,
    claims and refusals in a rehearsal of the inventory that is rolled back, the takeover planned, nothing written.
    ``count``/``same_switch``/``same_numa``: each kind or model spec picks ``count`` devices together, behind one
    PCIe switch and/or on one NUMA node (together.py; ``allow_split``: take the best split when none holds them)."""
    check_vm(vm)
    vm_uuid = None if vm_uuid is None else check_uuid(vm_uuid)
    if numa_policy not in ("strict", "prefer"):
        raise UsageError(f"--numa-policy {numa_policy!r}: strict or prefer")
    specs = [parse_spec(t) for t in texts]
    if vf_options:
        from ..kinds.nic_vf import normalize_settings

        normalize_settings(vf_options)  # bad VF settings are bad input: refused before anything is claimed
    if not specs:
        raise UsageError("name at least one device: a PCI address, a kind (gpu), a model, usb:..., serial:...")
    together = None
    if count != 1 or same_switch or same_numa:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UsageError(f"--count must be 1 or more, got {count!r}")
        together = dict(count=count, same_switch=same_switch, same_numa=same_numa, numa=numa, numa_policy=numa_policy,
                        allow_split=allow_split)
    elif allow_split:
        raise UsageError("--allow-split goes with --same-switch or --same-numa")
    store = open_store(s, dry_run)
    pick = dict(numa=numa, numa_policy=numa_policy, vm_uuid=vm_uuid)
    if dry_run:
        with store.rehearsal():
            inv, specs, direct, pick["kept"] = _prepare(s, store, vm, specs, bind, keep_driver, together)
            return _rehearse(s, store, inv, vm, specs, direct, bind, vf_options, pick)
    inv, specs, direct, pick["kept"] = _prepare(s, store, vm, specs, bind, keep_driver, together)
    kept = pick["kept"]
    res = AssignResult(vm)
    before = {a.device for a in store.assignments(vm)}
    op = journal_for(s.paths.state_dir).begin("assign", vm=vm, bind=bind, binding=[], vfs=[])
    mark = {"id": op.id, "takeover": "vfio" if bind else "none"}
    try:
        hit("assign.intent")
        claimed = _claim_all(s, store, inv, vm, specs, direct, mark, **pick)
        hit("assign.claimed")
        vfs = _vfs_of(inv, claimed) if vf_options else []  # refused before anything moves
        addrs = pci_addresses([a.device for a in claimed])
        todo = [a for a in addrs
                if f"pci:{a}" not in kept and not is_vfio_driver((inv.pci_function(a) or _NoFn).driver)]
        if bind and todo:
            op.update(binding=todo)  # journal first: if this process dies, reconcile gives these back
            out = vfio_bind(s.host, s.paths, todo, group=True, kernel=kernel)  # type: ignore[arg-type]
            res.bound = [d.address for d in out.devices if d.status == "changed"]
            hit("assign.bound")
        if vf_options:
            _configure_vfs(s, vm, vfs, vf_options, op)
            hit("assign.configured")
        done = {a.device: a for a in store.finish_op(op.id)}
        hit("assign.finished")
        res.assignments = [done.get(a.device, a) for a in claimed]
        store.audit("assign", None, vm, {"devices": [a.device for a in res.assignments], "bound": res.bound,
                                         "kept": sorted(before & {a.device for a in res.assignments})})
        op.done()
    except (Exception, KeyboardInterrupt):
        undo_assign(s, store, op.doc, kernel=kernel)  # nothing half-applied: what this call did goes back
        op.done()
        raise
    except BaseException:  # killed (a crash test's stand-in for SIGKILL): the journal is reconcile's to settle
        op.release()
        raise
    return res


def _prepare(s: Session, store: Store, vm: str, specs: list[Spec], bind: bool, keep_driver: Collection[str],
             together: dict | None = None) -> tuple[Inventory, list[Spec], list[str], set[str]]:
    """Discovery into the store, then the identities the specs name directly and every refusal that needs no
    claim: the kinds' (a serial port held open, a USB port whose device changed) and the takeover guards' for the
    PCI devices named (what `bind` would refuse: a mounted disk, the boot VGA, a GPU hosting live vGPUs...; with
    --no-bind only live vGPUs, which forbid handing the device over whole, whoever binds it). Also the
    identities of the groups the VM manager binds itself (``keep_driver``, _kept_groups)."""
    inv = sync(s, store)
    if together is not None:  # kind/model specs become the addresses chosen together
        specs = choose_together(store, inv, {m.name for m in s.models()}, vm, specs, **together)
    direct: list[str] = []
    for spec in specs:
        for ident in _resolve(inv, store, spec):
            if ident not in direct:
                direct.append(ident)
    _kind_refusals(s, store, inv, vm, direct)
    named = {sp.value for sp in specs if sp.form == "pci"}
    kept = _kept_groups(s, inv, named, keep_driver) if keep_driver else set()
    addrs = [a for a in pci_addresses(direct) if f"pci:{a}" not in kept]
    todo = [a for a in addrs if not is_vfio_driver((inv.pci_function(a) or _NoFn).driver)]
    if bind and todo:
        plan_bind(s.host, todo, group=True)
    elif addrs:
        check_whole(s.host, addrs)
    return inv, specs, direct, kept


def _kept_groups(s: Session, inv: Inventory, named: set[str], keep: Collection[str]) -> set[str]:
    """The identities of the groups of ``keep`` (addresses the VM manager binds itself), after the takeover's
    guards (the boot VGA, a NIC with an address, a mounted disk, live vGPUs...) said yes: RefusedError otherwise. A
    group with one device kept and another named to be bound here is refused: one side would undo the other."""
    kept: set[str] = set()
    for a in keep:
        group = group_identities(inv, a)
        clash = sorted(a for a in pci_addresses(group) if a in named and a not in keep)
        if clash:
            raise UsageError(f"{a} is bound by the VM manager (managed) and {clash[0]}, in the same IOMMU group, by "
                             "passthru: give both the same management (both managed, or neither)")
        kept.update(group)
    plan_bind(s.host, [a for a in keep if not is_vfio_driver((inv.pci_function(a) or _NoFn).driver)], group=True)
    return kept


def _claim_all(s: Session, store: Store, inv: Inventory, vm: str, specs: list[Spec], direct: list[str],
               mark: dict | None, *, numa: int | None, numa_policy: str, vm_uuid: str | None,
               kept: set[str]) -> list[Assignment]:
    """The claims of one assign: the devices named (those in ``kept`` recorded with takeover "none"), then one
    free device per kind/model/USB-ID spec with its IOMMU group. De-duplicated, in order."""
    claimed: list[Assignment] = []
    for part, how in (([i for i in direct if i not in kept], mark),
                      ([i for i in direct if i in kept], None if mark is None else {**mark, "takeover": "none"})):
        if part:
            claimed += store.claim(vm, part, vm_uuid=vm_uuid, op=how)
    models = {m.name for m in s.models()}
    for spec in specs:
        if spec.form in ("name", "usb-id"):
            a = _pick(store, inv, vm, spec, models, numa, numa_policy, vm_uuid, mark)
            claimed.append(a)
            if addr := pci_address(a.device):  # its group comes along
                rest = [i for i in group_identities(inv, addr) if i != a.device]
                if rest:
                    claimed += store.claim(vm, rest, vm_uuid=vm_uuid, op=mark)
    return _dedupe(claimed)


def _rehearse(s: Session, store: Store, inv: Inventory, vm: str, specs: list[Spec], direct: list[str], bind: bool,
              vf_options: dict | None, pick: dict) -> AssignResult:
    """assign --dry-run, inside Store.rehearsal: the claims as the real run makes them (then rolled back), the
    takeover planned by bind's own dry run (its refusals), the VFs whose settings would be set. Writes nothing."""
    res = AssignResult(vm, dry_run=True)
    res.assignments = _claim_all(s, store, inv, vm, specs, direct, None, **pick)
    res.vfs = _vfs_of(inv, res.assignments) if vf_options else []
    addrs = pci_addresses([a.device for a in res.assignments])
    todo = [a for a in addrs
            if f"pci:{a}" not in pick["kept"] and not is_vfio_driver((inv.pci_function(a) or _NoFn).driver)]
    if bind and todo:
        out = vfio_bind(s.host, s.paths, todo, group=True, dry_run=True)
        res.bound = [d.address for d in out.devices if d.status == "would change"]
        res.moves = {d.address: d.before for d in out.devices}
    return res


def undo_assign(s: Session, store: Store, doc: dict, *, kernel: object | None = None) -> dict:
    """Put back what the assign operation ``doc`` (its journal record) did: VF settings, the PCI devices it moved
    to vfio-pci, its pending claims. Used by assign itself on failure and by reconcile for one that died. Each
    step is idempotent; errors are collected, not raised (the caller reports them)."""
    vm = str(doc.get("vm"))
    report: dict = {"op": doc.get("id"), "vm": vm, "released": [], "restored": [], "vfs": [], "errors": []}
    for ident in doc.get("vfs") or []:
        try:
            if os.path.exists(_hook_path(s, vm, ident)):
                _undo_kind(s, vm, ident)
            else:
                kind_for("nic").abandon(s.host, s.paths, vm, ident)
            report["vfs"].append(ident)
        except PassthruError as e:
            report["errors"].append(f"{ident}: {e}")
    mine = {h.address for h in Holdings(s.paths).holdings()}
    back = [a for a in doc.get("binding") or [] if a in mine]
    if back:
        try:
            vfio_restore(s.host, s.paths, back, kernel=kernel)  # type: ignore[arg-type]
            report["restored"] = back
        except PassthruError as e:
            report["errors"].append(str(e))
    try:
        report["released"] = [a.device for a in store.abandon_op(str(doc.get("id")))]
    except PassthruError as e:
        report["errors"].append(str(e))
    return report


class _NoFn:
    driver = None


def _vfs_of(inv: Inventory, claimed: list[Assignment]) -> list[str]:
    """The SR-IOV VFs among the claims, for VF settings; UsageError when there is none."""
    vfs = [a.device for a in claimed if (addr := pci_address(a.device))
           and (fn := inv.pci_function(addr)) is not None and fn.physfn]
    if not vfs:
        raise UsageError("VF settings (--mac, --vlan, ...) were given but none of the devices is an SR-IOV VF")
    return vfs


def _dedupe(items: list[Assignment]) -> list[Assignment]:
    seen: dict[str, Assignment] = {}
    for a in items:
        seen.setdefault(a.device, a)
    return list(seen.values())
