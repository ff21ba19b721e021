"""The kernel boundary of device takeover: the only code in passthru that writes PCI driver bindings.

Verbs are one write each, as the kernel's sysfs ABI defines them (Documentation/ABI/testing/sysfs-bus-pci):

    set_override(addr, "vfio-pci")   /sys/bus/pci/devices/<addr>/driver_override   ("\\n" clears it)
    unbind(addr)                     /sys/bus/pci/devices/<addr>/driver/unbind      (<addr>)
    probe(addr)                      /sys/bus/pci/drivers_probe                     (<addr>)
    bind(addr, driver)               /sys/bus/pci/drivers/<driver>/bind             (<addr>)
    modprobe(module)                 `modprobe <module>` (argument list, timeout)

Each verb does nothing when the device is already in the target state, and :meth:`Kernel.wait_for` polls a bounded
time. Never ``new_id``: it makes a driver claim every device with the same IDs (how other tools cut hosts off
their network).

:class:`Kernel` writes through the host root. Tests substitute a subclass whose :meth:`Kernel.write` simulates the
kernel on a fixture tree (and can be made to fail at any write); the real-kernel lab runs this class itself.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Callable

from ..errors import HostError, UsageError
from ..failpoints import hit
from ..host.root import HostRoot

__all__ = ["Kernel", "VFIO_PCI", "WAIT_SECONDS"]

VFIO_PCI = "vfio-pci"
WAIT_SECONDS = 10.0  # a GPU's reset on unbind can take seconds; vfio-pci's probe is fast
MODPROBE_TIMEOUT = 60.0

_ERRNO_HINTS = {
    errno.ENODEV: "the driver does not claim this device",
    errno.EBUSY: "the device or its IOMMU group is in use",
    errno.EINVAL: "the kernel rejected the value",
    errno.EPERM: "permission denied (run as root)",
    errno.EACCES: "permission denied (run as root)",
    errno.ENOENT: "the device or driver is gone",
}


class Kernel:
    """Sysfs writes and module loading for one host root. ``wait_seconds`` bounds every wait."""

    def __init__(self, h: HostRoot, wait_seconds: float = WAIT_SECONDS, poll: float = 0.02) -> None:
        self.h = h
        self.wait_seconds = wait_seconds
        self.poll = poll

    # -- the primitives a test double replaces ------------------------------------------------------------------
    def require_live(self) -> None:
        """Driver bindings exist only in the running kernel: refuse a --root that is a fixture or a capture."""
        if not self.h.is_live:
            raise UsageError(f"{self.h.base} is not this machine's root: taking devices over needs the live host "
                             "(drop --root / PASSTHRU_ROOT; --dry-run works on any root)")

    def write(self, path: str, data: str) -> None:
        """One write(2) of ``data`` to the sysfs file ``path`` (a host-root path). Raises OSError as the kernel
        returns it."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def run_modprobe(self, module: str) -> tuple[int, str]:
        """``modprobe MODULE``: (returncode, last stderr line). Only on the live root."""
        import subprocess

        if not self.h.is_live:
            return 1, f"not loading {module}: {self.h.base} is not this machine's root"
        try:
            p = subprocess.run(["modprobe", module], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=MODPROBE_TIMEOUT, check=False)
        except FileNotFoundError:
            return 127, "modprobe: command not found (install kmod)"
        except subprocess.TimeoutExpired:
            return 124, f"modprobe {module}: timed out after {MODPROBE_TIMEOUT:g} s"
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        return p.returncode, lines[-1] if lines else ""

    # -- reads the verbs need --------------------------------------------------------------------------------
    def dev(self, addr: str) -> str:
        return f"{self.h.sys}/bus/pci/devices/{addr}"

    def driver_of(self, addr: str) -> str | None:
        return self.h.link_name(self.dev(addr) + "/driver")

    def override_of(self, addr: str) -> str | None:
        text = self.h.read(self.dev(addr) + "/driver_override")
        return None if text in (None, "", "(null)") else text

    def present(self, addr: str) -> bool:
        return self.h.exists(self.dev(addr))

    def driver_loaded(self, driver: str) -> bool:
        return self.h.isdir(f"{self.h.sys}/bus/pci/drivers/{driver}")

    def group_of(self, addr: str) -> int | None:
        name = self.h.link_name(self.dev(addr) + "/iommu_group")
        return int(name) if name and name.isdigit() else None

    def vfio_node(self, group: int) -> str:
        """/dev/vfio/<group>; a no-IOMMU group's node is /dev/vfio/noiommu-<group> (not used by passthru)."""
        return f"{self.h.dev}/vfio/{group}"

    # -- verbs ------------------------------------------------------------------------------------------------
    def _write(self, path: str, data: str, what: str) -> None:
        try:
            self.write(path, data)
        except OSError as e:
            hint = _ERRNO_HINTS.get(e.errno or 0, e.strerror or str(e))
            raise HostError(f"{what}: {hint} ({os.strerror(e.errno) if e.errno else e})") from None
        hit(f"kernel.{os.path.basename(path)}")  # crash tests: a kill right after each host write

    def set_override(self, addr: str, driver: str | None) -> None:
        if self.override_of(addr) == driver:
            return
        self._write(self.dev(addr) + "/driver_override", (driver or "") + "\n",
                    f"{addr}: setting driver_override to {driver or '(none)'}")

    def unbind(self, addr: str) -> None:
        drv = self.driver_of(addr)
        if drv is None:
            return
        self._write(f"{self.h.sys}/bus/pci/drivers/{drv}/unbind", addr, f"{addr}: unbinding from {drv}")

    def probe(self, addr: str) -> None:
        self._write(f"{self.h.sys}/bus/pci/drivers_probe", addr, f"{addr}: probing drivers")

    def bind(self, addr: str, driver: str) -> None:
        if self.driver_of(addr) == driver:
            return
        self._write(f"{self.h.sys}/bus/pci/drivers/{driver}/bind", addr, f"{addr}: binding to {driver}")

    def modprobe(self, module: str, driver: str | None = None) -> None:
        """Load ``module`` unless ``driver`` (its PCI driver name) is already registered."""
        if driver and self.driver_loaded(driver):
            return
        rc, err = self.run_modprobe(module)
        if rc != 0 or (driver and not self.driver_loaded(driver)):
            raise HostError(f"modprobe {module} failed: {err or f'exit {rc}'}; is the module installed "
                            f"(linux-modules for this kernel)?")

    def wait_for(self, cond: Callable[[], bool], what: str) -> None:
        """Poll ``cond`` until true, at most ``wait_seconds``; HostError naming ``what`` after that."""
        deadline = time.monotonic() + self.wait_seconds
        while not cond():
            if time.monotonic() >= deadline:
                raise HostError(f"{what}: not done after {self.wait_seconds:g} s")
            time.sleep(self.poll)

    def wait_bound(self, addr: str, driver: str | None, need_node: bool = False) -> None:
        """Until ``addr`` is bound to ``driver`` (None: to no driver), and with ``need_node`` until its
        /dev/vfio/<group> exists (udev creates it right after vfio-pci's probe)."""
        def done() -> bool:
            if self.driver_of(addr) != driver:
                return False
            if need_node:
                g = self.group_of(addr)
                return g is not None and self.h.exists(self.vfio_node(g))
            return True
        self.wait_for(done, f"{addr}: waiting for {driver or 'no driver'}"
                      + (" and /dev/vfio/<group>" if need_node else ""))
