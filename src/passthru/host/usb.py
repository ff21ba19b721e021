"""USB devices from /sys/bus/usb/devices.

Identity: the *port path* (the sysfs name, "1-1.2" = bus 1, root port 1, hub port 2) is stable across re-plugs into
the same port; ``devnum`` changes at every plug and is only good for /dev/bus/usb/BBB/DDD. Root hubs ("usb1") are
recognised so that callers never offer them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .pci import _parse_uevent
from .root import HostRoot

__all__ = ["UsbDevice", "UsbInterface", "scan_usb", "read_usb_device", "parse_port_path", "USB_HUB_CLASS"]

USB_HUB_CLASS = 0x09
_PORT_RE = re.compile(r"^(\d+)-(\d+(?:\.\d+)*)$")
_ROOT_RE = re.compile(r"^usb(\d+)$")
_BDF_IN_PATH = re.compile(r"/([0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])/usb\d+(?:/|$)")


def parse_port_path(text: str) -> tuple[int, tuple[int, ...]]:
    """"1-1.2" -> (1, (1, 2)). Raises ValueError naming the expected form."""
    m = _PORT_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a USB port path; use BUS-PORT[.PORT...] such as 1-1.2 (see `passthru usb`)")
    return int(m.group(1)), tuple(int(p) for p in m.group(2).split("."))


@dataclass(frozen=True, slots=True)
class UsbInterface:
    name: str  # "1-1.2:1.0"
    number: int | None
    interface_class: int | None
    driver: str | None


@dataclass(frozen=True, slots=True)
class UsbDevice:
    port_path: str  # "1-1.2"; "usb1" for a root hub
    busnum: int
    devnum: int | None
    vendor_id: int
    product_id: int
    bcd_device: int | None
    manufacturer: str | None
    product: str | None
    serial: str | None
    device_class: int | None
    speed_mbps: str | None  # "1.5", "12", "480", "5000", "10000", "20000"
    maxchild: int
    removable: str | None
    driver: str | None
    controller: str | None  # PCI address of the host controller, when it is a PCI device
    interfaces: tuple[UsbInterface, ...]

    @property
    def is_root_hub(self) -> bool:
        return self.port_path.startswith("usb")

    @property
    def is_hub(self) -> bool:
        return self.device_class == USB_HUB_CLASS or self.maxchild > 0

    @property
    def ids(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    @property
    def port(self) -> str:
        """Port within the bus ("1.2"), as QEMU's usb-host hostport= wants it; "0" for a root hub."""
        return "0" if self.is_root_hub else self.port_path.split("-", 1)[1]


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def read_usb_device(h: HostRoot, name: str) -> UsbDevice | None:
    d = f"{h.sys}/bus/usb/devices/{name}"
    root_m = _ROOT_RE.match(name)
    if not (root_m or _PORT_RE.match(name)):
        return None  # an interface ("1-1:1.0") or something else
    ue = _parse_uevent(h.read(d + "/uevent") or "")
    if not ue and not h.isdir(d):
        return None
    vid = pid = bcd = None
    prod = ue.get("PRODUCT")  # "627/1/0" (hex, no padding)
    if prod:
        parts = prod.split("/")
        if len(parts) == 3:
            vid, pid, bcd = (_hex(p) for p in parts)
    if vid is None:
        vid, pid = _hex(h.read(d + "/idVendor")), _hex(h.read(d + "/idProduct"))
        bcd = _hex(h.read(d + "/bcdDevice"))
    if vid is None or pid is None:
        return None
    busnum = h.read_int(d + "/busnum")
    if busnum is None:
        busnum = int(root_m.group(1)) if root_m else int(name.split("-", 1)[0])
    devnum = h.read_int(d + "/devnum")
    interfaces = []
    prefix = f"{root_m.group(1)}-0:" if root_m else name + ":"
    for entry in h.listdir(d):
        if entry.startswith(prefix):
            idir = f"{d}/{entry}"
            interfaces.append(
                UsbInterface(
                    name=entry,
                    number=_hex(h.read(idir + "/bInterfaceNumber")),
                    interface_class=_hex(h.read(idir + "/bInterfaceClass")),
                    driver=h.link_name(idir + "/driver"),
                )
            )
    target = h.readlink(d) or ""
    m = _BDF_IN_PATH.search(target)
    return UsbDevice(
        port_path=name,
        busnum=busnum,
        devnum=devnum,
        vendor_id=vid,
        product_id=pid,
        bcd_device=bcd,
        manufacturer=h.read(d + "/manufacturer"),
        product=h.read(d + "/product"),
        serial=h.read(d + "/serial"),
        device_class=_hex(h.read(d + "/bDeviceClass")),
        speed_mbps=h.read(d + "/speed"),
        maxchild=h.read_int(d + "/maxchild") or 0,
        removable=h.read(d + "/removable"),
        driver=ue.get("DRIVER") or h.link_name(d + "/driver"),
        controller=m.group(1) if m else None,
        interfaces=tuple(interfaces),
    )


def _sort_key(dev: UsbDevice) -> tuple:
    if dev.is_root_hub:
        return (dev.busnum, ())
    return (dev.busnum, tuple(int(p) for p in dev.port.split(".")))


def scan_usb(h: HostRoot) -> list[UsbDevice]:
    """Every USB device (root hubs included; callers filter with ``is_root_hub``), by bus then port."""
    out = []
    for name in h.listdir(h.sys + "/bus/usb/devices"):
        dev = read_usb_device(h, name)
        if dev is not None:
            out.append(dev)
    out.sort(key=_sort_key)
    return out
