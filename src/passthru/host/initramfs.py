"""The initramfs side of early binding, read-only: which tool builds the host's initramfs, the file passthru
edits for it, the command that rebuilds every image, the images of each kernel, and the modprobe.d
configuration that makes vfio-pci claim devices at boot (passthru's own file and any other
``options vfio-pci ids=`` line). ``passthru prepare --early`` writes; this module never changes anything.

Tool detection, first match wins (host paths):

1. the programs: ``update-initramfs``/``mkinitramfs`` (initramfs-tools: Debian, Ubuntu, Proxmox) or ``dracut``
   (RHEL, Fedora, SUSE, newer Ubuntu); both installed: ``/etc/initramfs-tools/initramfs.conf`` decides;
2. the configuration a capture carries: ``/etc/initramfs-tools/`` or ``/etc/dracut.conf``/``dracut.conf.d``;
3. the distribution family: debian -> initramfs-tools, rhel/suse -> dracut;
4. None (mkinitcpio on Arch, a custom kernel): ``passthru prepare`` says what to do by hand.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .root import HostRoot

__all__ = ["InitramfsInfo", "EarlyConfig", "read_initramfs", "kernel_images", "read_early", "parse_early",
           "vfio_ids_options", "EARLY_FILE", "ITOOLS_MODULES", "DRACUT_CONF", "MODPROBE_DIRS"]

EARLY_FILE = "/etc/modprobe.d/passthru-vfio.conf"
ITOOLS_MODULES = "/etc/initramfs-tools/modules"
DRACUT_CONF = "/etc/dracut.conf.d/passthru-vfio.conf"
MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d", "/usr/lib/modprobe.d",
                 "/lib/modprobe.d")
_ITOOLS_BINS = ("/usr/sbin/update-initramfs", "/sbin/update-initramfs", "/usr/sbin/mkinitramfs", "/sbin/mkinitramfs")
_DRACUT_BINS = ("/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut")
_TOOLS = {
    "initramfs-tools": (ITOOLS_MODULES, ("update-initramfs", "-u", "-k", "all"), "lsinitramfs"),
    "dracut": (DRACUT_CONF, ("dracut", "-f", "--regenerate-all"), "lsinitrd"),
}
_IDS_RE = re.compile(r"^\s*options\s+vfio[-_]pci\s+(?:.*\s)?ids=(\S+)", re.M)


@dataclass(frozen=True, slots=True)
class InitramfsInfo:
    tool: str | None  # "initramfs-tools" | "dracut" | None
    reason: str  # one line: why this tool
    config: str | None  # the file passthru edits so the vfio modules are in the image
    rebuild: tuple[str, ...] | None  # rebuilds every installed kernel's image
    lister: str | None  # the distribution's lister: lsinitramfs / lsinitrd

    def to_json(self) -> dict:
        return {"tool": self.tool, "reason": self.reason, "config": self.config,
                "rebuild": list(self.rebuild) if self.rebuild else None, "lister": self.lister}


def _info(tool: str | None, reason: str) -> InitramfsInfo:
    if tool is None:
        return InitramfsInfo(None, reason, None, None, None)
    config, rebuild, lister = _TOOLS[tool]
    return InitramfsInfo(tool, reason, config, rebuild, lister)


def read_initramfs(h: HostRoot, family: str | None) -> InitramfsInfo:
    """Which tool builds this host's initramfs (see the module docstring)."""
    itools = next((p for p in _ITOOLS_BINS if h.exists(h.path(p))), None)
    dracut = next((p for p in _DRACUT_BINS if h.exists(h.path(p))), None)
    if itools and dracut:
        conf = "/etc/initramfs-tools/initramfs.conf"
        if h.exists(h.path(conf)):
            return _info("initramfs-tools", f"{itools} and {dracut}; {conf} present")
        return _info("dracut", f"{itools} and {dracut}; no {conf}")
    if itools or dracut:
        return _info("initramfs-tools" if itools else "dracut", f"{itools or dracut} present")
    if h.isdir(h.path("/etc/initramfs-tools")):
        return _info("initramfs-tools", "/etc/initramfs-tools present")
    for conf in ("/etc/dracut.conf", "/etc/dracut.conf.d"):
        if h.exists(h.path(conf)):
            return _info("dracut", f"{conf} present")
    if family == "debian":
        return _info("initramfs-tools", "the Debian family's tool (no initramfs program or configuration found)")
    if family in ("rhel", "suse"):
        return _info("dracut", f"the {family} family's tool (no initramfs program or configuration found)")
    return _info(None, "found neither initramfs-tools nor dracut")


