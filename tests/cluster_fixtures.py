"""Cluster test helpers: a host's devices (8 GPUs on 2 NUMA nodes and 2 PCIe switches, a NIC), and the check that
no device was ever held twice, from the allocation history (not from counters)."""

from __future__ import annotations

from pathlib import Path

from passthru.errors import HostError, NotFoundError
from passthru.inventory import ClaimError
from passthru.inventory.cluster import ClusterDevice, StaleEpoch
from sysfs_builder import SysfsBuilder

A100 = (0x10DE, 0x20B5)


def gpu_host(gpus: int = 8, pairs: bool = False) -> list[ClusterDevice]:
    """``gpus`` A100s: the first half on NUMA node 0 behind switch 0000:10:00.0, the rest on node 1 behind
    0000:90:00.0; plus one NIC with no switch. ``pairs``: two GPUs share each IOMMU group."""
    out = []
    for i in range(gpus):
        node = 0 if i < gpus // 2 else 1
        out.append(ClusterDevice(identity=f"pci:0000:{0x18 + i + (0x70 if node else 0):02x}:00.0", kind="gpu",
                                 model="a100", vendor_id=A100[0], device_id=A100[1], numa_node=node,
                                 switch="0000:90:00.0" if node else "0000:10:00.0",
                                 iommu_group=10 + (i // 2 if pairs else i),
                                 vfio="vfio-pci"))
    out.append(ClusterDevice(identity="pci:0000:3b:00.0", kind="nic", vendor_id=0x8086, device_id=0x1572,
                             numa_node=0, iommu_group=40))
    return out


def make_gpu_node(root: str | Path, gpus: int = 8) -> SysfsBuilder:
    """A GPU node as a fixture tree: 2 sockets, each a root port -> PCIe switch (upstream port, downstream ports
    with ACS) -> ``gpus // 2`` A100s, every GPU its own IOMMU group and already on vfio-pci (bound at boot), so a
    takeover needs no driver move. Intel IOMMU on, iommu=pt."""
    b = SysfsBuilder(root, nodes=2, cpus_per_node=4, auto_groups=True)
    b.iommu("intel", units=2, group_type="identity")
    b.proc("BOOT_IMAGE=/vmlinuz root=/dev/sda2 ro intel_iommu=on iommu=pt")
    b.pci("0000:00:00.0", 0x8086, 0x2020, 0x060000, numa_node=0, link=None, reset_methods=())
    per = gpus // 2
    for node, bus in ((0, 0x10), (1, 0x90)):
        rp, usp = f"0000:{bus - 1:02x}:00.0", f"0000:{bus:02x}:00.0"
        b.bridge(rp, device=0x2030, numa_node=node)
        b.bridge(usp, parent=rp, kind="upstream", vendor=0x10B5, device=0x8796, numa_node=node)
        for i in range(per):
            dsp = f"0000:{bus + 1:02x}:{i:02x}.0"
            b.bridge(dsp, parent=usp, kind="downstream", vendor=0x10B5, device=0x8796, numa_node=node)
            b.pci(f"0000:{bus + 8 + i:02x}:00.0", A100[0], A100[1], 0x030200, parent=dsp, driver="vfio-pci",
                  driver_override="vfio-pci", numa_node=node, subsystem=(0x10DE, 0x1463), reset_methods=("flr",),
                  bars=[("mem", 16 << 20), ("mem64pf", 64 << 30), ("mem64pf", 32 << 20)])
    b.build()
    return b


def sriov_host() -> list[ClusterDevice]:
    """A NIC PF with two VFs (each VF its own IOMMU group) and a second PF without VFs."""
    nic = dict(kind="nic", vendor_id=0x8086, numa_node=0)
    return [ClusterDevice(identity="pci:0000:3b:00.0", device_id=0x1572, iommu_group=40, **nic),
            ClusterDevice(identity="pci:0000:3b:02.0", device_id=0x154C, iommu_group=41, parent="pci:0000:3b:00.0",
                          **nic),
            ClusterDevice(identity="pci:0000:3b:02.1", device_id=0x154C, iommu_group=42, parent="pci:0000:3b:00.0",
                          **nic),
            ClusterDevice(identity="pci:0000:3c:00.0", device_id=0x1572, iommu_group=43, **nic)]


def group_doubles(history: list[dict], groups: dict[tuple[str, str], int]) -> list[str]:
    """Every pair of allocations by two different VMs of devices in one IOMMU group (``groups``: (host, identity)
    -> group) whose holdings overlapped in time."""
    by_group: dict[tuple[str, int], list[dict]] = {}
    for a in history:
        g = groups.get((a["host"], a["device"]))
        if g is not None:
            by_group.setdefault((a["host"], g), []).append(a)
    bad = []
    for key, rows in by_group.items():
        for i, x in enumerate(rows):
            for y in rows[i + 1:]:
                if x["vm"] == y["vm"]:
                    continue
                x_end, y_end = x["released"] or "~", y["released"] or "~"
                if x["created"] < y_end and y["created"] < x_end:
                    bad.append(f"group {key}: {x['vm']} ({x['device']}) and {y['vm']} ({y['device']})")
    return bad


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


def answer(e: Exception) -> str | None:
    """The count a scheduler's expected refusal goes under; None for anything else (an error the test reports)."""
    if isinstance(e, ClaimError):  # "already holds": a placement committed just as the connection was cut, retried
        return "gone" if "already holds" in str(e) else "no_room"
    if isinstance(e, StaleEpoch):
        return "stale"  # the host was fenced or rejoined between placement and confirmation
    if isinstance(e, NotFoundError):
        return "gone"  # expired or fenced before it was confirmed or released
    if isinstance(e, HostError) and "being taken by other schedulers" in str(e):
        return "busy"
    return None
