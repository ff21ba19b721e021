"""Memory facts for passthrough: hugepage pools (total and per NUMA node) and the locked-memory limit.

A VM with a passed-through device pins all of its RAM (DMA can hit any guest page), so QEMU needs RLIMIT_MEMLOCK at
least as large as the guest plus a margin; libvirt raises it itself, QEMU started by hand does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .root import HostRoot

__all__ = ["HugepagePool", "read_hugepages", "MemlockLimit", "read_memlock", "read_memtotal_kib"]


@dataclass(frozen=True, slots=True)
class HugepagePool:
    size_kib: int
    node: int | None  # None: the system-wide pool
    total: int
    free: int

    @property
    def size_label(self) -> str:
        return f"{self.size_kib // 1048576}G" if self.size_kib >= 1048576 else f"{self.size_kib // 1024}M"


def _pools(h: HostRoot, base: str, node: int | None) -> list[HugepagePool]:
    out = []
    for name in h.listdir(base):
        m = re.match(r"^hugepages-(\d+)kB$", name)
        if not m:
            continue
        out.append(HugepagePool(size_kib=int(m.group(1)), node=node,
                                total=h.read_int(f"{base}/{name}/nr_hugepages") or 0,
                                free=h.read_int(f"{base}/{name}/free_hugepages") or 0))
    return sorted(out, key=lambda p: p.size_kib)


def read_hugepages(h: HostRoot) -> list[HugepagePool]:
    """System-wide pools, then per-node pools (node order)."""
    pools = _pools(h, h.sys + "/kernel/mm/hugepages", None)
    nodes = sorted((int(n[4:]) for n in h.listdir(h.sys + "/devices/system/node")
                    if n.startswith("node") and n[4:].isdigit()))
    for n in nodes:
        pools += _pools(h, f"{h.sys}/devices/system/node/node{n}/hugepages", n)
    return pools


def read_memtotal_kib(h: HostRoot) -> int | None:
    for line in (h.read(h.proc + "/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


@dataclass(frozen=True, slots=True)
class MemlockLimit:
    soft: int | None  # bytes; None = unlimited
    hard: int | None
    source: str


def _limit(v: str) -> int | None:
    return None if v == "unlimited" else int(v)


def read_memlock(h: HostRoot) -> MemlockLimit | None:
    """This process's RLIMIT_MEMLOCK from /proc/self/limits (a fixture's own file when rooted elsewhere)."""
    text = h.read(h.proc + "/self/limits")
    for line in (text or "").splitlines():
        if line.startswith("Max locked memory"):
            parts = line[len("Max locked memory"):].split()
            try:
                return MemlockLimit(_limit(parts[0]), _limit(parts[1]), h.host_path(h.proc + "/self/limits"))
            except (IndexError, ValueError):
                return None
    return None
