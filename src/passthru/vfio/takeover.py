"""Taking devices over for vfio-pci and giving them back, atomically, with a journal a crash can be finished from.

bind, per device (after :func:`plan_bind` accepted the whole request):
    record prior driver + override (phase "binding") -> audit -> driver_override=vfio-pci -> unbind -> drivers_probe
    -> wait for driver vfio-pci and /dev/vfio/<group> -> record phase "bound" -> audit
If any step fails, every device this call touched goes back to its prior driver (reverse order) and the error names
the step. restore: phase "restoring" -> override back to the prior one -> unbind -> drivers_probe (or bind the prior
driver directly) -> wait for the prior driver -> drop the record. reconcile finishes what a killed process left:
"binding" completes when the device is fully on vfio-pci, else goes back; "restoring" completes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config import Paths
from ..errors import HostError, PassthruError, UsageError
from ..failpoints import hit
from ..host.iommu import is_vfio_driver
from ..host.pci import PciFunction, read_function
from ..host.root import HostRoot
from .kernel import VFIO_PCI, Kernel
from .plan import TakeoverPlan, parse_addresses, plan_bind
from .state import BINDING, BOUND, RESTORING, Holding, Holdings

__all__ = ["DeviceResult", "Outcome", "bind", "restore", "status", "give_back_one", "give_back"]


@dataclass(slots=True)
class DeviceResult:
    address: str
    before: str | None  # driver before
    after: str | None  # driver after (planned, for a dry run)
    status: str  # changed | unchanged | would change | restored | would restore | would drop | rolled back | failed
    #              | lost | dropped
    note: str = ""
    mate_of: str | None = None

    def to_json(self) -> dict:
        return {"address": self.address, "before": self.before, "after": self.after, "status": self.status,
                "note": self.note or None, "group_mate_of": self.mate_of}


@dataclass(slots=True)
class Outcome:
    action: str
    devices: list[DeviceResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    persisted: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def changed(self) -> bool:
        return any(d.status in ("changed", "restored", "dropped") for d in self.devices) or bool(self.persisted)

    def to_json(self) -> dict:
        return {"schema": 1, "action": self.action, "ok": self.error is None,
                "status": "changed" if self.changed else "unchanged", "error": self.error,
                "devices": [d.to_json() for d in self.devices], "persisted": self.persisted,
                "warnings": self.warnings}


def _ids(fn: PciFunction) -> tuple[str, str]:
    return f"{fn.vendor_id:04x}", f"{fn.device_id:04x}"


# -- bind ---------------------------------------------------------------------------------------------------------
def bind(h: HostRoot, paths: Paths, addresses: list[str], *, group: bool = False, persist: bool = False,
         dry_run: bool = False, allow: frozenset[str] = frozenset(), kernel: Kernel | None = None) -> Outcome:
    """Take ``addresses`` over for vfio-pci (see the module docstring). Raises RefusedError / UsageError /
    NotFoundError before any change; HostError after rolling back what it changed."""
    addrs = parse_addresses(addresses)
    plan = plan_bind(h, addrs, group=group, allow=allow)
    out = Outcome("bind", warnings=list(plan.warnings))
    k = kernel or Kernel(h)
    store = Holdings(paths)
    if dry_run:
        for fn in plan.functions:
            done = is_vfio_driver(fn.driver)
            out.devices.append(DeviceResult(fn.address, fn.driver, fn.driver if done else VFIO_PCI,
                                            "unchanged" if done else "would change",
                                            mate_of=plan.mates.get(fn.address)))
        return out
    k.require_live()
    with store.lock():
        _bind_locked(h, k, store, plan, out)
        if persist:
            for fn in plan.functions:
                rec = store.get(fn.address)
                if rec is not None and store.persist(rec):
                    out.persisted.append(fn.address)
                    store.audit("persist", fn.address, None, VFIO_PCI)
    return out


def _bind_locked(h: HostRoot, k: Kernel, store: Holdings, plan: TakeoverPlan, out: Outcome) -> None:
    """What moves is decided first and recorded as one intent (the journal), then each device is written: a kill
    at any point leaves the intent, and reconcile finishes the whole set or gives every member back."""
    moving: list[PciFunction] = []
    for fn in plan.functions:
        now = read_function(h, fn.address, find_vf_index=False) or fn
        if not is_vfio_driver(now.driver):
            moving.append(now)
            continue
        held = store.get(fn.address)
        note = ""
        if held is None or held.phase != BOUND:
            vid, did = _ids(now)
            store.save(held and replace(held, phase=BOUND) or Holding(
                fn.address, vid, did, now.iommu_group, None, now.driver_override, BOUND, by="adopted"))
            note = "already on vfio-pci; now recorded (restore lets the kernel pick its driver)"
        out.devices.append(DeviceResult(fn.address, now.driver, now.driver, "unchanged", note,
                                        plan.mates.get(fn.address)))
    if not moving:
        return
    k.modprobe("vfio-pci", VFIO_PCI)  # loading the module moves no device: it comes before the intent
    op = store.journal.begin("vfio.bind", members=[_member(fn) for fn in moving])
    touched: list[Holding] = []
    try:
        hit("vfio.bind.intent")
        for now in moving:
            vid, did = _ids(now)
            rec = store.save(Holding(now.address, vid, did, now.iommu_group, now.driver, now.driver_override,
                                     BINDING, op=op.id))
            touched.append(rec)
            hit("vfio.bind.record")
            store.audit("bind", now.address, now.driver, VFIO_PCI)
            k.set_override(now.address, VFIO_PCI)
            k.unbind(now.address)
            k.probe(now.address)
            k.wait_bound(now.address, VFIO_PCI, need_node=True)
            store.save(replace(rec, phase=BOUND))
            hit("vfio.bind.bound")
            out.devices.append(DeviceResult(now.address, now.driver, VFIO_PCI, "changed",
                                            mate_of=plan.mates.get(now.address)))
        op.done()
    except PassthruError as e:
        failed = _roll_back(k, store, touched, out)
        op.release() if failed else op.done()  # what could not be given back stays for reconcile
        out.error = str(e)
        msg = f"{e}; " + ("every device is back on its prior driver" if not failed else
                          f"could not give back {', '.join(failed)}: run `passthru reconcile`")
        raise HostError(msg) from None
    except BaseException:
        op.release()
        raise


def _member(fn: PciFunction) -> dict:
    vid, did = _ids(fn)
    return {"address": fn.address, "vendor_id": vid, "device_id": did, "iommu_group": fn.iommu_group,
            "prior_driver": fn.driver, "prior_override": fn.driver_override}


def _roll_back(k: Kernel, store: Holdings, touched: list[Holding], out: Outcome) -> list[str]:
    failed = []
    for rec in reversed(touched):
        try:
            give_back(k, store, rec)
            out.devices.append(DeviceResult(rec.address, VFIO_PCI, rec.prior_driver, "rolled back"))
        except PassthruError as e:
            failed.append(rec.address)
            out.devices.append(DeviceResult(rec.address, None, rec.prior_driver, "failed", str(e)))
    return failed


def give_back(k: Kernel, store: Holdings, rec: Holding) -> None:
    """Return one device to its prior driver and drop its record; the record stays (phase restoring) when the
    kernel does not cooperate, so reconcile can retry."""
    if rec.phase != RESTORING:
        rec = store.save(replace(rec, phase=RESTORING))
        hit("vfio.restore.record")
    before = k.driver_of(rec.address)
    if k.present(rec.address):
        k.set_override(rec.address, rec.prior_override)
        if before != rec.prior_driver or before is None:
            k.unbind(rec.address)
            k.probe(rec.address)
            prior = rec.prior_driver
            if prior and k.driver_of(rec.address) != prior:
                if not k.driver_loaded(prior):
                    k.modprobe(prior, prior)
                k.bind(rec.address, prior)
            if prior:
                k.wait_bound(rec.address, prior)
    store.audit("restore", rec.address, before, k.driver_of(rec.address))
    store.drop(rec.address)
    hit("vfio.restore.dropped")


# -- restore ------------------------------------------------------------------------------------------------------
def restore(h: HostRoot, paths: Paths, addresses: list[str] | None, *, dry_run: bool = False,
            kernel: Kernel | None = None) -> Outcome:
    """Give held devices back (``None``: all). A device's held IOMMU group mates go back with it. ``dry_run``: the
    same refusals, then what would go back (status "would restore"), on any root; nothing is written."""
    store = Holdings(paths)
    k = kernel or Kernel(h)
    out = Outcome("restore")
    wanted = None if addresses is None else parse_addresses(addresses)
    strangers = [a for a in wanted or [] if store.get(a) is None]
    if strangers:
        raise UsageError(f"{strangers[0]}: passthru does not hold this device (`passthru status` lists what it "
                         "holds); nothing was changed")
    if dry_run:
        held, order, requested = _restore_order(store, wanted)
        for a in order:
            present = k.present(a)
            out.devices.append(DeviceResult(a, k.driver_of(a) if present else None, held[a].prior_driver,
                                            "would restore" if present else "would drop",
                                            "" if present else "gone from the host; the record would be dropped",
                                            _mate(held, requested, a)))
        return out
    k.require_live()
    with store.lock():
        held, order, requested = _restore_order(store, wanted)
        errors: list[str] = []
        if order:
            with store.journal.begin("vfio.restore", members=order) as op:
                hit("vfio.restore.intent")
                for a in order:
                    give_back_one(k, store, held[a], out, errors, _mate(held, requested, a))
                if errors:
                    op.release()  # the intent stays: reconcile retries what the kernel refused
        if errors:
            out.error = "; ".join(errors)
            raise HostError(out.error + " — the record is kept: fix the cause and run `passthru reconcile`")
    return out


def _restore_order(store: Holdings, wanted: list[str] | None) -> tuple[dict[str, Holding], list[str], set[str]]:
    """(held records, the addresses to give back in order: the requested ones then their held group mates, the
    requested set)."""
    held = {r.address: r for r in store.holdings()}
    order = list(held) if wanted is None else [a for a in wanted if a in held]
    requested = set(order)
    if wanted is not None:
        for a in list(order):
            g = held[a].iommu_group
            order += [m for m, r in held.items() if g is not None and r.iommu_group == g and m not in order]
    return held, order, requested


def _mate(held: dict[str, Holding], requested: set[str], a: str) -> str | None:
    if a in requested:
        return None
    return next((r for r in requested if held[r].iommu_group == held[a].iommu_group), None)


def give_back_one(k: Kernel, store: Holdings, rec: Holding, out: Outcome, errors: list[str], mate: str | None = None
                  ) -> None:
    """restore's step for one held device: back to its prior driver (or the record dropped when the device is gone),
    boot persistence removed; a kernel refusal is collected in ``errors`` and the record kept."""
    a = rec.address
    before = k.driver_of(a)
    if not k.present(a):
        store.drop(a)
        store.unpersist(a)
        store.audit("drop", a, None, None, reason="device gone from the host")
        out.devices.append(DeviceResult(a, None, None, "dropped", "gone from the host; record dropped"))
        return
    try:
        give_back(k, store, rec)
    except PassthruError as e:
        errors.append(f"{a}: {e}")
        out.devices.append(DeviceResult(a, before, k.driver_of(a), "failed", str(e)))
        return
    if store.unpersist(a):
        store.audit("unpersist", a, VFIO_PCI, None)
    out.devices.append(DeviceResult(a, before, k.driver_of(a), "restored",
                                    "" if rec.prior_driver else "had no driver before", mate))


# -- status -------------------------------------------------------------------------------------------
def status(h: HostRoot, paths: Paths) -> dict:
    """What passthru holds (with the driver each device has now), and what is persisted for boot."""
    store = Holdings(paths)
    k = Kernel(h)
    held = []
    for rec in store.holdings():
        now = k.driver_of(rec.address) if k.present(rec.address) else None
        held.append({**rec.to_json(), "present": k.present(rec.address), "driver": now,
                     "persisted": store.is_persisted(rec.address),
                     "consistent": rec.phase == BOUND and now == VFIO_PCI})
    live = {d["id"] for d in store.journal.live("vfio.")}
    ops = [{"id": d["id"], "kind": d["kind"], "started": d.get("started"), "pid": d.get("pid"),
            "members": [m["address"] if isinstance(m, dict) else m for m in d.get("members") or []],
            "running": d["id"] in live} for d in store.journal.entries("vfio.")]
    return {"schema": 1, "held": held, "persisted": store.persisted(), "operations": ops}
