"""Kernel facts: release, command line, loaded modules, modules configured to load at boot, and the kernel log.

The kernel log is read from /dev/kmsg (non-blocking, records only up to now); in a fixture or capture
``<root>/dev/kmsg`` is a plain text file with one message per line. Without permission (non-root with
dmesg_restrict) the log is ``None`` and callers say so instead of guessing.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

from .root import HostRoot

__all__ = ["KernelInfo", "read_kernel", "read_cmdline", "cmdline_value", "loaded_modules", "boot_modules",
           "kernel_log", "grep_log", "parse_version"]

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)")


def parse_version(release: str | None) -> tuple[int, int] | None:
    m = _VERSION_RE.match(release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True, slots=True)
class KernelInfo:
    release: str | None  # "6.1.0-26-amd64"
    version: tuple[int, int] | None  # (6, 1)


def read_kernel(h: HostRoot) -> KernelInfo:
    release = h.read(h.proc + "/sys/kernel/osrelease")
    if release is None and h.is_live:
        release = os.uname().release
    return KernelInfo(release=release, version=parse_version(release))


def read_cmdline(h: HostRoot) -> list[str]:
    """The running kernel's arguments (/proc/cmdline), split like the kernel does (quotes group)."""
    text = h.read(h.proc + "/cmdline") or ""
    args, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch.isspace() and not quoted:
            if cur:
                args.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if cur:
        args.append("".join(cur))
    return [a.replace('"', "") for a in args]


def cmdline_value(args: list[str], key: str) -> str | None:
    """Last value of ``key=value`` (the kernel takes the last), "" for a bare flag, None when absent."""
    found = None
    for a in args:
        k, sep, v = a.partition("=")
        if k == key:
            found = v if sep else ""
    return found


def loaded_modules(h: HostRoot) -> set[str]:
    """Modules present in the running kernel: /sys/module covers loadable and built-in ones that have
    parameters; /proc/modules the loadable ones. Names use underscores (vfio_pci)."""
    names = set(h.listdir(h.sys + "/module"))
    for line in (h.read(h.proc + "/modules") or "").splitlines():
        if line.split():
            names.add(line.split()[0])
    return {n.replace("-", "_") for n in names}


MODULES_LOAD_DIRS = ("/etc/modules-load.d", "/run/modules-load.d", "/usr/local/lib/modules-load.d",
                     "/usr/lib/modules-load.d", "/lib/modules-load.d")


def boot_modules(h: HostRoot) -> dict[str, str]:
    """Modules configured to load at boot -> the file that lists them (modules-load.d, Debian's /etc/modules).
    Same-named files in earlier directories override later ones, as systemd-modules-load does."""
    seen_files: set[str] = set()
    out: dict[str, str] = {}
    sources = []
    for d in MODULES_LOAD_DIRS:
        for name in h.listdir(h.path(d)):
            if name.endswith(".conf") and name not in seen_files:
                seen_files.add(name)
                sources.append(f"{d}/{name}")
    sources.append("/etc/modules")
    for src in sources:
        for line in (h.read(h.path(src)) or "").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith(";"):
                out.setdefault(line.split()[0].replace("-", "_"), src)
    return out


def kernel_log(h: HostRoot, limit: int = 20000) -> list[str] | None:
    """Kernel messages (text only), or None when the log cannot be read (permissions)."""
    path = h.dev + "/kmsg"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # fixture / capture: plain text
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
            return [_kmsg_text(line) for line in data.decode("utf-8", "replace").splitlines()][-limit:]
        lines: list[str] = []
        while len(lines) < limit:
            try:
                rec = os.read(fd, 8192)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    break
                if e.errno == errno.EPIPE:  # a record was overwritten while reading: go on
                    continue
                return None if not lines else lines
            if not rec:
                break
            lines.append(_kmsg_text(rec.decode("utf-8", "replace").split("\n", 1)[0]))
        return lines
    finally:
        os.close(fd)


def _kmsg_text(record: str) -> str:
    """"6,339,5140900,-;DMAR: IOMMU enabled" -> "DMAR: IOMMU enabled"; plain lines pass through."""
    head, sep, text = record.partition(";")
    if sep and re.match(r"^\d+,\d+,\d+", head):
        return text
    return record


# kernel log lines that say interrupt remapping is on / off (Intel DMAR-IR, AMD-Vi)
IR_ON = r"DMAR-IR: Enabled IRQ remapping|AMD-Vi: Interrupt remapping enabled"
IR_OFF = (r"DMAR-IR: .*(disabled|Failed)|Not enabling interrupt remapping|AMD-Vi: Interrupt remapping .*disabled|"
          r"IRQ remapping was enabled.*disabled")


def grep_log(log: list[str] | None, pattern: str) -> list[str]:
    if not log:
        return []
    rx = re.compile(pattern)
    return [line for line in log if rx.search(line)]
