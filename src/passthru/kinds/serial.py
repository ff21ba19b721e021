"""Serial ports: a host tty handed to a VM through QEMU's ``-chardev serial,path=`` and a ``pci-serial`` /
``isa-serial`` device (``vm/``), or libvirt's ``<serial type='dev'>``.

Discovery and the inventory already keep out what must never be offered: ghost 8250 ports (``type`` 0, no UART
behind them) and the host's consoles (``/sys/class/tty/console/active``, ``console=``). USB serial adapters
(``/dev/ttyUSB*``, ``/dev/ttyACM*``) are offered like UARTs. This kind adds what depends on the moment:

- a port another process holds open (a getty, ``screen``, ``minicom``) is refused at ``assign`` and ``attach``: two
  readers on one tty each get part of the bytes. The error names the process and how to stop it
  (``systemctl stop serial-getty@ttyS1`` when its cgroup names that unit).
- a USB serial adapter goes to a VM one way: as ``serial:/dev/ttyUSB0`` (host driver, chardev) or as its USB device
  (``usb:1-1.3``, ``usb-host`` takes it from the host driver and the tty disappears) - never both.

Doctor checks per serial device: ``serial.console`` (fail: a console is never given), ``serial.open`` (fail when a
process holds it open; skip when the open files of some processes cannot be read), ``serial.port`` (what backs it).
"""

from __future__ import annotations

from ..discovery import Device, Inventory
from ..errors import UsageError
from ..findings import FAIL, PASS, SKIP, Finding, unreadable_fix
from ..host.openfiles import OpenScan, char_devnum, describe, openers
from ..identity import parse as parse_identity
from ..host.root import HostRoot
from ..host.serial import SerialPort
from .base import DeviceKind, register

__all__ = ["SerialKind", "open_scan", "stop_hint", "check_assign"]

_GETTYS = ("agetty", "getty", "mgetty", "getty.vc", "mingetty")


def open_scan(h: HostRoot, port: SerialPort) -> OpenScan:
    """Who holds the port's /dev node open (matched by path, and by 4:65-style device number on a live host)."""
    return openers(h, port.device, char_devnum(h, f"{h.sys}/class/tty/{port.name}"))


def stop_hint(port: SerialPort, scan: OpenScan) -> str:
    """"systemctl stop serial-getty@ttyS1" when a systemd unit (or a getty) holds it, else "kill PID"."""
    first = scan.openers[0]
    if first.unit:
        return f"systemctl stop {first.unit.removesuffix('.service')}"
    if (first.comm or "") in _GETTYS:
        return f"systemctl stop serial-getty@{port.name}"
    return "close it there, or kill " + " ".join(str(o.pid) for o in scan.openers)


def open_refusal(h: HostRoot, ident: str, port: SerialPort) -> str | None:
    """The one-line refusal when a process holds ``port`` open, else None."""
    scan = open_scan(h, port)
    if not scan.openers:
        return None
    return f"{ident}: open by {describe(scan)}: stop it first ({stop_hint(port, scan)})"


def check_assign(h: HostRoot, inv: Inventory, holders: dict[str, str | None], vm: str, idents: list[str],
                 *, states: dict[str, str] | None = None) -> None:
    """Refuse (UsageError, exit 2) serial identities in ``idents`` that another process holds open, and USB serial
    adapters whose USB device is held. ``holders``: identity -> VM holding it (None when free). A port this VM
    already holds is not scanned at assign (its QEMU may be the opener); at attach (``states`` given) a port still
    ``reserved`` is."""
    for ident in idents:
        if parse_identity(ident).bus != "serial":
            continue
        port = next((p for p in inv.serial if p.device == parse_identity(ident).key), None)
        if port is None:
            continue
        if port.backing_bus == "usb" and port.backing_id:
            usb = f"usb:{port.backing_id}"
            if holders.get(usb):
                raise UsageError(f"{ident}: its USB adapter {usb} is assigned to VM {holders[usb]!r}: an adapter goes "
                                 f"to one VM one way (release {usb} first, or give that VM the port)")
        scan_it = states.get(ident) == "reserved" if states is not None else holders.get(ident) is None
        if scan_it:
            why = open_refusal(h, ident, port)
            if why:
                raise UsageError(why)


class SerialKind(DeviceKind):
    name = "serial"
    hotpluggable = True

    def checks(self, h: HostRoot, device: Device) -> list[Finding]:
        port = device.fact
        if device.bus != "serial" or not isinstance(port, SerialPort):
            return []
        out = []
        if port.console:
            out.append(Finding("serial.console", "Not a host console", FAIL,
                               f"{port.device} is a console of this host (/sys/class/tty/console/active or console= "
                               "on the kernel command line): passthru never gives it to a VM",
                               f"move the console off {port.name} (console= in the boot configuration) and reboot, "
                               "or use another port", device=device.id))
        else:
            out.append(Finding("serial.console", "Not a host console", PASS, f"{port.device} is no console",
                               device=device.id))
        scan = open_scan(h, port)
        if scan.openers:
            out.append(Finding("serial.open", "Not open by another process", FAIL,
                               f"{port.device} is open by {describe(scan)}",
                               f"stop it first ({stop_hint(port, scan)}); `passthru assign` refuses the port while "
                               "it is open", device=device.id))
        elif not scan.complete:
            out.append(Finding("serial.open", "Not open by another process", SKIP,
                               f"the open files of {scan.unreadable} of {scan.processes} processes are not readable "
                               "here", unreadable_fix(h, "the open files of other processes (/proc/PID/fd)"),
                               device=device.id))
        else:
            out.append(Finding("serial.open", "Not open by another process", PASS,
                               f"no process holds {port.device} open ({scan.processes} processes looked at)",
                               device=device.id))
        out.append(Finding("serial.port", "Serial port", PASS, _backing(port), device=device.id))
        return out


def _backing(port: SerialPort) -> str:
    if port.backing_bus == "usb":
        ids = f"{port.usb_vendor_id or 0:04x}:{port.usb_product_id or 0:04x}"
        return (f"{port.device}: USB serial adapter {ids} on usb:{port.backing_id} (driver {port.driver or 'none'}); "
                f"ttyUSB/ttyACM numbers follow plug order, the port path does not: usb:{port.backing_id} gives the "
                "VM the adapter itself instead")
    uart = {4: "16550A", 1: "8250", 2: "16450", 3: "16550", 5: "Cirrus", 6: "16650", 7: "16650V2",
            8: "16750"}.get(port.uart_type or -1, f"UART type {port.uart_type}" if port.uart_type else "a UART")
    where = f"{port.backing_bus} {port.backing_id}" if port.backing_bus else "the legacy 8250 probe"
    irq = f" irq {port.irq}" if port.irq else ""
    return f"{port.device}: {uart} on {where}{irq} (driver {port.driver or 'none'})"


register(SerialKind())
