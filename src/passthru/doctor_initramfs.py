"""``passthru doctor``'s early-binding checks (``passthru prepare --early``, or any modprobe.d ``options vfio-pci
ids=`` line from a guide):

- ``boot.initramfs``: the running kernel's initramfs holds what the configuration says — the vfio-pci module
  (unless built in) and every modprobe.d file that gives vfio-pci ``ids=``, byte for byte. Read on the live host
  only: passthru reads the newc cpio itself (uncompressed, gzip, xz, lzma, bzip2) and runs the distribution's
  lister (``lsinitramfs`` / ``lsinitrd``, argument list, timeout) for zstd and lz4 images; then only names are
  known, so an image older than a file counts as stale. Fails with the fix when the image lacks it.
- ``vfio.early`` (per device named in ``/etc/modprobe.d/passthru-vfio.conf``): the device is on vfio-pci; if it
  is not, a warning with the likely cause (the file is newer than this boot, its IDs are not in ``ids=``, the
  initramfs lacks the configuration, its driver is built in or has no softdep).

Read-only, like all of doctor.
"""

from __future__ import annotations

import os
import re

from .findings import FAIL, PASS, SKIP, WARN, Finding
from .host.boot import read_boot
from .host.cpio import BadArchive, Unsupported, read_initramfs as read_cpio
from .host.initramfs import (DRACUT_CONF, EARLY_FILE, ITOOLS_MODULES, EarlyConfig, InitramfsInfo, kernel_images,
                             read_early, read_initramfs, vfio_ids_options)
from .host.iommu import is_vfio_driver
from .host.kernel import read_kernel
from .host.kmod import builtin_modules, driver_module
from .host.pci import read_function
from .host.root import HostRoot

__all__ = ["early_findings", "LIST_TIMEOUT"]

LIST_TIMEOUT = 120.0
_TITLE = "Initramfs has the early binding"
_VFIO_KO = re.compile(r"(?:^|/)vfio[-_]pci\.ko(?:\.\w+)?$")


def _listing(h: HostRoot, image: str, info: InitramfsInfo, runner) -> tuple[dict[str, bytes | None] | None, str]:
    """(name -> bytes for modprobe.d files / None, how it was read), or (None, why not)."""
    try:
        with open(h.path(image), "rb") as f:
            return read_cpio(f, keep=lambda n: "modprobe.d/" in n), "read by passthru"
    except PermissionError:
        return None, f"cannot read {image}: run `passthru doctor` as root"
    except OSError as e:
        return None, f"cannot read {image}: {e.strerror or e}"
    except BadArchive as e:
        return None, f"{image} is not an initramfs passthru can read ({e})"
    except Unsupported as e:
        kind = str(e)
    lister = info.lister or "lsinitramfs"
    if runner is None:
        from .prepare import SubprocessRunner

        runner = SubprocessRunner()
    try:
        rc, out, err = runner.run([lister, h.path(image)], LIST_TIMEOUT)
    except (OSError, TimeoutError) as e:
        rc, out, err = 127, "", str(e)
    if rc == 127:
        return None, f"{image} is {kind}-compressed and {lister} is not installed to list it"
    if rc != 0:
        last = ([ln for ln in (err or out).splitlines() if ln.strip()] or ["no error output"])[-1]
        return None, f"`{lister} {image}` failed (exit {rc}): {last.strip()}"
    names = {}
    for line in out.splitlines():  # lsinitramfs: one path a line; lsinitrd: ls -l lines, the path last
        words = line.split()
        if words:
            path = words[-3] if len(words) >= 3 and words[-2] == "->" else words[-1]
            names[path.removeprefix("./").lstrip("/")] = None
    return names, f"listed by {lister}"


def _in_image(names: dict[str, bytes | None], path: str) -> str | None:
    """The entry name ``path`` has in the image (``/usr/lib/x`` may sit at ``lib/x``), None when absent."""
    rel = path.lstrip("/")
    for cand in (rel, rel.removeprefix("usr/"), "usr/" + rel):
        if cand in names:
            return cand
    return None


def _config_lacks_vfio(h: HostRoot, info: InitramfsInfo) -> bool:
    conf = ITOOLS_MODULES if info.tool == "initramfs-tools" else DRACUT_CONF if info.tool == "dracut" else None
    text = h.read(h.path(conf)) if conf else None
    return conf is not None and not re.search(r"(?m)^[^#]*\bvfio[-_]pci\b", text or "")


