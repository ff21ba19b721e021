"""Serial ports from /sys/class/tty.

Only hardware ports are listed: 8250/16550 UARTs (ttyS*), USB serial adapters (ttyUSB*, ttyACM*) and other ttys with
a backing device. Each says what backs it (platform, PNP, PCI or USB), whether it is a *ghost* (an 8250 port the
kernel registered without a UART behind it: ``type`` 0 = PORT_UNKNOWN) and whether it is a console (listed in
/sys/class/tty/console/active, or named by ``console=`` on the kernel command line).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .pci import _FULL_BDF_RE
from .root import HostRoot

__all__ = ["SerialPort", "scan_serial", "console_ttys"]

_USB_PORT_RE = re.compile(r"^\d+-\d+(?:\.\d+)*$")
_TTY_RE = re.compile(r"^(ttyS|ttyUSB|ttyACM|ttyAMA|ttyMFD|ttyXR|ttyTHS)\d+$")
PORT_UNKNOWN = 0


@dataclass(frozen=True, slots=True)
class SerialPort:
    name: str  # "ttyS1"
    device: str  # "/dev/ttyS1" (host path)
    ghost: bool
    console: bool
    backing_bus: str | None  # "platform", "pnp", "pci", "usb", "acpi", or None
    backing_id: str | None  # PCI address, PNP id ("00:04"), USB port path ("1-1.3"), platform name
    driver: str | None
    uart_type: int | None  # 8250 PORT_* number (4 = 16550A); None for non-8250
    io_port: str | None
    irq: int | None
    usb_vendor_id: int | None = None
    usb_product_id: int | None = None
    usb_serial: str | None = None

    @property
    def kind(self) -> str:
        if self.name.startswith(("ttyUSB", "ttyACM")):
            return "usb-serial"
        return "uart"


def console_ttys(h: HostRoot) -> set[str]:
    """tty names the kernel uses as consoles: /sys/class/tty/console/active plus console= arguments."""
    names = set((h.read(h.sys + "/class/tty/console/active") or "").split())
    for arg in (h.read(h.proc + "/cmdline") or "").split():
        if arg.startswith("console="):
            names.add(arg[8:].split(",", 1)[0])
    return names


def _backing(h: HostRoot, tty_dir: str) -> tuple[str | None, str | None, str | None]:
    """(bus, id, sysfs dir) of the hardware behind a tty, from the real path of its sysfs directory.

    Kernels >= 6.5 put serial-base "controller" and "port" devices between the hardware and the tty
    (pnp0/00:00/00:00:0/00:00:0.0/tty/ttyS0); older ones do not (pnp0/00:04/tty/ttyS0). Walk up past them.
    """
    real = h.realpath(tty_dir)
    parts = real.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if _USB_PORT_RE.match(parts[i]):
            return "usb", parts[i], "/".join(parts[: i + 1])  # the USB device (not the interface)
    devices_root = h.sys + "/devices"
    p = os.path.dirname(os.path.dirname(real))  # strip "tty/<name>"
    while p.startswith(devices_root + "/"):
        bus = h.link_name(p + "/subsystem")
        name = os.path.basename(p)
        if bus is None:
            if os.path.basename(os.path.dirname(p)) == "platform":
                return "platform", name, p
        elif bus not in ("serial-base", "tty", "usb-serial"):
            return bus, name, p
        p = os.path.dirname(p)
    return None, None, None


def scan_serial(h: HostRoot) -> list[SerialPort]:
    consoles = console_ttys(h)
    base = h.sys + "/class/tty"
    out = []
    for name in h.listdir(base):
        if not _TTY_RE.match(name):
            continue
        d = f"{base}/{name}"
        bus, ident, hw_dir = _backing(h, d)
        uart_type = h.read_int(d + "/type")
        ghost = name.startswith("ttyS") and uart_type == PORT_UNKNOWN
        vid = pid = usb_serial = None
        if bus == "usb" and hw_dir is not None:
            vid, pid = h.read_hex(hw_dir + "/idVendor"), h.read_hex(hw_dir + "/idProduct")
            usb_serial = h.read(hw_dir + "/serial")
            driver = h.link_name(d + "/device/driver")  # ftdi_sio, cdc_acm: the interface's driver
        else:
            driver = h.link_name(hw_dir + "/driver") if hw_dir else None
        out.append(
            SerialPort(
                name=name,
                device=f"/dev/{name}",
                ghost=ghost,
                console=name in consoles,
                backing_bus=bus,
                backing_id=ident,
                driver=driver,
                uart_type=uart_type,
                io_port=h.read(d + "/port"),
                irq=h.read_int(d + "/irq"),
                usb_vendor_id=vid,
                usb_product_id=pid,
                usb_serial=usb_serial,
            )
        )
    out.sort(key=lambda p: (re.sub(r"\d+$", "", p.name), int(re.search(r"\d+$", p.name).group())))
    return out
