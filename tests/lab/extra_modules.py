"""Out-of-tree kernel modules the lab needs and Debian does not ship built: ``mtty`` (a real mediated-device parent:
the vGPU path without a GPU) and ``netdevsim`` (a real SR-IOV NIC with VFs, netlink VF settings and switchdev).

Built once per kernel from Debian's own packages, like an operator would with DKMS: ``linux-headers-<v>``
(+ its ``-common`` part and ``linux-kbuild-6.1``) and ``linux-source-6.1`` (only ``samples/vfio-mdev/mtty.c`` and
``drivers/net/netdevsim/`` are taken from its tarball), compiled with ``make -C <headers> M=<dir> modules`` and
installed into the cached kernel's ``lib/modules/<v>/extra`` (then ``depmod``), so ``modprobe mtty`` /
``modprobe netdevsim`` work in the guest. Cost: ~150 MB of downloads and ~20 s, once; cached in the kernel directory
(``.extra-complete``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["ensure_extra_modules", "EXTRA_MODULES"]

EXTRA_MODULES = ("mtty", "netdevsim")
MARK = ".extra-complete"
TIMEOUT = 900


def _kbuild_major(version: str) -> str:
    return ".".join(version.split(".")[:2])  # 6.1.0-56-amd64 -> 6.1


def ensure_extra_modules(kdir: Path, version: str, run, log) -> list[str]:
    """Build and install the extra modules into ``kdir`` (a cached kernel directory) unless already there.
    ``run(argv, timeout=, cwd=)`` and ``log(msg)`` come from tests/lab/build.py."""
    if (kdir / MARK).exists():
        return (kdir / MARK).read_text().split()
    t0 = time.monotonic()
    major = _kbuild_major(version)
    common = version.rsplit("-", 1)[0] + "-common"  # 6.1.0-56-common
    pkgs = [f"linux-headers-{version}", f"linux-headers-{common}", f"linux-kbuild-{major}", f"linux-source-{major}"]
    work = Path(tempfile.mkdtemp(prefix=".extra-", dir=kdir.parent))
    try:
        log(f"building {', '.join(EXTRA_MODULES)} for {version} (once): downloading {' '.join(pkgs)}")
        run(["apt-get", "download", "-o", "APT::Sandbox::User=root", *pkgs], timeout=TIMEOUT, cwd=work)
        root = work / "root"
        source_deb = None
        for deb in sorted(work.glob("*.deb")):
            if deb.name.startswith(f"linux-source-{major}_"):
                source_deb = deb
            else:
                run(["dpkg-deb", "-x", str(deb), str(root)], timeout=TIMEOUT)
        if source_deb is None:
            raise RuntimeError(f"apt-get download left no linux-source-{major} package")
        headers = root / "usr" / "src" / f"linux-headers-{version}"
        # the headers' Makefile includes the -common part by absolute path: point it into our unpacked copy
        mk = headers / "Makefile"
        mk.write_text(mk.read_text().replace("include /usr/src/", f"include {root}/usr/src/"))
        # only two directories of the source tarball (it is xz inside the .deb)
        tarball = f"./usr/src/linux-source-{major}.tar.xz"
        src = work / "src"
        src.mkdir()
        members = [f"linux-source-{major}/samples/vfio-mdev/mtty.c", f"linux-source-{major}/drivers/net/netdevsim/"]
        deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(source_deb)], stdout=subprocess.PIPE)
        outer = subprocess.Popen(["tar", "-x", "-O", tarball], stdin=deb.stdout, stdout=subprocess.PIPE)
        assert deb.stdout is not None
        deb.stdout.close()
        inner = subprocess.run(["tar", "-xJ", "-C", str(src), *members], stdin=outer.stdout, capture_output=True,
                               timeout=TIMEOUT, check=False)
        assert outer.stdout is not None
        outer.stdout.close()
        outer.wait(timeout=TIMEOUT)
        deb.wait(timeout=TIMEOUT)
        if inner.returncode != 0 or outer.returncode != 0:
            raise RuntimeError(f"extracting {members} from {source_deb.name} failed: {inner.stderr.decode()[-500:]}")
        tree = src / f"linux-source-{major}"
        builds = {"mtty": (work / "b" / "mtty", []), "netdevsim": (work / "b" / "netdevsim", ["CONFIG_NETDEVSIM=m"])}
        (work / "b" / "mtty").mkdir(parents=True)
        shutil.copy(tree / "samples" / "vfio-mdev" / "mtty.c", work / "b" / "mtty")
        (work / "b" / "mtty" / "Makefile").write_text("obj-m := mtty.o\n")
        shutil.copytree(tree / "drivers" / "net" / "netdevsim", work / "b" / "netdevsim")
        dest = kdir / "root" / "lib" / "modules" / version / "extra"
        dest.mkdir(parents=True, exist_ok=True)
        for name, (d, extra) in builds.items():
            run(["make", "-C", str(headers), f"M={d}", *extra, "modules"], timeout=TIMEOUT)
            shutil.copy(d / f"{name}.ko", dest / f"{name}.ko")
        run(["depmod", "-b", str(kdir / "root"), version], timeout=300)
        (kdir / MARK).write_text(" ".join(EXTRA_MODULES) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"extra modules ready in {time.monotonic() - t0:.1f}s")
    return list(EXTRA_MODULES)
