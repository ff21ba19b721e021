"""GPUs: what is special about passing a graphics card through, as doctor checks.

What the generic machinery already does for GPUs: discovery finds a GPU's *companion functions* (its HDMI audio, a
USB-C controller on the card) and they travel with it (an assignment takes the IOMMU group; ``qemu-args`` puts them
in one guest slot); the boot VGA is refused by the takeover (``--allow-boot-vga``); ``qemu-args --x-vga`` makes a
GPU the VM's primary display and ``--romfile`` / ``--rombar-off`` set its ROM; doctor's ``gpu.host_drivers`` warns
when nouveau/nvidia/amdgpu hold a selected GPU (kept there: it is also a host-level check, "nouveau loaded on a host
with NVIDIA GPUs", and is not repeated here).

Checks added per GPU device (read-only, from sysfs ``resource`` and the IOMMU group):

- ``gpu.large_bar``: the BARs as the firmware mapped them. A memory BAR without an address means the firmware had
  no room for it (fail: enable "Above 4G Decoding", and "Resizable BAR" support where the card uses it). A 64-bit
  BAR of 2 GiB or more cannot sit below 4 GiB at all (the 32-bit MMIO hole is smaller), so seeing it mapped means
  above-4G decoding is on; the VM then needs a 64-bit MMIO window that holds it: warn when QEMU's default
  (32 GiB on q35) is too small, with the ``pci-hole64-size`` / OVMF ``X-PciMmio64Mb`` settings.
- ``gpu.companions``: the card's companion functions against the endpoints of its IOMMU group. Equal: they go to
  the VM together. A group mate that is not on the card goes to the VM too (a group goes whole): warn, naming it.
  A companion in another group does not come along by itself: warn, with the assign line that names it.
- ``gpu.rom``: a display GPU (not the boot VGA) without an expansion ROM shows nothing in the VM until the guest
  driver loads (no VGA BIOS / UEFI GOP): warn, pointing at ``--romfile``.
"""

from __future__ import annotations

from ..discovery import Device
from ..findings import FAIL, PASS, SKIP, WARN, Finding
from ..host.bars import HOLE64_DEFAULT, LARGE_BAR, mmio64_window_for, read_bars, size_text
from ..host.pci import PciFunction, read_function
from ..host.root import HostRoot
from .base import DeviceKind, register

__all__ = ["GpuKind"]


def _finding(*a: object, **kw: object):
    return Finding(*a, **kw)  # type: ignore[arg-type]


def _large_bar(h: HostRoot, dev: Device) -> object:
    title = "Large BARs"
    bars, _ = read_bars(h, dev.id)
    if not bars:
        return _finding("gpu.large_bar", title, PASS, f"{dev.id}: no memory BARs in sysfs resource", device=dev.id)
    unset = [b for b in bars if b.unassigned]
    if unset:
        return _finding("gpu.large_bar", title, FAIL,
                        f"{dev.id}: {', '.join(b.label() for b in unset)} has no address: the firmware found no "
                        "room for it",
                        "enable \"Above 4G Decoding\" in the BIOS/UEFI setup (with \"Resizable BAR\" / \"Re-Size BAR "
                        "Support\" where the card uses a large BAR) and reboot; booting with pci=realloc lets the "
                        "kernel try to place it instead", device=dev.id)
    big = max(bars, key=lambda b: b.size)
    where = f"at {big.start:#x}" + (" (above 4 GiB)" if big.start >= 1 << 32 else "")
    if not big.is_64 or big.size < LARGE_BAR:
        return _finding("gpu.large_bar", title, PASS,
                        f"{dev.id}: largest BAR: {big.label()} {where}; no firmware setting or VM MMIO window needed",
                        device=dev.id)
    window = mmio64_window_for([big.size], "q35")
    ev = (f"{dev.id}: {big.label()} mapped {where}: the firmware's above-4G decoding is on (a BAR of "
          f"{size_text(LARGE_BAR)} or more cannot sit below 4 GiB)")
    if window is None:
        return _finding("gpu.large_bar", title, PASS,
                        ev + f"; fits QEMU's default {size_text(HOLE64_DEFAULT['q35'])} 64-bit MMIO window on q35",
                        device=dev.id)
    return _finding("gpu.large_bar", title, WARN,
                    ev + f"; the VM needs a {size_text(window)} 64-bit MMIO window (QEMU's q35 default is "
                    f"{size_text(HOLE64_DEFAULT['q35'])})",
                    f"start the VM with -global q35-pcihost.pci-hole64-size={window >> 30}G, and with OVMF -fw_cfg "
                    f"name=opt/ovmf/X-PciMmio64Mb,string={window >> 20} (libvirt: <pcihole64>; `passthru qemu-args` "
                    "and `libvirt-xml` print the same note)", device=dev.id)


