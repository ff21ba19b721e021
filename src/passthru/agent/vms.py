"""Which VMs are running: QEMU processes found through the host root's /proc, by ``-name`` and ``-uuid``.

A QEMU started by hand or by a script has ``-name vm1`` (``-name vm1,debug-threads=on``); libvirt starts it with
``-name guest=vm1,debug-threads=on`` and ``-uuid <uuid>``. An assignment's VM is running when a QEMU process carries
its name, or the UUID recorded with the assignment. Read-only; unreadable processes (gone mid-scan, hidepid) are
skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..host.root import HostRoot

__all__ = ["VmProcess", "vm_processes", "parse_qemu_argv"]


@dataclass(frozen=True, slots=True)
class VmProcess:
    pid: int
    name: str | None
    uuid: str | None


def _name_value(value: str) -> str | None:
    """The guest name in a ``-name`` value: "vm1", "vm1,debug-threads=on", "guest=vm1,process=..." (",," is a
    literal comma in QEMU option syntax)."""
    parts = value.replace(",,", "\0").split(",")
    for i, part in enumerate(parts):
        part = part.replace("\0", ",")
        if part.startswith("guest="):
            return part[6:] or None
        if i == 0 and "=" not in part:
            return part or None
    return None


def parse_qemu_argv(argv: list[str]) -> tuple[str | None, str | None] | None:
    """(name, uuid) of a QEMU command line; None when ``argv`` is not QEMU's."""
    if not argv or "qemu" not in os.path.basename(argv[0]):
        return None
    name = uuid = None
    i = 1
    while i < len(argv):
        a = argv[i]
        opt, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        opt = opt[1:] if opt.startswith("--") else opt
        if opt in ("-name", "-uuid"):
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            else:
                break
            if opt == "-name":
                name = _name_value(value)
            else:
                uuid = value.strip().lower() or None
        i += 1
    return name, uuid


def vm_processes(h: HostRoot) -> list[VmProcess]:
    out = []
    for entry in h.listdir(h.proc):
        if not entry.isdigit():
            continue
        raw = h.read_bytes(f"{h.proc}/{entry}/cmdline", 1 << 17)
        if not raw:
            continue  # a kernel thread, a zombie, or gone
        argv = raw.rstrip(b"\0").decode("utf-8", "replace").split("\0")
        got = parse_qemu_argv(argv)
        if got is not None:
            out.append(VmProcess(int(entry), *got))
    return out
