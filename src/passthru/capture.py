"""``passthru capture``: snapshot what passthru reads from a host into a tarball that ``--root`` can replay.

What is taken: the sysfs device trees for PCI, USB, serial, IOMMU and mdev (attributes as text, symlinks as
symlinks, so driver/iommu_group/physfn/virtfn links replay exactly), the bus and class directories that point into
them, IOMMU groups, hugepage and NUMA counters, a few procfs files (cmdline, cpuinfo, mounts, swaps, modules,
meminfo), the host-preparation files in /etc (os-release, default/grub, modules-load.d, kernel/cmdline,
passthru's models.toml) and mdevctl's vGPU definitions (/etc/mdevctl.d).

What is never taken: anything outside that list (no /etc/shadow, no passthru token, no environment), BAR and ROM
contents (``resourceN``, ``rom``: reading them can be huge or disturb the device), VPD, write-only attributes
(bind, unbind, remove, reset...), and files larger than 64 KiB.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
import time
from dataclasses import dataclass

from .host.mdevctl import MDEVCTL_DIR
from .host.root import HostRoot

__all__ = ["capture_host", "CaptureStats", "SYS_TREES", "PROC_FILES", "ETC_FILES"]

# directories walked recursively (host paths), and where each walk stops
SYS_TREES = (
    "/sys/bus/pci",
    "/sys/bus/usb/devices",
    "/sys/bus/usb/drivers",
    "/sys/bus/mdev",
    "/sys/bus/netdevsim",
    "/sys/kernel/iommu_groups",
    "/sys/class/iommu",
    "/sys/class/mdev_bus",
    "/sys/class/net",
    "/sys/class/block",
    "/sys/block",
    "/sys/dev/block",
    "/sys/class/nvme",
    "/sys/kernel/mm/hugepages",
    "/sys/kernel/mm/transparent_hugepage",
    "/sys/firmware/efi/fw_platform_size",
    "/sys/module/vfio",
    "/sys/module/vfio_pci",
    "/sys/module/vfio_iommu_type1",
    "/sys/module/vfio_virqfd",
    "/sys/module/kvm",
    "/sys/module/kvm_intel",
    "/sys/module/kvm_amd",
)
# real directories under /sys/devices that the trees above point into (walked fully, with the skips below)
DEVICE_TREES_RE = re.compile(
    r"^/sys/devices/(pci[0-9a-f]+:[0-9a-f]+|platform/serial8250|pnp\d+|virtual/iommu|virtual/mtty"
    r"|virtual/tty/console|system/node|netdevsim\d+|virtual/net|virtual/block|virtual/nvme-subsystem)(/|$)"
)
PROC_FILES = ("/proc/sys/kernel/osrelease", "/proc/cmdline", "/proc/cpuinfo", "/proc/mounts", "/proc/swaps",
              "/proc/modules", "/proc/meminfo", "/proc/self/mountinfo", "/proc/net/route", "/proc/net/if_inet6")
ETC_FILES = ("/sys/firmware/acpi/tables/DMAR", "/sys/firmware/acpi/tables/IVRS", "/etc/os-release", "/etc/default/grub", "/etc/kernel/cmdline", "/etc/passthru/models.toml")
ETC_DIRS = ("/etc/modules-load.d", "/etc/modprobe.d")

SKIP_FILES = re.compile(
    r"^(resource\d+(_wc|_resize)?|rom|vpd|remove|rescan|reset|bind|unbind|new_id|remove_id|drivers_probe"
    r"|uevent_seqnum|new_device|del_device|create|remove_id|descriptors|bos_descriptors)$"
)
SKIP_DIRS = frozenset({"power", "statistics", "queues", "msi_irqs", "wakeup", "trace", "holders_ignore", "mq",
                       "integrity", "queue", "hwmon", "thermal", "ptp", "hugepages_never"})
MAX_FILE = 64 * 1024
_NOT_FOLLOWED = frozenset({"subsystem", "driver", "module", "firmware_node", "port", "consumer", "supplier"})
TTY_RE = re.compile(r"^(ttyS|ttyUSB|ttyACM|ttyAMA)\d+$|^console$")


@dataclass
class CaptureStats:
    files: int = 0
    links: int = 0
    dirs: int = 0
    skipped: int = 0


class _Writer:
    def __init__(self, h: HostRoot, tar: tarfile.TarFile) -> None:
        self.h = h
        self.tar = tar
        self.seen: set[str] = set()  # tar entries written
        self.walked: set[str] = set()  # directories already walked
        self.stats = CaptureStats()
        self.pending_dirs: list[str] = []
        self.mtime = int(time.time())

    def _arc(self, host_path: str) -> str:
        return host_path.lstrip("/")

    def add_dir(self, host_path: str) -> None:
        parts = host_path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/" + "/".join(parts[:i])
            if p in self.seen:
                continue
            self.seen.add(p)
            ti = tarfile.TarInfo(self._arc(p))
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            ti.mtime = self.mtime
            self.tar.addfile(ti)
            self.stats.dirs += 1

    def add_link(self, host_path: str, target: str) -> None:
        if host_path in self.seen:
            return
        self.add_dir(os.path.dirname(host_path))
        self.seen.add(host_path)
        ti = tarfile.TarInfo(self._arc(host_path))
        ti.type = tarfile.SYMTYPE
        ti.linkname = target
        ti.mtime = self.mtime
        self.tar.addfile(ti)
        self.stats.links += 1

    def add_file(self, host_path: str) -> None:
        if host_path in self.seen:
            return
        real = self.h.path(host_path)
        try:
            st = os.lstat(real)
            if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IRUSR:
                self.stats.skipped += 1
                return
            with open(real, "rb") as f:
                data = f.read(MAX_FILE + 1)
        except OSError:
            self.stats.skipped += 1
            return
        if len(data) > MAX_FILE:
            self.stats.skipped += 1
            return
        self.add_dir(os.path.dirname(host_path))
        self.seen.add(host_path)
        ti = tarfile.TarInfo(self._arc(host_path))
        ti.size = len(data)
        ti.mode = 0o644
        ti.mtime = self.mtime
        self.tar.addfile(ti, io.BytesIO(data))
        self.stats.files += 1

    def walk(self, host_path: str, depth: int = 0) -> None:
        """Copy a directory recursively: files, symlinks as links; follow links into /sys/devices trees."""
        if host_path in self.walked or depth > 24:
            return
        self.walked.add(host_path)
        real = self.h.path(host_path)
        try:
            st = os.lstat(real)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(real)
            self.add_link(host_path, target)
            resolved = os.path.normpath(os.path.join(os.path.dirname(host_path), target))
            if DEVICE_TREES_RE.match(resolved) or resolved.startswith("/sys/bus/"):
                self.pending_dirs.append(resolved)
            return
        if stat.S_ISREG(st.st_mode):
            if not SKIP_FILES.match(os.path.basename(host_path)):
                self.add_file(host_path)
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        self.add_dir(host_path)
        try:
            names = sorted(os.listdir(real))
        except OSError:
            return
        for name in names:
            if name not in SKIP_DIRS:
                self._entry(host_path, name, depth)

    def _entry(self, host_path: str, name: str, depth: int | None) -> None:
        """Copy one directory entry: a link as a link (followed into device trees when ``depth`` is given),
        a file, or (with ``depth``) a subdirectory recursively."""
        child = f"{host_path}/{name}"
        try:
            cst = os.lstat(self.h.path(child))
        except OSError:
            return
        if stat.S_ISLNK(cst.st_mode):
            target = os.readlink(self.h.path(child))
            self.add_link(child, target)
            resolved = os.path.normpath(os.path.join(host_path, target))
            # follow links that point at device directories we want (the bus/class -> devices hop)
            if depth is not None and DEVICE_TREES_RE.match(resolved) and name not in _NOT_FOLLOWED:
                self.pending_dirs.append(resolved)
        elif stat.S_ISDIR(cst.st_mode):
            if depth is not None:
                self.walk(child, depth + 1)
        elif stat.S_ISREG(cst.st_mode) and not SKIP_FILES.match(name):
            self.add_file(child)

    def shallow(self, host_path: str) -> None:
        """Copy one directory's files and links, not its subdirectories (ancestors of a device: their
        subsystem/driver links tell what backs it)."""
        key = host_path + "/."
        if key in self.walked or host_path in self.walked:
            return
        self.walked.add(key)
        real = self.h.path(host_path)
        self.add_dir(host_path)
        for name in self.h.listdir(real):
            self._entry(host_path, name, None)

    def drain(self) -> None:
        while self.pending_dirs:
            p = self.pending_dirs.pop()
            a = os.path.dirname(p)
            while a.startswith("/sys/devices/") and a.count("/") > 2:
                self.shallow(a)
                a = os.path.dirname(a)
            # a link target may be inside an already-copied tree: only walk what is not there yet
            if p not in self.walked:
                self.walk(p)


def _tty_class(w: _Writer) -> None:
    base = "/sys/class/tty"
    real = w.h.path(base)
    for name in w.h.listdir(real):
        if TTY_RE.match(name):
            w.walk(f"{base}/{name}")


KMSG_KEEP = re.compile(r"DMAR|AMD-Vi|IOMMU|iommu|vfio|VFIO|remapping|x2apic|SR-IOV|sriov|mdev", re.I)


def _kernel_log(w: _Writer) -> None:
    """The IOMMU/vfio lines of the kernel log as a plain-text dev/kmsg (what doctor reads on replay); the rest of
    the log stays private."""
    from .host.kernel import kernel_log

    log = kernel_log(w.h)
    if not log:
        return
    data = "".join(line + "\n" for line in log if KMSG_KEEP.search(line)).encode()
    ti = tarfile.TarInfo("dev/kmsg")
    ti.size = len(data)
    ti.mode = 0o600
    ti.mtime = w.mtime
    w.add_dir("/dev")
    w.tar.addfile(ti, io.BytesIO(data))
    w.stats.files += 1


def capture_host(h: HostRoot, output: str) -> CaptureStats:
    """Write the snapshot of ``h`` to ``output`` (.tar.gz). Returns counts of what was written."""
    h.check_tree()  # an empty or mistyped root would make an empty capture
    tmp = output + ".part"
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            w = _Writer(h, tar)
            for tree in SYS_TREES:
                w.walk(tree)
            _tty_class(w)
            w.drain()
            for f in PROC_FILES + ETC_FILES:
                w.add_file(f)
            for d in ETC_DIRS:
                for name in h.listdir(h.path(d)):
                    w.add_file(f"{d}/{name}")
            for parent in h.listdir(h.path(MDEVCTL_DIR)):  # mdevctl's definitions: <parent>/<uuid>
                for name in h.listdir(h.path(f"{MDEVCTL_DIR}/{parent}")):
                    w.add_file(f"{MDEVCTL_DIR}/{parent}/{name}")
            _kernel_log(w)
            manifest = json.dumps({
                "format": "passthru-capture/1",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source_root": h.base,
                "kernel": h.read(h.proc + "/sys/kernel/osrelease"),
            }, indent=2).encode()
            ti = tarfile.TarInfo("passthru-capture.json")
            ti.size = len(manifest)
            ti.mtime = w.mtime
            tar.addfile(ti, io.BytesIO(manifest))
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return w.stats
