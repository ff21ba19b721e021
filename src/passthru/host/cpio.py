"""Listing an initramfs image without unpacking it: the newc cpio archives the kernel reads, in the layout
mkinitramfs and dracut write — uncompressed archives first (CPU microcode), then one compressed archive (gzip,
xz, lzma or bzip2 here; zstd and lz4 need the distribution's own lister, see :class:`Unsupported`), each ended by
a ``TRAILER!!!`` entry and padded with zeros.

    entries = read_initramfs(open(path, "rb"), keep=lambda name: name.startswith("etc/"))
    entries["etc/modprobe.d/passthru-vfio.conf"]   # its bytes; names not kept map to None

Names are relative (``usr/lib/modules/...``: a leading ``./`` or ``/`` is dropped). Reads as a stream: memory
stays at the size of the kept files.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from typing import BinaryIO, Callable

__all__ = ["read_initramfs", "Unsupported", "BadArchive"]

_HEADER = 110  # "070701" + 13 fields of 8 hex digits
_MAGICS = (b"070701", b"070702")
_TRAILER = "TRAILER!!!"
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00", "lzma"), (b"BZh", "bzip2"),
               (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x02\x21\x4c\x18", "lz4"), (b"\x89LZO", "lzo"))
_OPEN = {"gzip": gzip.GzipFile, "xz": lzma.LZMAFile, "lzma": lzma.LZMAFile, "bzip2": bz2.BZ2File}


class Unsupported(Exception):
    """The image is compressed with something Python's standard library cannot read (str: its name)."""


class BadArchive(Exception):
    """Not a cpio archive, or a truncated one."""


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BadArchive(f"truncated: wanted {n} bytes, got {len(data)}")
    return data


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise BadArchive("truncated file data")
        n -= len(chunk)


def _archive(f: BinaryIO, first: bytes, keep: Callable[[str], bool], out: dict[str, bytes | None]) -> None:
    """One cpio archive from its first 6 bytes (already read) up to and including its trailer."""
    magic = first
    while True:
        if magic not in _MAGICS:
            raise BadArchive(f"not a newc cpio header: {magic[:6]!r}")
        fields = _read_exact(f, _HEADER - 6)
        try:
            mode, size, namesize = int(fields[8:16], 16), int(fields[48:56], 16), int(fields[88:96], 16)
        except ValueError:
            raise BadArchive("malformed cpio header") from None
        name = _read_exact(f, namesize).rstrip(b"\0").decode("utf-8", "surrogateescape")
        _skip(f, (-(_HEADER + namesize)) % 4)
        if name == _TRAILER:
            return
        name = name.removeprefix("./").lstrip("/")
        if mode & 0o170000 == 0o100000 and size <= 1 << 20 and keep(name):
            out[name] = _read_exact(f, size)
        else:
            out.setdefault(name, None)
            _skip(f, size)
        _skip(f, (-size) % 4)
        magic = f.read(6)


def _next_magic(f: BinaryIO) -> bytes:
    """The first 6 bytes after the zero padding between archives ("" at the end)."""
    head = f.read(6)
    while head and not head.strip(b"\0"):
        head = f.read(6)
    if head and head[0] == 0:  # padding ends inside this chunk
        head = head.lstrip(b"\0")
        head += f.read(6 - len(head))
    return head


def read_initramfs(f: BinaryIO, keep: Callable[[str], bool] = lambda name: False) -> dict[str, bytes | None]:
    """Every entry's name -> its bytes when ``keep(name)`` (regular files up to 1 MiB), else None. Raises Unsupported
    for a compression the standard library lacks, BadArchive for anything that is not an initramfs."""
    out: dict[str, bytes | None] = {}
    head = _next_magic(f)
    if not head:
        raise BadArchive("empty file")
    while head:
        if head in _MAGICS:
            _archive(f, head, keep, out)
            head = _next_magic(f)
            continue
        kind = next((k for m, k in _COMPRESSED if head.startswith(m)), None)
        if kind is None:
            raise BadArchive(f"neither cpio nor a known compression: {head!r}")
        if kind not in _OPEN:
            raise Unsupported(kind)
        rest = _Prefixed(head, f)
        z = _OPEN[kind](fileobj=rest) if kind == "gzip" else _OPEN[kind](rest)
        with z:
            ended = False  # after a trailer, an error is trailing padding the decompressor rejects
            try:
                inner = _next_magic(z)
                while inner:
                    ended = False
                    _archive(z, inner, keep, out)
                    ended = True
                    inner = _next_magic(z)
            except (OSError, EOFError, lzma.LZMAError) as e:
                if not ended:
                    raise BadArchive(f"{kind}: {e}") from None
        return out  # the kernel reads nothing after the compressed archive either
    return out


class _Prefixed:
    """A read-only stream: ``prefix`` then the rest of ``f`` (the magic bytes were already consumed)."""

    def __init__(self, prefix: bytes, f: BinaryIO) -> None:
        self.prefix, self.f = prefix, f

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            if n < 0:
                data, self.prefix = self.prefix + self.f.read(), b""
                return data
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            return data + (self.f.read(n - len(data)) if n > len(data) else b"")
        return self.f.read(n)

    def readable(self) -> bool:
        return True
