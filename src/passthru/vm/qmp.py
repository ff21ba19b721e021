"""Hot plug over QMP (``qemu.qmp``): attach an :class:`Attachment` to a running (or ``-S`` paused) QEMU and detach it.

A synchronous API for the CLI; each :class:`QmpSession` runs its own asyncio loop around ``qemu.qmp.QMPClient``, and
every step is bounded by a timeout. Facts this module relies on (QEMU 7.2, checked by ``tests/test_qmp.py``):

- **Free ports, prelaunch and running alike**: a hot-pluggable port is a ``/machine/peripheral`` child of type
  ``pcie-root-port`` (or ``ioh3420``, ``xio3130-downstream``) whose ``hotplug`` property is not false; its secondary
  bus is its QOM child of type ``child<PCIE>`` (named like the port), and every device plugged into that bus shows as
  a ``child[N]`` link on it — a device whose unplug is still pending too. No link: the port is free. This is pure QOM
  and works before firmware ran; ``query-pci`` does not (it lists nothing behind a port until firmware numbered the
  bus, i.e. in ``-S`` prelaunch).
- **Multi-function order**: QEMU refuses a non-zero function once function 0 of the slot is present ("function 0
  already occupied ... cannot be exposed to guest"): function 0 goes last, and plugging it announces the slot.
- **Unplug**: ``device_del`` of any function unplugs the whole slot; with native PCIe hotplug and no guest driver
  ``DEVICE_DELETED`` arrives per function within milliseconds. With ACPI PCI hotplug (the q35 default) the guest OS
  must eject the slot; without one nothing happens and a second ``device_del`` says "already in the process of
  unplug" (``system_reset`` completes it). USB devices unplug at once in either mode. ``pci-serial`` keeps its
  chardev busy until it is gone.
- **Guest addresses**: once firmware numbered the port's bus (``query-pci`` secondary bus > 0; SeaBIOS does it about
  50 ms after ``cont``, showing 0xff while it scans), ``query-pci`` lists hot-plugged devices immediately.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from passthru.errors import HostError, NotFoundError, UsageError
from passthru.vm.attachment import Attachment, chardev_props, device_props, function_id

__all__ = ["PORT_TYPES", "QemuRefused", "QmpSession", "attach", "attach_devices", "detach", "plug_order"]

T = TypeVar("T")
PORT_TYPES = ("pcie-root-port", "ioh3420", "xio3130-downstream")
XHCI_TYPES = ("qemu-xhci", "nec-usb-xhci")
PERIPHERAL = "/machine/peripheral"
SPARE_PORTS = ("start QEMU with spare hot-plug ports, e.g. `-device pcie-root-port,id=rp9,chassis=9` "
               "(one per device to attach, each with its own chassis number)")
ROLLBACK_WAIT = 3.0


class QemuRefused(HostError):
    """QEMU answered a command with an error; ``error_class``/``desc`` are QEMU's."""

    def __init__(self, cmd: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU refused {cmd}: {error_class}: {desc}")
        self.cmd, self.error_class, self.desc = cmd, error_class, desc


def _address(socket: str) -> str | tuple[str, int]:
    """A unix socket path ("unix:" prefix allowed) or "host:port" / "tcp:host:port" / "[v6]:port"."""
    if socket.startswith("unix:"):
        return socket[5:]
    if socket.startswith("tcp:"):
        socket = socket[4:]
    elif "/" in socket:
        return socket
    m = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d+)", socket)
    if m:
        return (m.group(1) or "localhost", int(m.group(2)))
    return socket


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class QmpSession:
    """One QMP connection: ``with QmpSession("/run/vm.qmp") as s: s.execute("query-status")``."""

    def __init__(self, socket: str, timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._runner: asyncio.Runner | None = None
        self._client: QMPClient | None = None
        self._deleted: EventListener | None = None

    # -- plumbing -------------------------------------------------------------------------------------------------
    def __enter__(self) -> QmpSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self._runner = asyncio.Runner()
        try:
            self._run(self._connect(), "the QMP greeting", self.timeout)
        except BaseException:
            self.close()
            raise

    async def _connect(self) -> None:
        self._client = QMPClient("passthru")
        self._deleted = EventListener("DEVICE_DELETED")
        self._client.register_listener(self._deleted)
        try:
            await self._client.connect(_address(self.socket))
        except QMPError as e:
            cause = getattr(e, "exc", None)
            if isinstance(cause, FileNotFoundError):
                raise NotFoundError(f"QMP socket {self.socket} does not exist; start QEMU with "
                                    f"`-qmp unix:{self.socket},server=on,wait=off`") from None
            hint = ("; run as root or as the VM's user" if isinstance(cause, PermissionError) else
                    "; is the VM still running?" if isinstance(cause, ConnectionRefusedError) else "")
            raise HostError(f"QMP connection to {self.socket} failed: {cause or e}{hint}") from None

    def close(self) -> None:
        if self._runner is None:
            return
        client, runner = self._client, self._runner
        self._client = self._runner = None
        try:
            if client is not None:
                try:
                    runner.run(asyncio.wait_for(client.disconnect(), self.timeout))
                except (QMPError, OSError, EOFError, TimeoutError):  # QEMU went away or quit: nothing to tidy
                    pass
        finally:
            runner.close()

    def _run(self, aw: Awaitable[T], what: str, timeout: float) -> T:
        if self._runner is None:
            raise HostError(f"QMP session to {self.socket} is closed")

        async def bounded() -> T:
            return await asyncio.wait_for(aw, timeout)

        try:
            return self._runner.run(bounded())
        except TimeoutError:
            hint = (" (QEMU serves one QMP client per socket: is another client, e.g. libvirt, connected?)"
                    if what == "the QMP greeting" else "")
            raise HostError(f"QEMU at {self.socket} did not answer {what} within {timeout:g} s{hint}") from None
        except ExecuteError as e:
            raise QemuRefused(what, e.error.error.class_, e.error.error.desc) from None
        except (QMPError, OSError, EOFError) as e:
            raise HostError(f"QMP connection to {self.socket} lost during {what}: {e or type(e).__name__} "
                            "(did QEMU exit?)") from None

    # -- commands -------------------------------------------------------------------------------------------------
    def execute(self, cmd: str, args: dict | None = None) -> object:
        """Run one QMP command; QEMU errors become :class:`QemuRefused` ("QEMU refused <cmd>: <class>: <desc>")."""
        if self._client is None:
            raise HostError(f"QMP session to {self.socket} is not open")
        return self._run(self._client.execute(cmd, args), cmd, self.timeout)

    def _children(self, path: str) -> list[dict]:
        out = self.execute("qom-list", {"path": path})
        return out if isinstance(out, list) else []

    def peripheral_types(self) -> dict[str, str]:
        """id -> QOM type of every device with an id (``qom-list /machine/peripheral``)."""
        return {c["name"]: c["type"][6:-1] for c in self._children(PERIPHERAL) if c["type"].startswith("child<")}

    def peripherals(self) -> list[str]:
        """Ids of ``/machine/peripheral`` (devices given an id), natural order."""
        return sorted(self.peripheral_types(), key=_natural)

    def _bus_of(self, dev_id: str, kinds: tuple[str, ...]) -> str | None:
        for c in self._children(f"{PERIPHERAL}/{dev_id}"):
            if c["type"] in kinds:
                return str(c["name"])
        return None

    def _hotpluggable(self, port: str) -> bool:
        try:
            return self.execute("qom-get", {"path": f"{PERIPHERAL}/{port}", "property": "hotplug"}) is not False
        except QemuRefused:  # no such property (older QEMU): ports are hot-pluggable
            return True

    def port_devices(self, port: str) -> list[str]:
        """QOM paths of the devices on ``port``'s secondary bus (``child[N]`` links), pending unplugs included."""
        bus = self._bus_of(port, ("child<PCIE>", "child<PCI>")) or port
        links = [c["name"] for c in self._children(f"{PERIPHERAL}/{port}/{bus}") if c["name"].startswith("child[")]
        return [str(self.execute("qom-get", {"path": f"{PERIPHERAL}/{port}/{bus}", "property": n})) for n in links]

    def root_ports(self) -> list[str]:
        """Hot-pluggable PCIe ports with an id (``hotplug=off`` ones left out), in natural id order."""
        types = self.peripheral_types()
        return [p for p in sorted(types, key=_natural) if types[p] in PORT_TYPES and self._hotpluggable(p)]

    def free_root_ports(self) -> list[str]:
        """Hot-pluggable ports with nothing plugged (see the module docstring: QOM only, works in prelaunch)."""
        return [p for p in self.root_ports() if not self.port_devices(p)]

    def chardev_ids(self) -> list[str]:
        out = self.execute("query-chardev")
        return [str(c.get("label")) for c in (out if isinstance(out, list) else [])]

    def running(self) -> bool:
        status = self.execute("query-status")
        return bool(isinstance(status, dict) and status.get("running"))

    def hotplug_mode(self) -> str:
        """"acpi" | "native" | "unknown": how PCIe ports announce hot plug, from the ``acpi-pci-hotplug-with-bridge-
        support`` property of the ICH9-LPC (q35) or PIIX4_PM (pc) device, found under ``/machine/unattached``."""
        for c in self._children("/machine/unattached"):
            if c["type"] in ("child<ICH9-LPC>", "child<PIIX4_PM>"):
                try:
                    on = self.execute("qom-get", {"path": f"/machine/unattached/{c['name']}",
                                                  "property": "acpi-pci-hotplug-with-bridge-support"})
                except QemuRefused:
                    return "unknown"
                if on is True:
                    return "acpi"
                return "native" if c["type"] == "child<ICH9-LPC>" else "unknown"
        return "unknown"

    def guest_addresses(self) -> dict[str, tuple[str, int | None]]:
        """qdev id -> (guest address "0000:BB:SS.F", secondary bus of a bridge or None), from ``query-pci``; only
        behind bridges firmware numbered (secondary 0: not yet; 0xff: while SeaBIOS scans)."""
        out: dict[str, tuple[str, int | None]] = {}

        def walk(devices: Iterable[dict]) -> None:
            for d in devices:
                bridge = d.get("pci_bridge")
                sec = bridge["bus"]["secondary"] if bridge else None
                if d.get("qdev_id"):
                    out[d["qdev_id"]] = (f"0000:{d['bus']:02x}:{d['slot']:02x}.{d['function']}", sec)
                if bridge and sec not in (0, 0xFF):
                    walk(bridge.get("devices", []))

        buses = self.execute("query-pci")
        for bus in buses if isinstance(buses, list) else []:
            walk(bus["devices"])
        return out

    def unplug(self, ids: list[str], timeout: float) -> list[str]:
        """``device_del`` ``ids[0]`` (QEMU unplugs the whole slot) and wait up to ``timeout`` s for DEVICE_DELETED
        of every id; ids left once the first is gone get their own ``device_del``. Returns the ids still in the VM."""
        assert self._deleted is not None
        self._deleted.clear()
        deadline = time.monotonic() + timeout
        pending, asked = set(ids), set[str]()
        while pending:
            ask = [i for i in ids if i in pending and i not in asked]
            for dev in ask if asked else ask[:1]:
                asked.add(dev)
                try:
                    self.execute("device_del", {"id": dev})
                except QemuRefused as e:
                    if e.error_class == "DeviceNotFound":
                        pending.discard(dev)
                    elif "already in the process of unplug" not in e.desc:
                        raise
            left = deadline - time.monotonic()
            if not pending & asked:  # the asked ones are gone: ask the leftovers next (each id is asked once)
                if pending and left > 0:
                    continue
                break
            if left <= 0:
                break
            try:
                self._run(self._wait_deleted(pending, asked), "DEVICE_DELETED", left)
            except HostError:
                break
        return [i for i in ids if i in pending and i in self.peripheral_types()]

    async def _wait_deleted(self, pending: set[str], asked: set[str]) -> None:
        """Take DEVICE_DELETED events off ``pending`` until none of the ``asked`` ids is pending."""
        assert self._deleted is not None
        while pending & asked:
            data = (await self._deleted.get()).get("data")
            pending.discard(data.get("device") if isinstance(data, dict) else None)


def plug_order(devices: list[dict]) -> list[dict]:
    """Hot-plug order: function 0 of a slot (``addr`` "...0" or none) after the slot's other functions."""
    return sorted(devices, key=lambda d: str(d.get("addr", "0x0.0")).rpartition(".")[2] in ("", "0"))


def _chardev_args(att: Attachment) -> list[dict]:
    props = chardev_props(att)
    if not props:
        return []
    return [{"id": props["id"], "backend": {"type": "serial", "data": {"device": props["path"]}}}]


def _plug(s: QmpSession, devices: list[dict], chardevs: Iterable[dict]) -> list[str]:
    """chardev-add then device_add in the given order, then check every id is in ``/machine/peripheral`` (and in
    ``query-pci`` when its port's bus is numbered). Failure: undo (best effort) and raise HostError."""
    added: list[str] = []
    chars: list[str] = []
    try:
        for c in chardevs:
            s.execute("chardev-add", c)
            chars.append(c["id"])
        for d in devices:
            s.execute("device_add", d)
            added.append(d["id"])
        present = s.peripheral_types()
        missing = [i for i in added if i not in present]
        if missing:
            raise HostError(f"QEMU accepted {', '.join(missing)} but does not list it in {PERIPHERAL}")
        pci = s.guest_addresses()
        for d in devices:
            port = pci.get(str(d.get("bus")))
            if port and port[1] not in (None, 0, 0xFF) and d["id"] not in pci:
                raise HostError(f"{d['id']} is on {d['bus']} (guest bus {port[1]:02x}) but query-pci does not "
                                "list it")
    except HostError as e:
        left = _undo(s, added, chars)
        undo = f"; still in the VM after the undo: {', '.join(left)}" if left else ""
        raise HostError(f"hot plug failed: {e}{undo}") from None
    return added


def _undo(s: QmpSession, added: list[str], chars: list[str]) -> list[str]:
    """Best-effort rollback of a half-done hot plug; returns the ids and chardevs still in the VM."""
    left, kept = list(added), list(chars)
    try:
        left = s.unplug(list(reversed(added)), min(s.timeout, ROLLBACK_WAIT)) if added else []
        for c in chars:
            if not left:  # a chardev stays busy while its device is there
                s.execute("chardev-remove", {"id": c})
                kept.remove(c)
    except HostError:
        pass
    return left + kept


def attach_devices(socket: str, devices: list[dict], *, chardevs: Iterable[dict] = (),
                   timeout: float = 10.0) -> list[str]:
    """Add ``chardevs`` (QMP chardev-add arguments) and ``devices`` (device_add properties, bus included) in the
    order given, verified as in :func:`attach`; returns the ids added."""
    with QmpSession(socket, timeout) as s:
        return _plug(s, devices, chardevs)


def _pick_port(s: QmpSession, port: str | None) -> str:
    free = s.free_root_ports()
    if port is None:
        if not free:
            ports = s.root_ports()
            used = f" (all in use: {', '.join(ports)})" if ports else ""
            raise UsageError(f"no free hot-plug port in the VM{used}; {SPARE_PORTS}")
        return free[0]
    if port in free:
        return port
    types = s.peripheral_types()
    if port not in types:
        raise UsageError(f"port {port} does not exist in the VM; free ports: {', '.join(free) or 'none'}")
    if types[port] not in PORT_TYPES or port not in s.root_ports():
        what = "has hotplug=off" if types[port] in PORT_TYPES else f"is a {types[port]}, not a hot-pluggable PCIe port"
        raise UsageError(f"{port} {what}; free ports: {', '.join(free) or 'none'}")
    held = ", ".join(p.rsplit("/", 1)[-1] for p in s.port_devices(port))
    raise UsageError(f"port {port} is in use by {held}; free ports: {', '.join(free) or 'none'}")


def _usb_bus(s: QmpSession, port: str | None) -> str:
    types = s.peripheral_types()
    ctrls = [c for c in sorted(types, key=_natural) if types[c] in XHCI_TYPES]
    if port is not None:
        ctrls = [c for c in ctrls if port in (c, f"{c}.0")]
    if not ctrls:
        which = f"xHCI controller {port}" if port else "xHCI (USB 3) controller"
        raise UsageError(f"no {which} in the VM; start QEMU with `-device qemu-xhci,id=xhci` (on q35 you may put it "
                         "on a root port: `bus=rpN`)")
    return s._bus_of(ctrls[0], ("child<usb-bus>",)) or f"{ctrls[0]}.0"


def attach(socket: str, att: Attachment, *, port: str | None = None, timeout: float = 10.0) -> dict:
    """Hot plug ``att`` into the VM: PCI kinds on a free PCIe port (``port`` picks one), usb on an xHCI bus (``port``
    may name the controller), serial as chardev + pci-serial. Returns {"port", "ids", "pci"}: the bus used, the qdev
    ids (function 0 first) and their guest addresses (None until firmware numbered the bus, and for usb)."""
    if att.kind == "serial" and att.serial_bus == "isa":
        raise UsageError(f"{att.id}: isa-serial cannot be hot plugged (ISA has no hot plug); use a pci serial bus")
    with QmpSession(socket, timeout) as s:
        ids = [d["id"] for d in device_props(att, None)]
        there = [i for i in ids if i in s.peripheral_types()]
        if there:
            raise UsageError(f"{', '.join(there)} is already in the VM; detach it first")
        bus = _usb_bus(s, port) if att.kind == "usb" else _pick_port(s, port)
        _plug(s, plug_order(device_props(att, bus)), _chardev_args(att))
        pci = s.guest_addresses() if att.kind != "usb" else {}
    return {"port": bus, "ids": ids, "pci": [pci[i][0] if i in pci else None for i in ids]}


def _timeout_message(att: Attachment, left: list[str], timeout: float, mode: str, running: bool) -> str:
    head = f"{', '.join(left)} not unplugged within {timeout:g} s; the device is still in the VM"
    if mode == "acpi":
        why = ("this VM uses ACPI PCI hot plug (the q35 default): the guest OS has to eject the slot, which never "
               "happens without a booted guest with ACPI hot-plug support"
               + ("" if running else " (the VM is not even running)")
               + "; the unplug request stays pending (a guest reboot or `system_reset` completes it). For unplug "
               "without guest help start QEMU with `-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off` "
               "(native PCIe hot plug)")
    elif mode == "native":
        why = ("with native PCIe hot plug a guest driver has 5 s to refuse or finish the unplug; a busy or hung "
               "guest keeps the device; retry with a longer timeout")
    else:
        why = "the guest did not release it; retry with a longer timeout"
    serial = f"; chardev chr-{att.id} kept" if att.kind == "serial" else ""
    return f"{head}: {why}{serial}"


def detach(socket: str, att: Attachment, *, timeout: float = 10.0) -> dict:
    """``device_del`` function 0 (QEMU unplugs the slot), wait up to ``timeout`` s for DEVICE_DELETED of every
    function, then ``chardev-remove`` a serial port's chardev — also one left behind by an earlier detach that timed
    out (then ``ids`` is empty). Returns {"ids", "chardev", "mode"}."""
    n = max(1, len(att.functions)) if att.kind == "pci" else 1
    props = chardev_props(att)
    with QmpSession(socket, timeout) as s:
        present = s.peripheral_types()
        ids = [function_id(att, i) for i in range(n) if function_id(att, i) in present]
        chardev = props["id"] if props and props["id"] in s.chardev_ids() else None
        if not ids and not chardev:
            raise NotFoundError(f"{att.id} is not in the VM at {socket} (devices: "
                                f"{', '.join(s.peripherals()) or 'none'})")
        mode = s.hotplug_mode()
        left = s.unplug(ids, timeout) if ids else []
        if left:
            raise HostError(_timeout_message(att, left, timeout, mode if att.kind != "usb" else "unknown",
                                             s.running()))
        if chardev:
            s.execute("chardev-remove", {"id": chardev})
    return {"ids": ids, "chardev": chardev, "mode": mode}
