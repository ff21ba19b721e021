"""Vendor, device and class names from Debian's ``hwdata`` (pci.ids, usb.ids).

Names are optional: without the files every lookup returns None and discovery carries on with IDs.
The files are memory-mapped and searched per vendor block, never parsed whole (a full parse of pci.ids costs
~60 ms; one lookup this way is under 1 ms and results are cached).
"""

from __future__ import annotations

import mmap
import re
import os
from functools import lru_cache

from .root import HostRoot

__all__ = ["IdsDb", "pci_ids", "usb_ids", "PCI_IDS_PATHS", "USB_IDS_PATHS"]

PCI_IDS_PATHS = ("/usr/share/hwdata/pci.ids", "/usr/share/misc/pci.ids", "/usr/share/pci.ids")
USB_IDS_PATHS = ("/usr/share/hwdata/usb.ids", "/usr/share/misc/usb.ids", "/var/lib/usbutils/usb.ids")
IDS_ENV = "PASSTHRU_IDS_DIR"


# a newline followed by a line that is neither a comment nor indented deeper than depth N
_BLOCK_END = [re.compile(rb"\n(?!#|\t{%d})" % (n + 1)) for n in range(3)]


class IdsDb:
    """Lookups in one pci.ids / usb.ids file (same format: vendor, \\tdevice, \\t\\tsubsystem; C class)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._data: bytes | mmap.mmap = b""
        if path:
            try:
                with open(path, "rb") as f:
                    self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                self.path = None
        self._vendor_cache: dict[int, tuple[int, int] | None] = {}
        self._cache: dict[tuple, str | None] = {}
        self._class_start = -2

    @property
    def available(self) -> bool:
        return bool(self.path)

    def _block(self, key: bytes, start: int, end: int) -> tuple[int, int] | None:
        """Find line ``\\n<key>  name`` in [start, end); return (line start, end of its indented block)."""
        data = self._data
        pos = data.find(b"\n" + key + b"  ", start, end)
        if pos < 0:
            return None
        pos += 1
        depth = len(key) - len(key.lstrip(b"\t"))
        # the block ends at the first following line indented no deeper than this one (comments excepted)
        m = _BLOCK_END[depth].search(data, pos, end)
        return pos, (m.start() if m else end)

    def _name_at(self, pos: int, keylen: int) -> str:
        data = self._data
        eol = data.find(b"\n", pos)
        if eol < 0:
            eol = len(data)
        return bytes(data[pos + keylen + 2 : eol]).decode("utf-8", "replace").strip()

    def _vendor(self, vendor: int) -> tuple[int, int] | None:
        if vendor not in self._vendor_cache:
            end = self._class_offset()
            self._vendor_cache[vendor] = self._block(b"%04x" % vendor, 0, end) if self.path else None
        return self._vendor_cache[vendor]

    def _class_offset(self) -> int:
        if self._class_start == -2:
            pos = self._data.find(b"\nC ") if self.path else -1
            self._class_start = pos if pos >= 0 else len(self._data)
        return self._class_start

    def vendor(self, vendor: int) -> str | None:
        key = ("v", vendor)
        if key not in self._cache:
            blk = self._vendor(vendor)
            self._cache[key] = self._name_at(blk[0], 4) if blk else None
        return self._cache[key]

    def device(self, vendor: int, device: int) -> str | None:
        key = ("d", vendor, device)
        if key not in self._cache:
            name = None
            blk = self._vendor(vendor)
            if blk:
                d = self._block(b"\t%04x" % device, blk[0], blk[1])
                name = self._name_at(d[0], 5) if d else None
            self._cache[key] = name
        return self._cache[key]

    def subsystem(self, vendor: int, device: int, sub_vendor: int, sub_device: int) -> str | None:
        key = ("s", vendor, device, sub_vendor, sub_device)
        if key not in self._cache:
            name = None
            blk = self._vendor(vendor)
            if blk:
                d = self._block(b"\t%04x" % device, blk[0], blk[1])
                if d:
                    s = self._block(b"\t\t%04x %04x" % (sub_vendor, sub_device), d[0], d[1])
                    name = self._name_at(s[0], 11) if s else None
            self._cache[key] = name
        return self._cache[key]

    def pci_class(self, class_code: int) -> str | None:
        """Most specific name for a 24-bit class code: prog-if, else subclass, else base class."""
        key = ("c", class_code)
        if key not in self._cache:
            name = None
            if self.path:
                start = self._class_offset()
                base = self._block(b"C %02x" % (class_code >> 16), start - 1 if start > 0 else 0, len(self._data))
                if base:
                    name = self._name_at(base[0], 4)
                    sub = self._block(b"\t%02x" % ((class_code >> 8) & 0xFF), base[0], base[1])
                    if sub:
                        name = self._name_at(sub[0], 3)
                        pi = self._block(b"\t\t%02x" % (class_code & 0xFF), sub[0], sub[1])
                        if pi and class_code & 0xFF:
                            name = f"{name} ({self._name_at(pi[0], 4)})"
            self._cache[key] = name
        return self._cache[key]

    def usb_class(self, cls: int) -> str | None:
        key = ("uc", cls)
        if key not in self._cache:
            name = None
            if self.path:
                pos = self._data.find(b"\nC %02x  " % cls)
                name = self._name_at(pos + 1, 4) if pos >= 0 else None
            self._cache[key] = name
        return self._cache[key]


def _first_existing(h: HostRoot | None, paths: tuple[str, ...], filename: str) -> str | None:
    env_dir = os.environ.get(IDS_ENV)
    candidates = [os.path.join(env_dir, filename)] if env_dir else []
    if h is not None and not h.is_live:
        candidates += [h.path(p) for p in paths]
    candidates += list(paths)
    for p in candidates:
        if os.path.isfile(p):
            return p
    return None


@lru_cache(maxsize=8)
def _db(path: str | None) -> IdsDb:
    return IdsDb(path)


def pci_ids(h: HostRoot | None = None) -> IdsDb:
    """pci.ids for this root ($PASSTHRU_IDS_DIR, the root's own /usr/share, then this machine's)."""
    return _db(_first_existing(h, PCI_IDS_PATHS, "pci.ids"))


def usb_ids(h: HostRoot | None = None) -> IdsDb:
    return _db(_first_existing(h, USB_IDS_PATHS, "usb.ids"))