def _natural(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def kernel_images(h: HostRoot) -> dict[str, str]:
    """Kernel release -> host path of its initramfs in /boot (``initrd.img-REL``, Debian's name, or
    ``initramfs-REL.img``, dracut's on RHEL; the newer file when both exist), for the kernels whose modules are
    installed (the ones ``update-initramfs -k all`` and ``dracut --regenerate-all`` rebuild). Rescue and kdump
    images are left out."""
    installed = set(h.listdir(h.path("/lib/modules"))) | set(h.listdir(h.path("/usr/lib/modules")))
    found: dict[str, tuple[float, str]] = {}
    for name in h.listdir(h.boot):
        m = re.fullmatch(r"initrd\.img-(.+)|initramfs-(.+)\.img", name)
        if not m:
            continue
        rel = m.group(1) or m.group(2)
        if "rescue" in rel or rel.endswith("kdump") or rel not in installed:
            continue
        try:
            st = os.stat(f"{h.boot}/{name}")
        except OSError:
            continue
        if rel not in found or st.st_mtime > found[rel][0]:
            found[rel] = (st.st_mtime, f"/boot/{name}")
    return {rel: found[rel][1] for rel in sorted(found, key=_natural)}


# -- modprobe.d -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EarlyConfig:
    """What passthru's modprobe.d file says: the devices named with ``--early``, the ``ids=`` it gives vfio-pci
    and the modules it orders after vfio-pci (``softdep MODULE pre: vfio-pci``)."""

    devices: tuple[str, ...]
    ids: tuple[str, ...]
    softdeps: tuple[str, ...]


def parse_early(text: str) -> EarlyConfig:
    devices: list[str] = []
    ids: list[str] = []
    softdeps: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["#", "devices:"]:
            devices += words[2:]
        elif words[:2] in (["options", "vfio-pci"], ["options", "vfio_pci"]):
            ids += [i for w in words[2:] if w.startswith("ids=") for i in w[4:].split(",") if i]
        elif len(words) >= 4 and words[0] == "softdep" and words[2] == "pre:" and \
                any(w.replace("-", "_") == "vfio_pci" for w in words[3:]):
            softdeps.append(words[1].replace("-", "_"))
    return EarlyConfig(tuple(devices), tuple(ids), tuple(softdeps))


def read_early(h: HostRoot) -> EarlyConfig | None:
    """passthru's early-binding file, None when there is none."""
    data = h.read_bytes(h.path(EARLY_FILE))
    return None if data is None else parse_early(data.decode("utf-8", "replace"))


def vfio_ids_options(h: HostRoot) -> dict[str, str]:
    """Host path -> the ``ids=`` value, for every modprobe.d file that gives vfio-pci an ``ids=`` option (a file
    in an earlier directory hides a same-named one in a later directory, as in modprobe.d(5))."""
    seen: set[str] = set()
    out: dict[str, str] = {}
    for d in MODPROBE_DIRS:
        for name in sorted(h.listdir(h.path(d))):
            if not name.endswith(".conf") or name in seen:
                continue
            seen.add(name)
            text = h.read(h.path(f"{d}/{name}")) or ""
            found = _IDS_RE.findall(text)
            if found:
                out[f"{d}/{name}"] = found[-1]
    return out
