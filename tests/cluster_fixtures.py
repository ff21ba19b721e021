"""Cluster test helpers: a host's devices (8 GPUs on 2 NUMA nodes and 2 PCIe switches, a NIC), and the check that
no device was ever held twice, from the allocation history (not from counters)."""

from __future__ import annotations

from passthru.inventory.cluster import ClusterDevice

A100 = (0x10DE, 0x20B5)


def gpu_host(gpus: int = 8) -> list[ClusterDevice]:
    """``gpus`` A100s: the first half on NUMA node 0 behind switch 0000:10:00.0, the rest on node 1 behind
    0000:90:00.0; plus one NIC with no switch."""
    out = []
    for i in range(gpus):
        node = 0 if i < gpus // 2 else 1
        out.append(ClusterDevice(identity=f"pci:0000:{0x18 + i + (0x70 if node else 0):02x}:00.0", kind="gpu",
                                 model="a100", vendor_id=A100[0], device_id=A100[1], numa_node=node,
                                 switch="0000:90:00.0" if node else "0000:10:00.0", iommu_group=10 + i,
                                 vfio="vfio-pci"))
    out.append(ClusterDevice(identity="pci:0000:3b:00.0", kind="nic", vendor_id=0x8086, device_id=0x1572,
                             numa_node=0, iommu_group=40))
    return out


def doubles(history: list[dict]) -> list[str]:
    """Every pair of allocations of one device whose holding overlapped: the later one was created before the
    earlier one was released (or the earlier one never was). Empty when no device was ever held twice."""
    by_dev: dict[tuple[str, str], list[dict]] = {}
    for a in history:
        by_dev.setdefault((a["host"], a["device"]), []).append(a)
    bad = []
    for dev, rows in by_dev.items():
        rows.sort(key=lambda a: (a["created"], a["id"]))
        for prev, nxt in zip(rows, rows[1:]):
            if prev["released"] is None or prev["released"] > nxt["created"]:
                bad.append(f"{dev}: allocation {prev['id']} ({prev['vm']}, {prev['created']}..{prev['released']}) "
                           f"and {nxt['id']} ({nxt['vm']}, from {nxt['created']})")
    return bad
