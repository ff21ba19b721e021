"""What an operator may name when assigning a device to a VM (``passthru assign VM SPEC...``), parsed and checked
without touching the host.

    0000:86:00.0 | 86:00.0          a PCI function (its IOMMU group's other endpoints come along)
    gpu | nic | nvme | ...          a free device of that kind        (with --numa N: on that NUMA node)
    MODEL                           a free device of a custom model   (``passthru model add``)
    usb:VVVV:PPPP[:SERIAL]          a USB device by vendor:product (and serial number)
    usb:BUS-PORT[.PORT...]          a USB device by its port path, e.g. usb:1-1.3 (stable across re-plugging)
    serial:/dev/ttyS1               a serial port (also /dev/ttyUSB0)
    mdev:UUID                       a mediated device (vGPU) instance
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError
from ..host.pci import normalize_address
from ..names import MODEL_NAME

__all__ = ["Spec", "parse_spec", "FORMS"]

FORMS = ("PCI address (0000:86:00.0)", "kind or model name (gpu)", "usb:VVVV:PPPP[:SERIAL]", "usb:BUS-PORT",
         "serial:/dev/ttyS1", "mdev:UUID")
_USB_ID = re.compile(r"^usb:([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?::(\S+))?$")
_USB_PORT = re.compile(r"^usb:(\d{1,3})-(\d{1,3}(?:\.\d{1,3}){0,6})$")
_SERIAL = re.compile(r"^serial:(/dev/tty[A-Za-z]+[0-9]+)$")
_MDEV = re.compile(r"^mdev:([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")
_NAME = MODEL_NAME
_PCI_LIKE = re.compile(r"^[0-9a-fA-F]*:?[0-9a-fA-F]+:[0-9a-fA-F]+\.[0-9a-fA-F]+$")


@dataclass(frozen=True, slots=True)
class Spec:
    text: str  # as typed
    form: str  # "pci" | "name" | "usb-id" | "usb-port" | "serial" | "mdev"
    value: str  # normalized: address, name, "vvvv:pppp[:serial]", "1-1.3", "/dev/ttyS1", uuid (lowercase)

    @property
    def identity(self) -> str | None:
        """The inventory identity this spec names directly (None for names and usb ids: they are looked up)."""
        return {"pci": f"pci:{self.value}", "usb-port": f"usb:{self.value}", "serial": f"serial:{self.value}",
                "mdev": f"mdev:{self.value}"}.get(self.form)


def parse_spec(text: str) -> Spec:
    """One SPEC, or UsageError listing the accepted forms."""
    t = text.strip()
    if _PCI_LIKE.match(t):
        try:
            return Spec(text, "pci", normalize_address(t))
        except ValueError as e:
            raise UsageError(str(e)) from None
    if t.startswith("usb:"):
        if m := _USB_PORT.match(t):
            return Spec(text, "usb-port", f"{int(m.group(1))}-{m.group(2)}")
        if m := _USB_ID.match(t):
            return Spec(text, "usb-id", f"{m.group(1).lower()}:{m.group(2).lower()}"
                                        + (f":{m.group(3)}" if m.group(3) else ""))
        raise UsageError(f"{text!r}: a USB device is usb:VVVV:PPPP[:SERIAL] (e.g. usb:0403:6001) or usb:BUS-PORT "
                         "(e.g. usb:1-1.3); `passthru usb` lists them")
    if t.startswith("serial:"):
        if m := _SERIAL.match(t):
            return Spec(text, "serial", m.group(1))
        raise UsageError(f"{text!r}: a serial port is serial:/dev/ttyS1 or serial:/dev/ttyUSB0; "
                         "`passthru serial` lists them")
    if t.startswith("mdev:"):
        if m := _MDEV.match(t):
            return Spec(text, "mdev", m.group(1).lower())
        raise UsageError(f"{text!r}: a mediated device is mdev:UUID (e.g. mdev:4b20d080-1b54-4048-85b3-"
                         "a6a62d165c01); `passthru devices --kind vgpu` lists them")
    if _NAME.match(t):
        return Spec(text, "name", t)
    raise UsageError(f"{text!r} is not a device spec; use one of: {', '.join(FORMS)}")
