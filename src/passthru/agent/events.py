"""Hot-plug events: where they come from, and the thread that turns bursts of them into one inventory refresh.

On the live host the source is the kernel's uevent netlink socket through pyudev
(``Monitor.from_netlink(ctx, source="kernel")``: it works without udevd, in containers and early at boot). Only
``pci``, ``usb`` and serial ``tty`` devices matter: a function added or removed (hot plug, a GPU falling off the
bus, VFs created by writing ``sriov_numvfs``), a driver bound or unbound, a USB device plugged into another port.

Events come in bursts (64 VFs are 64+ events; a USB device is a device and its interfaces), so the watcher waits
for ``debounce`` seconds of quiet (at most ``max_delay`` after the first event) and then refreshes once. Tests and
fixture roots use :class:`QueueSource` to feed events through the same thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

__all__ = ["HotplugEvent", "EventSource", "QueueSource", "UdevSource", "Watcher", "OVERFLOW", "SUBSYSTEMS"]

log = logging.getLogger("passthru.agent")
SUBSYSTEMS = ("pci", "usb", "tty")
_SERIAL_TTYS = ("ttyS", "ttyUSB", "ttyACM", "ttyAMA")


@dataclass(frozen=True, slots=True)
class HotplugEvent:
    action: str  # add | remove | change | bind | unbind | move
    subsystem: str  # pci | usb | tty
    name: str  # 0000:86:00.0, 1-1.3, 1-1.3:1.0, ttyUSB0

    def relevant(self) -> bool:
        if self.subsystem == "tty":
            return self.name.startswith(_SERIAL_TTYS)
        return self.subsystem in SUBSYSTEMS


OVERFLOW = HotplugEvent("overflow", "kernel", "events were dropped")  # the socket overflowed: refresh anyway


class EventSource(Protocol):
    def poll(self, timeout: float) -> HotplugEvent | None: ...

    def close(self) -> None: ...


class QueueSource:
    """Events put by hand (tests, fixture roots)."""

    def __init__(self) -> None:
        self.q: queue.Queue[HotplugEvent] = queue.Queue()

    def put(self, action: str, subsystem: str, name: str) -> None:
        self.q.put(HotplugEvent(action, subsystem, name))

    def poll(self, timeout: float) -> HotplugEvent | None:
        try:
            return self.q.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        pass


class UdevSource:
    """Kernel uevents through pyudev (no udevd needed). Raises ImportError/OSError when unavailable."""

    def __init__(self) -> None:
        import pyudev

        self._ctx = pyudev.Context()
        self._mon = pyudev.Monitor.from_netlink(self._ctx, source="kernel")
        self._mon.start()

    def poll(self, timeout: float) -> HotplugEvent | None:
        try:
            dev = self._mon.poll(timeout=max(timeout, 0.0))
        except OSError:  # ENOBUFS: the burst was larger than the socket buffer
            return OVERFLOW
        if dev is None:
            return None
        return HotplugEvent(dev.action or "change", dev.subsystem or "", dev.sys_name or "")

    def close(self) -> None:
        try:
            self._mon.stop()
        except Exception:  # noqa: BLE001 - closing a netlink socket has nothing useful to report
            pass


class Watcher:
    """Reads ``source`` in a thread; after a burst of relevant events calls ``on_burst(events)`` once."""

    def __init__(self, source: EventSource, on_burst: Callable[[list[HotplugEvent]], None], *,
                 debounce: float = 0.2, max_delay: float = 2.0) -> None:
        self.source = source
        self.on_burst = on_burst
        self.debounce = debounce
        self.max_delay = max_delay
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="passthru-hotplug", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.source.close()

    def _run(self) -> None:
        pending: list[HotplugEvent] = []  # the first 1000 of a burst; the refresh reads the whole host anyway
        first = last = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = 0.25 if not pending else max(0.0, min(last + self.debounce, first + self.max_delay) - now)
            try:
                ev = self.source.poll(min(timeout, 0.25))
            except Exception as e:  # noqa: BLE001 - the watcher must outlive a bad event
                log.warning("hot-plug source failed: %s", e)
                ev = None
                time.sleep(0.25)
            now = time.monotonic()
            if ev is not None and (ev is OVERFLOW or ev.relevant()):
                if not pending:
                    first = now
                if len(pending) < 1000:
                    pending.append(ev)
                last = now
            if pending and (now - last >= self.debounce or now - first >= self.max_delay):
                burst, pending = pending, []
                try:
                    self.on_burst(burst)
                except Exception:  # noqa: BLE001
                    log.exception("refresh after hot-plug events failed")
