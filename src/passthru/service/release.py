"""Release: a VM lets go of its devices (all, or those named), journaled so that a kill mid-way is finished by
``passthru reconcile`` (:func:`finish_release` is each step, idempotent). The counterpart of ``service/assign.py``."""

from __future__ import annotations

from ..errors import NotFoundError
from ..failpoints import hit
from ..inventory.spec import Spec, parse_spec
from ..inventory.store import Assignment, Store
from ..journal import journal_for
from ..kinds.vgpu import release_created  # vGPUs made for a VM (`vgpu create --vm`) go when it releases them
from ..names import check_vm
from ..vfio import Holdings
from ..vfio import restore as vfio_restore
from .assign import group_identities, open_store, pci_addresses
from .kind_state import undo_kind
from .session import Session

__all__ = ["release", "finish_release", "to_release", "held_identities"]


def release(s: Session, vm: str, texts: list[str] | None = None, *, restore: bool | list[str] = False,
            kernel: object | None = None) -> list[Assignment]:
    """Release the VM's devices (all, or those ``texts`` name; a PCI device's group mates go too). With
    ``restore``, PCI devices go back to their host drivers (a list: only those addresses); otherwise they stay on
    vfio-pci for the next VM.
    Journaled: a release interrupted by a kill is finished by reconcile."""
    store = open_store(s)
    idents = to_release(s, store, vm, texts)
    with journal_for(s.paths.state_dir).begin("release", vm=vm, devices=idents, restore=restore) as op:
        hit("release.intent")
        return finish_release(s, store, op.doc, kernel=kernel)


def to_release(s: Session, store: Store, vm: str, texts: list[str] | None) -> list[str]:
    check_vm(vm)
    held = {a.device: a for a in store.assignments(vm)}
    if not held:
        raise NotFoundError(f"VM {vm!r} holds no devices (`passthru assignments` lists who holds what)")
    return list(held) if texts is None else held_identities(s, store, vm, held, texts)


def finish_release(s: Session, store: Store, doc: dict, *, kernel: object | None = None) -> list[Assignment]:
    """The steps of a release (its journal record ``doc``), each idempotent so that reconcile can run them again
    after a kill: a kind's settings put back, the holding released, PCI devices back to their drivers (with
    ``restore``), vGPUs made for the VM removed."""
    vm, idents = str(doc["vm"]), [str(i) for i in doc.get("devices") or []]
    active = {a.device for a in store.assignments(vm)}
    out: list[Assignment] = []
    for ident in idents:
        undo_kind(s, vm, ident)  # a VF's settings back as they were before the VM got it
        if ident in active:
            out += store.release(vm, ident)
            hit("release.released")
    want = doc.get("restore")
    if want:
        mine = {h.address for h in Holdings(s.paths).holdings()}
        addrs = [a for a in pci_addresses(idents) if a in mine and (want is True or a in want)]
        if addrs:
            vfio_restore(s.host, s.paths, addrs, kernel=kernel)  # type: ignore[arg-type]
    store.audit("release", None, vm, {"devices": idents, "restored": bool(doc.get("restore")), "op": doc.get("id")})
    release_created(s.host, s.paths, vm, idents, kernel=kernel)  # type: ignore[arg-type]
    return out


def held_identities(s: Session, store: Store, vm: str, held: dict[str, Assignment], texts: list[str]) -> list[str]:
    """The identities ``texts`` name among what ``vm`` holds (a PCI address brings its held group mates)."""
    idents: list[str] = []
    for spec in (parse_spec(t) for t in texts):
        if spec.form == "pci":
            want = [i for i in group_identities(s.inventory(), spec.value) if i in held] or [f"pci:{spec.value}"]
        elif spec.identity:
            want = [spec.identity]
        else:
            want = [d for d in held if _matches(store, d, spec)]
        if not want or any(w not in held for w in want):
            raise NotFoundError(f"{spec.text}: VM {vm!r} does not hold it (it holds {', '.join(sorted(held))})")
        idents += [w for w in want if w not in idents]
    return idents


def _matches(store: Store, identity: str, spec: Spec) -> bool:
    d = next((x for x in store.devices() if x["identity"] == identity), None)
    return d is not None and d["kind"] == spec.value
