"""Which processes hold a device node open: a getty on a serial port, a stray ``screen`` or ``minicom``.

:func:`openers` scans ``<proc>/<pid>/fd`` through the HostRoot, read-only. An fd matches a device when

- its link text is the device's path (``/dev/ttyS1``): what the kernel shows for a file opened through devtmpfs, and
  the only evidence a fixture or a captured host can carry; or, on the running host,
- ``stat()`` through the fd gives a character device with the device's ``major:minor`` (from sysfs ``dev``, "4:65"):
  this also catches the node opened under another name (``/dev/serial/by-id/...`` resolves to the node; a chroot or
  container shows its own path for it).

Each opener comes with its ``comm`` and, when ``<proc>/<pid>/cgroup`` names a systemd service
(``.../serial-getty@ttyS1.service``), that unit, so the refusal can say how to stop it.

Without permission (not root) the fd directories of other users' processes cannot be read: they are counted in
:attr:`OpenScan.unreadable`, never guessed about. A process that exits mid-scan is skipped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from .root import HostRoot

__all__ = ["Opener", "OpenScan", "openers", "char_devnum", "describe"]


@dataclass(frozen=True, slots=True)
class Opener:
    pid: int
    comm: str | None  # "agetty"; None when it could not be read
    fds: tuple[int, ...]  # the fd numbers that hold the device
    unit: str | None = None  # the systemd service the process runs in ("serial-getty@ttyS1.service")

    def label(self) -> str:
        """"agetty (pid 812)"."""
        return f"{self.comm or 'a process'} (pid {self.pid})"


@dataclass(slots=True)
class OpenScan:
    path: str  # the device as the host names it, "/dev/ttyS1"
    openers: list[Opener] = field(default_factory=list)
    unreadable: int = 0  # processes whose open files could not be read (permissions)
    processes: int = 0  # processes looked at

    @property
    def complete(self) -> bool:
        return self.unreadable == 0


def char_devnum(h: HostRoot, sys_dir: str) -> tuple[int, int] | None:
    """(major, minor) from a sysfs device directory's ``dev`` attribute ("4:65"), or None."""
    text = h.read(sys_dir + "/dev")
    if not text or ":" not in text:
        return None
    major, _, minor = text.partition(":")
    try:
        return int(major), int(minor)
    except ValueError:
        return None


def _unit(h: HostRoot, pid_dir: str) -> str | None:
    """The systemd service of a process, from the last path component of its cgroup (v2 "0::/..." or the v1
    name=systemd line)."""
    for line in (h.read(pid_dir + "/cgroup") or "").splitlines():
        hier, _, path = line.partition(":")[2].partition(":")
        if hier in ("", "name=systemd"):
            last = path.rstrip("/").rsplit("/", 1)[-1]
            if last.endswith(".service"):
                return last.replace("\\x2d", "-")
    return None


def openers(h: HostRoot, path: str, devnum: tuple[int, int] | None = None) -> OpenScan:
    """Processes holding ``path`` (a host path such as "/dev/ttyS1") open, by pid. ``devnum`` (major, minor) also
    matches by device number on the running host. Our own process is never listed."""
    scan = OpenScan(path)
    me = str(os.getpid()) if h.is_live else None
    rdev = os.makedev(*devnum) if devnum is not None and h.is_live else None
    for pid in h.listdir(h.proc):
        if not pid.isdigit() or pid == me:
            continue
        pid_dir = f"{h.proc}/{pid}"
        fd_dir = pid_dir + "/fd"
        try:
            entries = os.listdir(fd_dir)
        except PermissionError:
            scan.processes += 1
            scan.unreadable += 1
            continue
        except OSError:  # gone, or a kernel thread's empty entry
            continue
        scan.processes += 1
        fds = []
        for fd in entries:
            link = f"{fd_dir}/{fd}"
            target = h.readlink(link)
            if target is None:
                continue
            hit = target == path
            if not hit and rdev is not None and target.startswith("/") and "/dev/" in target:
                try:
                    st = os.stat(link)
                except OSError:
                    st = None
                hit = st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev
            if hit and fd.isdigit():
                fds.append(int(fd))
        if fds:
            scan.openers.append(Opener(int(pid), h.read(pid_dir + "/comm"), tuple(sorted(fds)), _unit(h, pid_dir)))
    scan.openers.sort(key=lambda o: o.pid)
    return scan


def describe(scan: OpenScan, limit: int = 3) -> str:
    """"agetty (pid 812)", "agetty (pid 812), screen (pid 4711) and 2 more"."""
    names = [o.label() for o in scan.openers]
    if len(names) <= limit:
        return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"
