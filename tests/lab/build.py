"""Build (once) what the real-kernel lab boots: a Debian kernel and a busybox initramfs, cached outside the repo.

Cache layout (``PASSTHRU_LAB_CACHE``, default ``/var/cache/passthru-lab``)::

    kernel-<version>/                 one unpacked Debian kernel package per version
        linux-image-<version>_*.deb   the downloaded package (kept: a rebuild never downloads again)
        root/boot/vmlinuz-<version>
        root/lib/modules/<version>/   depmod'ed; the guest's /lib/modules/<version> points here (through 9p);
                                      extra/ holds mtty and netdevsim (tests/lab/extra_modules.py)
        .complete                     written last: a half-built directory is never used
    initramfs-<version>-<hash>.cpio.gz   hash over init.sh, the module files and busybox: edit init.sh, get a new one
    runs/                             per-run directories of tests/lab/vm.py (disk image, shared out dir)

The kernel version comes from ``PASSTHRU_LAB_KERNEL`` (e.g. ``6.1.0-56-amd64``), else from
``apt-cache depends linux-image-amd64``; when apt knows nothing (no package lists), the newest kernel already in the
cache is used, else ``apt-get update`` is run once and apt is asked again. The first build costs one download
(about 70 MB) and ~5 s of unpacking; later builds cost nothing but a hash of three small files.

Run by hand: ``python -m tests.lab.build`` (prints what it built). The pytest fixture calls :func:`ensure_built`.
Only the standard library is used, so the system ``python3`` can run it.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    from .extra_modules import ensure_extra_modules
except ImportError:  # run as a script: python tests/lab/build.py
    from extra_modules import ensure_extra_modules  # type: ignore[no-redef]

__all__ = ["LabImage", "LabBuildError", "cache_dir", "ensure_built", "resolve_kernel_version", "MODULES"]

DEFAULT_CACHE = "/var/cache/passthru-lab"
CACHE_ENV = "PASSTHRU_LAB_CACHE"
KERNEL_ENV = "PASSTHRU_LAB_KERNEL"
BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("init.sh")
# what the initramfs must load before it can mount the 9p root and the overlay, in dependency order; missing
# dependencies are added from modules.dep, built-in modules are skipped
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "netfs",
           "fscache", "9pnet", "9pnet_virtio", "9p", "overlay")
# bump when the initramfs layout written below changes in a way init.sh's hash would not show
FORMAT = 1
APT_TIMEOUT = 600
KVER_RE = re.compile(r"^\d+\.\d+\.\d+-\d+-amd64$")


class LabBuildError(RuntimeError):
    """The lab image could not be built; the message says what to install or fix."""


@dataclass(frozen=True)
class LabImage:
    """What one boot needs: the kernel, the initramfs, and the modules directory the guest links to."""

    version: str
    kernel: Path
    initramfs: Path
    moddir: Path
    cache: Path


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def log(msg: str) -> None:
    print(f"passthru-lab: {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], *, timeout: float, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise LabBuildError(f"{argv[0]} not found; install it (see tests/lab/README.md)") from e
    except subprocess.TimeoutExpired as e:
        raise LabBuildError(f"{' '.join(argv)} took longer than {timeout}s") from e
    if p.returncode != 0:
        raise LabBuildError(f"{' '.join(argv)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return p.stdout


# ---------------------------------------------------------------------------------------------------- kernel

def _apt_kernel_version() -> str | None:
    try:
        out = _run(["apt-cache", "depends", "linux-image-amd64"], timeout=60)
    except LabBuildError:
        return None
    m = re.search(r"Depends:\s*linux-image-(\d+\.\d+\.\d+-\d+-amd64)\b", out)
    return m.group(1) if m else None


def _cached_versions(cache: Path) -> list[str]:
    found = []
    for d in cache.glob("kernel-*"):
        v = d.name[len("kernel-"):]
        if KVER_RE.match(v) and (d / ".complete").exists():
            found.append(v)
    return sorted(found, key=lambda v: [int(x) for x in re.findall(r"\d+", v)])


def resolve_kernel_version(cache: Path | None = None) -> str:
    """The Debian kernel version the lab boots (``6.1.0-N-amd64``)."""
    cache = cache or cache_dir()
    forced = os.environ.get(KERNEL_ENV)
    if forced:
        if not KVER_RE.match(forced):
            raise LabBuildError(f"{KERNEL_ENV}={forced!r} is not a Debian amd64 kernel version like 6.1.0-56-amd64")
        return forced
    v = _apt_kernel_version()
    if v:
        return v
    cached = _cached_versions(cache)
    if cached:
        return cached[-1]
    log("apt knows no linux-image-amd64; running apt-get update")
    _run(["apt-get", "update", "-qq"], timeout=APT_TIMEOUT)
    v = _apt_kernel_version()
    if not v:
        raise LabBuildError("apt-cache depends linux-image-amd64 names no kernel; is this Debian with its main "
                            f"archive configured? Or set {KERNEL_ENV}=6.1.0-N-amd64")
    return v


def _ensure_kernel(cache: Path, version: str) -> Path:
    kdir = cache / f"kernel-{version}"
    if (kdir / ".complete").exists():
        return kdir
    t0 = time.monotonic()
    if kdir.exists():
        shutil.rmtree(kdir)
    tmp = Path(tempfile.mkdtemp(prefix=f".kernel-{version}-", dir=cache))
    tmp.chmod(0o755)
    try:
        pkg = f"linux-image-{version}"
        log(f"downloading {pkg} (once; cached in {cache})")
        _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", pkg], cwd=tmp, timeout=APT_TIMEOUT)
        debs = sorted(tmp.glob(f"{pkg}_*.deb"))
        if not debs:
            raise LabBuildError(f"apt-get download {pkg} left no .deb in {tmp}")
        root = tmp / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)], timeout=300)
        if not (root / "boot" / f"vmlinuz-{version}").exists():
            raise LabBuildError(f"{debs[0].name} has no boot/vmlinuz-{version}")
        _run(["depmod", "-b", str(root), version], timeout=300)
        (tmp / ".complete").write_text(f"{debs[0].name}\n")
        tmp.rename(kdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"kernel {version} ready in {time.monotonic() - t0:.1f}s")
    return kdir


# ---------------------------------------------------------------------------------------------------- modules

def _module_index(moddir: Path) -> tuple[dict[str, str], dict[str, list[str]], set[str]]:
    """name -> relative path, relative path -> dependency paths (as modules.dep lists them), built-in names."""

    def name_of(rel: str) -> str:
        base = rel.rsplit("/", 1)[-1]
        base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
        return base.replace("-", "_")

    paths: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    dep_file = moddir / "modules.dep"
    if not dep_file.exists():
        raise LabBuildError(f"{dep_file} missing (depmod did not run?)")
    for line in dep_file.read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        paths[name_of(mod)] = mod
        deps[mod] = rest.split()
    builtin: set[str] = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {name_of(x) for x in bfile.read_text().split()}
    return paths, deps, builtin


def module_load_order(moddir: Path, wanted: tuple[str, ...] = MODULES) -> tuple[list[tuple[str, str]], list[str]]:
    """[(name, relative path)] in load order (dependencies first), and the wanted names that are built in."""
    paths, deps, builtin = _module_index(moddir)
    order: list[tuple[str, str]] = []
    seen: set[str] = set()
    skipped: list[str] = []

    def visit(rel: str) -> None:
        if rel in seen:
            return
        seen.add(rel)
        # modules.dep lists the deepest dependency last; modprobe loads from the end
        for d in reversed(deps.get(rel, [])):
            visit(d)
        order.append((rel.rsplit("/", 1)[-1].split(".ko")[0], rel))

    for name in wanted:
        key = name.replace("-", "_")
        if key in paths:
            visit(paths[key])
        elif key in builtin:
            skipped.append(name)
        else:
            raise LabBuildError(f"kernel module {name} is neither a module nor built in under {moddir}")
    return order, skipped


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        raise LabBuildError(f"{path} is zstd-compressed; busybox insmod cannot load it and Python cannot unpack it")
    return data


# ---------------------------------------------------------------------------------------------------- cpio

class _Cpio:
    """A minimal writer for the cpio "newc" format the kernel unpacks as initramfs (no external tools)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08x" % f for f in fields) + namez)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def _initramfs_key(version: str, modules: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    h.update(f"format={FORMAT} version={version}\n".encode())
    h.update(INIT_SCRIPT.read_bytes())
    h.update(hashlib.sha256(BUSYBOX.read_bytes()).digest())
    for name, data in modules:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def _ensure_initramfs(cache: Path, version: str, moddir: Path) -> Path:
    if not BUSYBOX.exists():
        raise LabBuildError(f"{BUSYBOX} missing; apt-get install busybox-static")
    probe = _run([str(BUSYBOX), "--list"], timeout=30)
    if not {"insmod", "setsid", "chroot", "mount"} <= set(probe.split()):
        raise LabBuildError(f"{BUSYBOX} lacks insmod/setsid/chroot/mount; install busybox-static (not busybox)")
    order, _builtin = module_load_order(moddir)
    modules = [(name, _module_bytes(moddir / rel)) for name, rel in order]
    key = _initramfs_key(version, modules)
    target = cache / f"initramfs-{version}-{key}.cpio.gz"
    if target.exists():
        return target
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "modules", "newroot", "lower", "rw", "keep"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    c.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    for name, data in modules:
        c.file(f"modules/{name}.ko", data)
    c.file("modules.list", "".join(f"{name}\n" for name, _ in modules).encode())
    blob = gzip.compress(c.finish(), compresslevel=6, mtime=0)
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(blob)
    tmp.rename(target)
    log(f"initramfs {target.name} written ({len(blob) // 1024} KiB, modules: {' '.join(n for n, _ in modules)})")
    return target


