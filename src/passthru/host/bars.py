"""PCI BARs as the firmware mapped them (sysfs ``resource``: one "start end flags" line per BAR, 0-5, and the
expansion ROM, 6), and the 64-bit MMIO window a VM needs to hold large ones. Read once here for the GPU kind's
checks (``gpu.large_bar``, ``gpu.rom``) and the attachments' ``largest_bar`` alike.

    bars, rom = read_bars(h, "0000:01:00.0")        # memory BARs with a size, the ROM or None
    largest_bar(h, "0000:01:00.0")                  # bytes of the largest 64-bit memory BAR, or None
    mmio64_window_for([32 << 30], "q35")            # bytes of window to ask QEMU for, or None when the default holds
"""

from __future__ import annotations

from dataclasses import dataclass

from .root import HostRoot

__all__ = ["Bar", "read_bars", "largest_bar", "size_text", "mmio64_window_for", "LARGE_BAR", "HOLE64_DEFAULT",
           "IORESOURCE_MEM", "IORESOURCE_MEM_64", "IORESOURCE_PREFETCH", "IORESOURCE_UNSET"]

IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000
IORESOURCE_UNSET = 0x20000000
# A naturally aligned BAR of 2 GiB or more cannot be placed below 4 GiB next to RAM, the APIC and the flash: it needs
# the firmware's "Above 4G Decoding" (and, for a resized BAR, "Resizable BAR" support)
LARGE_BAR = 2 << 30


@dataclass(frozen=True, slots=True)
class Bar:
    index: int
    start: int
    size: int
    flags: int

    @property
    def is_mem(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM)

    @property
    def is_64(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM_64)

    @property
    def unassigned(self) -> bool:
        return self.start == 0 or bool(self.flags & IORESOURCE_UNSET)

    def label(self) -> str:
        kind = ("64-bit " if self.is_64 else "32-bit ") + ("prefetchable" if self.flags & IORESOURCE_PREFETCH
                                                            else "non-prefetchable")
        return f"BAR{self.index} ({size_text(self.size)}, {kind})"


def size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:g} {unit}" if v < 10 or v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def read_bars(h: HostRoot, address: str) -> tuple[list[Bar], Bar | None]:
    """The memory BARs (lines 0-5 of ``resource``) and the expansion ROM (line 6), sizes > 0 only."""
    text = h.read(f"{h.sys}/bus/pci/devices/{address}/resource") or ""
    bars, rom = [], None
    for i, line in enumerate(text.splitlines()[:7]):
        try:
            start, end, flags = (int(x, 16) for x in line.split()[:3])
        except ValueError:
            continue
        if end <= start:  # an empty line (0 0 0); an unassigned BAR keeps its size: start 0, end size-1
            continue
        b = Bar(i, start, end - start + 1, flags)
        if i == 6:
            rom = b
        elif b.is_mem:
            bars.append(b)
    return bars, rom


def largest_bar(h: HostRoot, address: str) -> int | None:
    """Size in bytes of the function's largest 64-bit memory BAR (assigned or not), or None."""
    sizes = [b.size for b in read_bars(h, address)[0] if b.is_64]
    return max(sizes) if sizes else None


# QEMU 7.2 defaults (`-device q35-pcihost,help` / `i440FX-pcihost,help`): pci-hole64-size 32 GiB on q35, 2 GiB on pc
HOLE64_DEFAULT = {"q35": 32 << 30, "pc": 2 << 30}


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def mmio64_window_for(bar_sizes: list[int], family: str) -> int | None:
    """Bytes of 64-bit MMIO window to ask for when the large BARs may not fit the machine's default, else None.

    A heuristic: BARs are naturally aligned, so the window is twice the power of two that holds all the large
    BARs (each rounded up to a power of two). Needed only when that exceeds QEMU's default ``pci-hole64-size``."""
    bars = [_pow2(n) for n in bar_sizes if n]
    if not bars:
        return None
    need = 2 * _pow2(sum(bars))
    return need if need > HOLE64_DEFAULT[family] else None