def _group_endpoints(h: HostRoot, fn: PciFunction) -> list[PciFunction]:
    out = []
    for addr in h.listdir(f"{h.sys}/kernel/iommu_groups/{fn.iommu_group}/devices"):
        if addr == fn.address:
            continue
        mate = read_function(h, addr, find_vf_index=False)
        if mate is not None and not mate.is_bridge:
            out.append(mate)
    return out


def _describe(f: PciFunction) -> str:
    what = {0x04: "audio", 0x0C: "serial bus/USB", 0x01: "storage", 0x02: "network", 0x03: "display"}.get(
        f.base_class, f"class {f.class_prefix:04x}")
    return f"{f.address} ({what}, driver {f.driver or 'none'})"


def _companions(h: HostRoot, dev: Device) -> object:
    title = "Companion functions travel together"
    fn = dev.fact
    assert isinstance(fn, PciFunction)
    if dev.role == "companion":
        return _finding("gpu.companions", title, PASS,
                        f"{dev.id} is a companion of GPU {dev.companion_of}: it goes to the VM with it (same slot "
                        "in the guest)", device=dev.id)
    if fn.iommu_group is None:
        return _finding("gpu.companions", title, SKIP, f"{dev.id} has no IOMMU group", device=dev.id)
    mates = _group_endpoints(h, fn)
    companions = set(dev.companions)
    strangers = [m for m in mates if m.address not in companions]
    mate_addrs = {m.address for m in mates}
    apart = sorted(companions - mate_addrs)
    if not strangers and not apart:
        ev = (f"{', '.join(sorted(companions))} and {dev.id} are exactly the endpoints of IOMMU group "
              f"{fn.iommu_group}: they go to a VM together" if companions else
              f"{dev.id} has no companion functions and is alone in IOMMU group {fn.iommu_group}")
        return _finding("gpu.companions", title, PASS, ev, device=dev.id)
    ev, fixes = [], []
    if strangers:
        ev.append(f"IOMMU group {fn.iommu_group} also holds {', '.join(_describe(m) for m in strangers)}, not part "
                  "of this card: a group goes to one VM whole, so the VM gets them too")
        fixes.append("move the card to a slot whose group holds only the card (a root port with ACS), or accept "
                     "giving the VM those devices")
    if apart:
        ev.append(f"companion {', '.join(apart)} is in another IOMMU group, so assigning {dev.id} does not bring it")
        fixes.append(f"name it too: `passthru assign VM {dev.id} {' '.join(apart)}`")
    return _finding("gpu.companions", title, WARN, "; ".join(ev), "; ".join(fixes), device=dev.id)


def _rom(h: HostRoot, dev: Device) -> object | None:
    fn = dev.fact
    if dev.role != "display" or not isinstance(fn, PciFunction) or fn.boot_vga:
        return None  # the boot VGA is refused anyway (device.boot_vga); its ROM is the firmware's shadow copy
    title = "Expansion ROM"
    _, rom = read_bars(h, dev.id)
    if rom is not None:
        return _finding("gpu.rom", title, PASS, f"{dev.id}: ROM BAR of {size_text(rom.size)} (the VM's firmware "
                        "runs it; `qemu-args --romfile ADDR=FILE` replaces it, `--rombar-off` hides it)",
                        device=dev.id)
    return _finding("gpu.rom", title, WARN,
                    f"{dev.id} shows no expansion ROM: the VM shows nothing on it until the guest's driver loads "
                    "(no VGA BIOS / UEFI GOP)",
                    "if the VM must show its boot screen on this GPU, give it a ROM image: `passthru qemu-args VM "
                    f"--romfile {dev.id}=FILE` (a dump of the card's ROM, starting with 55 AA)", device=dev.id)


class GpuKind(DeviceKind):
    name = "gpu"
    hotpluggable = True

    def checks(self, h: HostRoot, device: Device) -> list[Finding]:
        if device.bus != "pci" or not isinstance(device.fact, PciFunction):
            return []
        out = [_companions(h, device)]
        if device.role != "companion":
            out.append(_large_bar(h, device))
        rom = _rom(h, device)
        if rom is not None:
            out.append(rom)
        return out


register(GpuKind())