# ---------------------------------------------------------------------------------------------------- entry

def ensure_built(cache: Path | None = None) -> LabImage:
    """Build what is missing (under a lock, so parallel runs do not race) and return the image to boot."""
    cache = cache or cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabBuildError(f"cannot create the lab cache {cache}: {e}; set {CACHE_ENV}=DIR") from e
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        version = resolve_kernel_version(cache)
        try:
            kdir = _ensure_kernel(cache, version)
        except LabBuildError as e:
            if os.environ.get(KERNEL_ENV):
                raise
            # stale package lists name a kernel the archive no longer has: refresh them once and ask again
            log(f"{e}; running apt-get update and retrying")
            _run(["apt-get", "update", "-qq"], timeout=APT_TIMEOUT)
            version = resolve_kernel_version(cache)
            kdir = _ensure_kernel(cache, version)
        moddir = kdir / "root" / "lib" / "modules" / version
        try:
            ensure_extra_modules(kdir, version, _run, log)
        except (LabBuildError, RuntimeError, OSError, subprocess.SubprocessError) as e:
            raise LabBuildError(f"building the lab's extra modules (mtty, netdevsim) failed: {e}; they need gcc, "
                                "make and xz-utils (bash scripts/install.sh --test installs them)") from e
        initramfs = _ensure_initramfs(cache, version, moddir)
    return LabImage(version=version, kernel=kdir / "root" / "boot" / f"vmlinuz-{version}", initramfs=initramfs,
                    moddir=moddir, cache=cache)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help=f"cache directory (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        img = ensure_built(Path(args.cache) if args.cache else None)
    except LabBuildError as e:
        print(f"passthru-lab: build failed: {e}", file=sys.stderr)
        return 1
    print(f"kernel     {img.kernel}\ninitramfs  {img.initramfs}\nmodules    {img.moddir}\n"
          f"ready in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