def _check_image(h: HostRoot, early: EarlyConfig | None, files: list[str], runner, live: bool) -> Finding:
    info = read_initramfs(h, read_boot(h).family)
    release = read_kernel(h).release
    rebuild = f"`{' '.join(info.rebuild)}`" if info.rebuild else "rebuild the initramfs"
    apply = f"`passthru prepare --early {' '.join(early.devices)} --apply`" if early and early.devices else None
    if not live:
        return Finding("boot.initramfs", _TITLE, SKIP, f"the initramfs is read on the live host only (root {h.base})")
    image = kernel_images(h).get(release or "")
    if image is None:
        image = next((p for p in (f"/boot/initrd.img-{release}", f"/boot/initramfs-{release}.img")
                      if h.exists(h.path(p))), None)
    if image is None:
        return Finding("boot.initramfs", _TITLE, WARN, f"no initramfs for the running kernel {release} in /boot",
                       f"{rebuild}, then reboot")
    names, how = _listing(h, image, info, runner)
    if names is None:
        return Finding("boot.initramfs", _TITLE, SKIP, how)
    builtin = builtin_modules(h, release)
    missing, stale = [], []
    if not (builtin and "vfio_pci" in builtin) and not any(_VFIO_KO.search(n) for n in names):
        missing.append("the vfio-pci module")
    img_mtime = os.stat(h.path(image)).st_mtime
    for path in files:
        name = _in_image(names, path)
        data = h.read_bytes(h.path(path))
        if name is None:
            missing.append(path)
        elif names[name] is not None and data is not None and names[name] != data:
            stale.append(f"an older {path}")
        elif names[name] is None and os.stat(h.path(path)).st_mtime > img_mtime:
            stale.append(f"{path} from before its last change")
    if missing or stale:
        ev = f"{image} ({how}) " + "; ".join(([f"lacks {', '.join(missing)}"] if missing else [])
                                             + ([f"has {', '.join(stale)}"] if stale else []))
        fix = (f"{apply} (puts vfio-pci in the initramfs and rebuilds it), then reboot"
               if apply and "the vfio-pci module" in missing and _config_lacks_vfio(h, info)
               else f"{rebuild}, then reboot")
        return Finding("boot.initramfs", _TITLE, FAIL, ev + ": vfio-pci will not claim the devices first at boot",
                       fix)
    held = (["vfio-pci (built in)"] if builtin and "vfio_pci" in builtin else ["vfio-pci"]) + files
    return Finding("boot.initramfs", _TITLE, PASS, f"{image} holds {', '.join(held)} ({how})")


def _boot_time(h: HostRoot) -> float | None:
    m = re.search(r"^btime\s+(\d+)", h.read(h.proc + "/stat") or "", re.M)
    return float(m.group(1)) if m else None


def _check_device(h: HostRoot, early: EarlyConfig, address: str, image: Finding) -> Finding:
    fn = read_function(h, address)
    title = "Claimed by vfio-pci at boot"
    if fn is None:
        return Finding("vfio.early", title, WARN, f"{address} is named in {EARLY_FILE} but not on the bus",
                       "run passthru prepare --early again without it", device=address)
    if is_vfio_driver(fn.driver):
        return Finding("vfio.early", title, PASS, f"{address} is on {fn.driver}", device=address)
    now = f"{address} is on {fn.driver or 'no driver'}, not vfio-pci"
    fix = f"`passthru bind {address}` moves it now"
    again = f"`passthru prepare --early {' '.join(early.devices)} --apply`"
    try:
        written = os.stat(h.path(EARLY_FILE)).st_mtime
    except OSError:
        written = None
    booted = _boot_time(h)
    ids = early.ids
    matched = any(all(int(p, 16) == v for p, v in zip(i.split(":"), (fn.vendor_id, fn.device_id,
                                                                     fn.subsystem_vendor_id, fn.subsystem_device_id)))
                  for i in ids)
    module, builtin = driver_module(h, fn.driver) if fn.driver else (None, False)
    if written is not None and booted is not None and written > booted:
        cause, fix = f"{EARLY_FILE} was written after this boot", f"reboot; {fix}"
    elif not matched:
        cause, fix = f"its IDs {fn.ids} are not in ids={','.join(ids)} (another card?)", f"{again}; {fix}"
    elif image.status == FAIL:
        cause, fix = "the initramfs lacks the early-binding configuration (see boot.initramfs)", image.fix or fix
    elif builtin:
        cause = f"its driver {fn.driver} is built into the kernel and probes before vfio-pci loads"
        fix = f"`passthru bind {address} --persist` binds it at every boot instead"
    elif module and module not in early.softdeps:
        cause, fix = f"no softdep orders {module} after vfio-pci", f"{again} adds it; {fix}"
    else:
        cause = ("vfio-pci did not get it first, or something rebound it after boot (a udev rule, "
                 "driver_override, `passthru restore`)")
    return Finding("vfio.early", title, WARN, f"{now}: likely {cause}", fix, device=address)


def early_findings(h: HostRoot, runner=None, live: bool | None = None) -> list[Finding]:
    """The checks above. ``live`` None: only when ``h`` is the running host; ``runner`` (prepare's Runner) runs
    the lister, the real one when None."""
    live = h.is_live if live is None else live
    early = read_early(h)
    files = list(vfio_ids_options(h))
    if early is not None and EARLY_FILE not in files:
        files.insert(0, EARLY_FILE)
    if early is None and not files:
        return [Finding("boot.initramfs", _TITLE, SKIP, "no early binding configured (no vfio-pci ids= in "
                                                       "modprobe.d; `passthru prepare --early` sets it up)")]
    image = _check_image(h, early, files, runner, live)
    out = [image]
    for address in early.devices if early else ():
        out.append(_check_device(h, early, address, image))
    return out
