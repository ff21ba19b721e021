"""What happens to a VM's devices once they are assigned: the attachments ``qemu-args`` and ``libvirt-xml`` render
(refused when a device is gone or not on vfio-pci), and hot plug over QMP (attach assigns first what the VM does
not hold yet; detach releases, or keeps, what it unplugs). Split from service.py, which re-exports these names.
"""

from __future__ import annotations

import os

from ..errors import NotFoundError, PassthruError, UsageError
from ..host.iommu import is_vfio_driver
from ..inventory.store import Store
from ..kinds.vgpu import release_created  # vGPUs made for this VM (`vgpu create --vm`) go with it
from ..names import check_vm
from ..vm.qmp import attach as qmp_attach
from ..vm.qmp import detach as qmp_detach
from .assign import _kind_refusals, _undo_kind, assign, open_store, sync
from .release import held_identities
from .attachments import attachments_for
from .session import Session

__all__ = ["attach", "detach", "vm_attachments", "check_qmp_socket"]


def _attachments_of(s: Session, store: Store, idents: list[str], vm: str, opts: object = None) -> list:
    rows = [d for d in store.devices() if d["identity"] in set(idents)]
    takeover = {a.device: a.takeover for a in store.assignments(vm)}
    for d in rows:
        _check_ready(s, vm, d["identity"], takeover.get(d["identity"]))
    return attachments_for(s.host, rows, opts)  # type: ignore[arg-type]


def _check_ready(s: Session, vm: str, ident: str, takeover: str | None) -> None:
    """A device handed to QEMU or libvirt must be there, and a PCI one on vfio-pci (unless it was assigned with
    --no-bind: then whoever starts the VM binds it). UsageError (exit 2) with the way out otherwise."""
    h = s.host
    form, _, value = ident.partition(":")
    if form == "serial":
        if not value.startswith("/"):
            return
        where = h.path(value)
    elif form in ("pci", "mdev", "usb"):
        where = f"{h.sys}/bus/{form}/devices/{value}"
    else:
        return
    if not h.exists(where):
        raise UsageError(f"{value} is not on this host, though VM {vm!r} holds it: `passthru release {vm} {ident}` "
                         "(or bring it back and run `passthru reconcile`)")
    if form == "pci" and takeover != "none":
        drv = h.link_name(where + "/driver")
        if not is_vfio_driver(drv):
            raise UsageError(f"{value} is on {drv or 'no driver'}, not vfio-pci, though VM {vm!r} holds it: "
                             f"`passthru reconcile` takes it over again (or `passthru bind {value} --group`)")


def vm_attachments(s: Session, vm: str, opts: object = None) -> list:
    """The attachments (vm/attachment.py) of everything ``vm`` holds, for qemu-args and libvirt-xml; refused when a
    device is gone or not on vfio-pci (see :func:`_check_ready`)."""
    check_vm(vm)
    store = open_store(s)
    held = [a.device for a in store.assignments(vm) if a.state != "pending"]
    if not held:
        raise UsageError(f"VM {vm!r} holds no devices: `passthru assign {vm} SPEC` first")
    return _attachments_of(s, store, held, vm, opts)


def check_qmp_socket(path: str) -> None:
    """The VM's QMP socket must exist and be a unix socket: bad input (exit 2) otherwise, before anything moves."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"QMP socket {path} does not exist; start QEMU with -qmp unix:{path},server=on,"
                            "wait=off") from None
    except OSError as e:
        raise UsageError(f"QMP socket {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{path} is not a unix socket; name the VM's QMP socket (-qmp unix:PATH,server=on)")


def attach(s: Session, vm: str, texts: list[str], socket: str, *, port: str | None = None,
           kernel: object | None = None) -> list[dict]:
    """Hot-plug into the running VM behind ``socket``: assign first what the VM does not hold yet, then one
    attachment at a time over QMP; each attached device's assignment becomes "attached"."""
    check_vm(vm)
    check_qmp_socket(socket)
    store = open_store(s)
    held = {a.device: a for a in store.assignments(vm)}
    before = set(held)
    try:
        try:
            idents = held_identities(s, store, vm, held, texts)
        except NotFoundError:
            assign(s, vm, texts, kernel=kernel)
            held = {a.device: a for a in store.assignments(vm)}
            idents = held_identities(s, store, vm, held, texts)
        # kinds: what is plugged in / open now, not what was when the VM got it (a re-plugged USB port, a getty)
        _kind_refusals(s, store, sync(s, store), vm, idents, attach=True)
        out = []
        for att in _attachments_of(s, store, idents, vm):
            res = qmp_attach(socket, att, port=port)
            for ident in _att_identities(att):
                store.set_state(vm, ident, "attached")
            store.audit("attach", None, vm, {"ids": res.get("ids"), "port": res.get("port")})
            out.append(res)
    except (Exception, KeyboardInterrupt):
        _undo_new(store, vm, before)
        raise
    return out


def _undo_new(store: Store, vm: str, before: set[str]) -> None:
    """A failed attach releases what it assigned on its way and did not plug (the VM keeps what it held before;
    a device already plugged stays recorded as attached: it is in the guest)."""
    for a in store.assignments(vm):
        if a.device not in before and a.state == "reserved":
            try:
                store.release(vm, a.device)
            except PassthruError:
                pass


def detach(s: Session, vm: str, texts: list[str], socket: str, *, keep: bool = False) -> list[dict]:
    """Hot-unplug from the running VM (waits for DEVICE_DELETED), then release (or, with ``keep``, keep reserved)."""
    check_vm(vm)
    check_qmp_socket(socket)
    store = open_store(s)
    held = {a.device: a for a in store.assignments(vm)}
    idents = held_identities(s, store, vm, held, texts)
    out = []
    for att in _attachments_of(s, store, idents, vm):
        res = qmp_detach(socket, att)
        for ident in _att_identities(att):
            if keep:
                if held[ident].state == "attached":
                    store.set_state(vm, ident, "reserved")
            else:
                _undo_kind(s, vm, ident)
                store.release(vm, ident)
        store.audit("detach", None, vm, {"ids": res.get("ids"), "kept": keep})
        out.append(res)
    if not keep:
        release_created(s.host, s.paths, vm, idents)
    return out


def _att_identities(att) -> list[str]:
    if att.kind == "pci":
        return [f"pci:{a}" for a in att.functions]
    if att.kind == "mdev":
        return [f"mdev:{att.mdev_uuid}"]
    if att.kind == "usb":
        return [f"usb:{att.usb_bus}-{att.usb_port}"]
    return [f"serial:{att.serial_path}"]
