"""USB devices: one host USB device handed to one VM through QEMU's ``usb-host,hostbus=,hostport=`` (hot plug over
QMP on the VM's xHCI), or libvirt's ``<hostdev type='usb'>`` by vendor:product.

What the generic machinery already does: root hubs are never offered, hubs only when named by port path
(``usb:1-1``); a device's identity is its *port path* (``usb:1-1.3``: bus 1, root port 1, hub port 3), which stays
the same when the device is re-plugged into the same port while its bus address (``devnum``) changes at every plug;
``usb:VVVV:PPPP[:SERIAL]`` finds a device wherever it is plugged now; the store gives a device to one VM at a time.

This kind adds:

- re-plug safety: a VM holding a port gets whatever is plugged into it. When the device in a held port changes
  (the inventory sync reports it "replaced"), the change is recorded in the audit table (``usb.replaced``) and
  ``assign`` / ``attach`` of that port for that VM are refused until it is released (or the original device is
  back in the port).
- a USB serial adapter goes to a VM one way: as its USB device or as its tty (``serial:/dev/ttyUSB0``), not both.
- doctor: ``usb.hub`` (warn: QEMU's ``usb-host`` skips hubs, device class 9, so a VM given a hub gets nothing) and
  ``usb.identity`` (the port path, QEMU's hostbus/hostport, the ids; warn when a vid:pid[:serial] spec is ambiguous).
"""

from __future__ import annotations

from typing import Callable

from ..discovery import Device, Inventory
from ..errors import UsageError
from ..findings import PASS, WARN, Finding
from ..host.root import HostRoot
from ..identity import parse as parse_identity
from ..host.serial import scan_serial
from ..host.usb import UsbDevice, scan_usb
from .base import DeviceKind, register

__all__ = ["UsbKind", "REPLACED", "replaced_audits", "replaced_change", "check_assign"]

REPLACED = "usb.replaced"  # audit action: the device in a held USB port changed


def replaced_audits(replaced: list[dict]) -> list[tuple[str, str, str, dict]]:
    """The audit entries (action, identity, VM, detail) for each held USB port whose device changed
    (``Store.sync_devices()['replaced']``): the sync reports it once, the refusal must last until the VM lets go of
    the port, so the service records these."""
    return [(REPLACED, r["identity"], r["held_by"], {"old": r["old"], "new": r["new"]})
            for r in replaced if parse_identity(r["identity"]).bus == "usb" and r.get("held_by")]


def replaced_change(details: list[dict]) -> tuple[str, str] | None:
    """(ids the VM was given, ids in the port now) from the ``usb.replaced`` entries of one held port since the VM
    got it (oldest first); None when there are none or the original device came back."""
    if not details:
        return None
    first, last = details[0].get("old"), details[-1].get("new")
    return None if first == last else (str(first), str(last))


def check_assign(inv: Inventory, holders: dict[str, str | None], changed: Callable[[str], tuple[str, str] | None],
                 vm: str, idents: list[str]) -> None:
    """Refuse (UsageError, exit 2) USB identities in ``idents`` whose device changed since ``vm`` was given them
    (``changed(identity)``: the inventory's answer, see :func:`replaced_change`; None for a port ``vm`` does not
    hold), and USB serial adapters whose tty is held. ``holders``: identity -> holder VM."""
    for ident in idents:
        if parse_identity(ident).bus != "usb":
            continue
        change = changed(ident)
        if change:
            raise UsageError(
                f"{ident}: the device in this port changed since VM {vm!r} was given it ({change[0]} -> "
                f"{change[1]}): release it (`passthru release {vm} {ident}`) and assign the port again if the VM "
                "should have the new device, or plug the original back in")
        port = parse_identity(ident).key
        for p in inv.serial:
            tty = f"serial:{p.device}"
            if p.backing_bus == "usb" and p.backing_id == port and holders.get(tty):
                raise UsageError(f"{ident}: its serial port {p.device} is assigned to VM {holders[tty]!r} ({tty}): "
                                 "an adapter goes to one VM one way (release that first)")


def _ambiguous(u: UsbDevice, present: list[UsbDevice]) -> list[str]:
    return [o.port_path for o in present if o.port_path != u.port_path and not o.is_root_hub
            and (o.vendor_id, o.product_id, o.serial) == (u.vendor_id, u.product_id, u.serial)]


class UsbKind(DeviceKind):
    name = "usb"
    hotpluggable = True

    def checks(self, h: HostRoot, device: Device) -> list[Finding]:
        u = device.fact
        if device.bus != "usb" or not isinstance(u, UsbDevice):
            return []
        present = scan_usb(h)
        name = " ".join(x for x in (u.manufacturer, u.product) if x) or "no product string"
        ids = u.ids + (f":{u.serial}" if u.serial else "")
        if u.is_hub:
            behind = [o for o in present if o.port_path.startswith(u.port_path + ".")]
            shown = ", ".join(f"{o.port_path} {o.ids}" + (f" {o.product}" if o.product else "") for o in behind[:4])
            shown += f" and {len(behind) - 4} more" if len(behind) > 4 else ""
            first = behind[0].port_path if behind else f"{u.port_path}.1"
            ctrl = f" {u.controller}" if u.controller else ""
            return [Finding("usb.hub", "Not a hub", WARN,
                            f"usb:{u.port_path} is a hub ({u.maxchild} ports; behind it: {shown or 'nothing'}): "
                            "QEMU's usb-host never attaches hubs (it skips device class 09), so a VM given it gets "
                            "nothing",
                            f"give the VM the devices behind it by port path (usb:{first}), or the whole USB "
                            f"controller{ctrl} as a PCI device", device=device.id)]
        ev = (f"usb:{u.port_path} = bus {u.busnum} port {u.port} (QEMU usb-host hostbus={u.busnum} "
              f"hostport={u.port}): {ids} {name}; its bus address (devnum {u.devnum}) changes at every plug, the "
              f"port path does not; plugged in elsewhere it is found by usb:{ids}")
        ttys = [p.device for p in scan_serial(h) if p.backing_bus == "usb" and p.backing_id == u.port_path]
        if ttys:
            ev += f"; its serial port {', '.join(ttys)} can be given instead (serial:{ttys[0]}), not both"
        twins = _ambiguous(u, present)
        if twins:
            return [Finding("usb.identity", "USB identity", WARN,
                            ev + f"; usb:{ids} also matches {', '.join('usb:' + t for t in twins)}",
                            f"name it by its port path, usb:{u.port_path}: a vid:pid spec picks any of them",
                            device=device.id)]
        return [Finding("usb.identity", "USB identity", PASS, ev, device=device.id)]


register(UsbKind())
