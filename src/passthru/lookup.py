"""Resolve what an operator typed (a PCI address, USB port path or serial port) to one discovered device."""

from __future__ import annotations

from .discovery import Device, Inventory
from .errors import NotFoundError, UsageError
from .host.pci import parse_address
from .host.usb import parse_port_path

__all__ = ["resolve_device"]


def resolve_device(inv: Inventory, ident: str) -> Device:
    text = ident.strip()
    if text.startswith(("tty", "/dev/")):
        dev_path = text if text.startswith("/dev/") else "/dev/" + text
        for p in inv.serial:
            if p.device == dev_path:
                dev = inv.by_id(dev_path)
                if dev is None:
                    raise NotFoundError(f"{p.name} is a ghost port (no UART behind it); pick a real port from "
                                        "`passthru serial`")
                return dev
        raise NotFoundError(f"no serial port {dev_path} on this host; see `passthru serial`")
    if "-" in text and ":" not in text:
        try:
            parse_port_path(text)
        except ValueError as e:
            raise UsageError(str(e)) from None
        dev = inv.by_id(text)
        if dev is None:
            raise NotFoundError(f"no USB device at port {text}; see `passthru usb` for port paths")
        return dev
    try:
        address = str(parse_address(text))
    except ValueError as e:
        raise UsageError(f"{e}; or a USB port path (1-1.2) or a serial port (ttyS1)") from None
    dev = inv.by_id(address)
    if dev is None:
        raise NotFoundError(f"no PCI device {address} on this host; see `passthru devices --all`")
    return dev
