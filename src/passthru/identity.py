"""Device identities, as the inventory stores them and the JSON documents show them: ``BUS:KEY``.

    pci:0000:01:00.0        a PCI function (its address)
    usb:1-2.1               a USB device by port path (bus-ports)
    serial:/dev/ttyS1       a serial port (its device node)
    mdev:4b20d080-...       a mediated device (vGPU) by UUID

Code that needs the bus or the key of an identity asks :func:`parse` (or :func:`pci_address` for the common "is it a
PCI function, and which") instead of slicing ``pci:`` / ``usb:`` prefixes by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUSES", "Identity", "parse", "pci_address", "pci"]

BUSES = ("pci", "usb", "serial", "mdev")


@dataclass(frozen=True)
class Identity:
    bus: str
    key: str

    def __str__(self) -> str:
        return f"{self.bus}:{self.key}"


def parse(text: str) -> Identity:
    """``"pci:0000:01:00.0"`` -> Identity("pci", "0000:01:00.0"); ValueError for text with no known bus prefix."""
    bus, sep, key = text.partition(":")
    if not sep or bus not in BUSES or not key:
        raise ValueError(f"{text!r} is not a device identity ({', '.join(b + ':...' for b in BUSES)})")
    return Identity(bus, key)


def pci_address(text: str) -> str | None:
    """The PCI address of a ``pci:`` identity; None for any other identity."""
    return text[4:] if text.startswith("pci:") else None


def pci(address: str) -> str:
    """The identity of the PCI function at ``address``."""
    return f"pci:{address}"
