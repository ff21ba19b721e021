"""A stand-in for the kernel's PCI driver core on a SysfsBuilder tree, at the one boundary passthru writes through
(:class:`passthru.vfio.Kernel`): writes to driver_override, drivers/<drv>/unbind|bind and drivers_probe move the
``driver`` symlinks the way the kernel does, vfio-pci's probe creates /dev/vfio/<group>, and ``modprobe`` registers a
driver directory. Faults are injectable:

    k = FakeKernel(HostRoot(root))
    k.fail("unbind", errno.EBUSY, addr="0000:01:00.1")   # that write fails like the kernel's
    k.crash_at = 5                                        # the 5th step (write or wait) kills the "process"
    k.stubborn.add("0000:01:00.0")                        # vfio-pci's probe never binds it (waits time out)

The rules are the kernel's (drivers/pci/pci-driver.c, Documentation/ABI/testing/sysfs-bus-pci): a driver_override
makes only that driver match; without one, the device's own (``native``) driver matches; writing a device to a
driver's bind when that driver does not match is ENODEV; unbind of a device not bound to that driver is ENODEV.
"""

from __future__ import annotations

import errno
import os

from passthru.host.root import HostRoot
from passthru.vfio.kernel import Kernel


class Crash(BaseException):
    """The process died here (kill -9): nothing after this runs, no except-clause in passthru sees it."""


class FakeKernel(Kernel):
    def __init__(self, h: HostRoot, wait_seconds: float = 0.2, native: dict[str, str] | None = None) -> None:
        super().__init__(h, wait_seconds=wait_seconds, poll=0.01)
        pci = f"{h.sys}/bus/pci/devices"
        # the driver each device binds when nothing overrides it: whatever it has now
        self.native = {a: d for a in h.listdir(pci) if (d := h.link_name(f"{pci}/{a}/driver"))}
        self.native.update(native or {})
        self.writes: list[tuple[str, str]] = []
        self.steps = 0  # writes and waits so far: the points a kill -9 can fall between
        self.faults: list[tuple[str, int, str | None]] = []
        self.crash_at: int | None = None
        self.stubborn: set[str] = set()
        self.modprobed: list[str] = []
        self.modprobe_fails = False

    def fail(self, verb: str, err: int, addr: str | None = None) -> None:
        self.faults.append((verb, err, addr))

    # -- the boundary ---------------------------------------------------------------------------------------------
    def require_live(self) -> None:
        return None  # this fake *is* the fixture's kernel

    def _tick(self, what: str) -> None:
        self.steps += 1
        if self.crash_at is not None and self.steps >= self.crash_at:
            raise Crash(f"killed at step {self.steps}: {what}")

    def wait_for(self, cond, what: str) -> None:
        super().wait_for(cond, what)
        self._tick(f"after {what}")

    def write(self, path: str, data: str) -> None:
        self._tick(f"before writing {data.strip()!r} to {path}")
        rel = path[len(self.h.sys):] if path.startswith(self.h.sys) else path
        verb = rel.rsplit("/", 1)[-1]
        value = data.strip()
        addr = rel.split("/")[-2] if verb == "driver_override" else value
        for v, err, a in self.faults:
            if v == verb and (a is None or a == addr):
                raise OSError(err, os.strerror(err))
        self.writes.append((rel, value))
        if verb == "driver_override":
            with open(path, "w") as f:
                f.write((value or "(null)") + "\n")
        elif verb == "unbind":
            drv = rel.split("/")[-2]
            if self.h.link_name(self._dev(value) + "/driver") != drv:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            self._unlink(value, drv)
        elif verb == "drivers_probe":
            if not os.path.exists(self._dev(value)):
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            if self.h.link_name(self._dev(value) + "/driver") is None:
                drv = self._matching(value)
                if drv and not (drv == "vfio-pci" and value in self.stubborn):
                    self._link(value, drv)
        elif verb == "bind":
            drv = rel.split("/")[-2]
            if self.h.link_name(self._dev(value) + "/driver") is not None:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            if self._matching(value, drv) != drv:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            self._link(value, drv)
        else:
            raise AssertionError(f"passthru wrote {data!r} to {rel}, which the fake kernel does not expect")

    def run_modprobe(self, module: str) -> tuple[int, str]:
        self.modprobed.append(module)
        if self.modprobe_fails:
            return 1, f"modprobe: FATAL: Module {module} not found in directory /lib/modules/6.8.0-45-generic"
        drv = {"vfio_pci": "vfio-pci"}.get(module, module)
        d = f"{self.h.sys}/bus/pci/drivers/{drv}"
        os.makedirs(d, exist_ok=True)
        for attr in ("bind", "unbind", "uevent", "new_id", "remove_id"):
            open(f"{d}/{attr}", "a").close()
        os.makedirs(f"{self.h.sys}/module/{module.replace('-', '_')}", exist_ok=True)
        return 0, ""

    # -- the driver core -------------------------------------------------------------------------------------------
    def _dev(self, addr: str) -> str:
        return f"{self.h.sys}/bus/pci/devices/{addr}"

    def _matching(self, addr: str, want: str | None = None) -> str | None:
        override = self.override_of(addr)
        drv = override or self.native.get(addr)
        if want is not None and override is None and want == self.native.get(addr):
            drv = want
        return drv if drv and os.path.isdir(f"{self.h.sys}/bus/pci/drivers/{drv}") else None

    def _group(self, addr: str) -> str | None:
        return self.h.link_name(self._dev(addr) + "/iommu_group")

    def _link(self, addr: str, drv: str) -> None:
        d = f"{self.h.sys}/bus/pci/drivers/{drv}"
        real = os.path.realpath(self._dev(addr))
        os.symlink(os.path.relpath(d, real), real + "/driver")
        os.symlink(os.path.relpath(real, d), f"{d}/{addr}")
        if drv == "vfio-pci" and (g := self._group(addr)) is not None:
            os.makedirs(f"{self.h.dev}/vfio", exist_ok=True)
            open(f"{self.h.dev}/vfio/{g}", "a").close()

    def _unlink(self, addr: str, drv: str) -> None:
        os.unlink(os.path.realpath(self._dev(addr)) + "/driver")
        os.unlink(f"{self.h.sys}/bus/pci/drivers/{drv}/{addr}")
        g = self._group(addr)
        if drv == "vfio-pci" and g is not None:
            still = [a for a in self.h.listdir(f"{self.h.sys}/kernel/iommu_groups/{g}/devices")
                     if self.h.link_name(self._dev(a) + "/driver") == "vfio-pci"]
            if not still and os.path.exists(f"{self.h.dev}/vfio/{g}"):
                os.unlink(f"{self.h.dev}/vfio/{g}")
