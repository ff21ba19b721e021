"""CPU facts from /proc/cpuinfo: vendor (Intel/AMD) and hardware virtualization support."""

from __future__ import annotations

from dataclasses import dataclass

from .root import HostRoot

__all__ = ["CpuInfo", "read_cpu"]

_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}


@dataclass(frozen=True, slots=True)
class CpuInfo:
    vendor: str | None  # "intel", "amd", "other", None (unknown)
    vendor_id: str | None  # as /proc/cpuinfo says: GenuineIntel, AuthenticAMD
    model_name: str | None
    virtualization: str | None  # "vmx" (VT-x), "svm" (AMD-V), None
    cpus: int
    hypervisor: bool  # running as a guest ("hypervisor" flag)


def read_cpu(h: HostRoot) -> CpuInfo:
    text = h.read(h.proc + "/cpuinfo") or ""
    vendor_id = model = None
    flags: set[str] = set()
    cpus = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            cpus += 1
        elif key == "vendor_id" and vendor_id is None:
            vendor_id = value
        elif key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    vendor = _VENDORS.get(vendor_id or "", "other" if vendor_id else None)
    virt = "vmx" if "vmx" in flags else "svm" if "svm" in flags else None
    return CpuInfo(vendor=vendor, vendor_id=vendor_id, model_name=model, virtualization=virt, cpus=cpus,
                   hypervisor="hypervisor" in flags)
