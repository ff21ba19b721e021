"""``passthru prepare --early ADDRESS...``: vfio-pci claims the named PCI functions at boot, before their host
drivers, the way every passthrough guide does it — by IDs and module order, from the initramfs on.

What a plan with ``--early`` adds (:func:`resolve_early` reads the devices, :func:`add_early` the files):

- ``/etc/modprobe.d/passthru-vfio.conf`` (passthru's own, rewritten whole): ``options vfio-pci ids=...`` with
  the vendor:device of the named functions, deduplicated — ``vendor:device:subvendor:subdevice`` (the kernel's
  ``ids=`` accepts ``vendor:device[:subvendor[:subdevice[:class[:class_mask]]]]``) when another function shares
  vendor:device but not the subsystem IDs — and ``softdep MODULE pre: vfio-pci`` for each module that would
  drive a named function (its current driver's module, and every module whose ``modules.alias`` matches it), so
  whichever loads first, vfio-pci is there before it. A ``# devices:`` line keeps the addresses for doctor.
- the vfio modules and that file in the initramfs: ``/etc/initramfs-tools/modules`` (initramfs-tools copies
  /etc/modprobe.d itself) or ``/etc/dracut.conf.d/passthru-vfio.conf`` (``force_drivers+=``, loaded before udev,
  and ``install_items+=`` for the modprobe.d file), then ``update-initramfs -u -k all`` / ``dracut -f
  --regenerate-all``, before the boot loader's own command (systemd-boot and proxmox-boot-tool copy the images to
  the ESP, so they must see the new ones).
- vfio-pci built into the kernel (``modules.builtin``): modprobe.d options never reach it, so the IDs go on the
  kernel command line as ``vfio-pci.ids=`` instead (the seed's way) and the initramfs is left alone.

Refused (UsageError, exit 2, nothing written): an address that is not a PCI endpoint on this host, a VF (made
after boot), a named function the host needs (a mount, swap, a console; a NIC with an address or the boot
display unless ``--force-netdev`` / ``--allow-boot-vga``), and IDs that also match a function on a host driver —
vfio-pci matches IDs, not addresses, so it would take the host's own NIC of the same model at boot — unless
``--allow-shared-ids``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import NotFoundError, UsageError
from ..host.boot import BootInfo, read_proc_cmdline, read_text
from ..host.initramfs import (DRACUT_CONF, EARLY_FILE, ITOOLS_MODULES, InitramfsInfo, kernel_images, read_initramfs,
                              vfio_ids_options)
from ..host.iommu import is_vfio_driver
from ..host.kernel import read_kernel
from ..host.kmod import alias_modules, builtin_modules, driver_module, pci_modalias
from ..host.pci import PciFunction, normalize_address, scan_pci
from ..host.root import HostRoot
from ..host.usage import ALLOW_BOOT_VGA, FORCE_NETDEV, host_uses
from .args import VFIO_MODULES, HostFacts, PrepareOptions, edit_modules
from .files import FileChange, change, editable

ALLOW_SHARED_IDS = "--allow-shared-ids"
OVERRIDES = (ALLOW_SHARED_IDS, FORCE_NETDEV, ALLOW_BOOT_VGA)
REBUILDS = ("update-initramfs", "dracut")  # rebuild several images: after a failure, rebuild from restored files
_NOT_HOST = ("vfio_pci", "pci_stub")


@dataclass(frozen=True)
class EarlyTarget:
    devices: tuple[str, ...]  # the named functions, normalised, in the order given
    ids: tuple[str, ...]  # vfio-pci ids= entries
    softdeps: tuple[str, ...]  # modules ordered after vfio-pci
    claimed: tuple[dict, ...]  # other functions the ids match: address, ids, driver, uses
    builtin_vfio: bool  # vfio_pci is compiled in: the ids go on the kernel command line
    notes: tuple[str, ...] = ()

    @property
    def kernel_args(self) -> list[str]:
        return [f"vfio-pci.ids={','.join(self.ids)}"] if self.builtin_vfio else []

    def to_json(self) -> dict:
        return {"devices": list(self.devices), "ids": list(self.ids), "softdeps": list(self.softdeps),
                "file": EARLY_FILE, "claimed": [dict(c) for c in self.claimed],
                "vfio_pci_builtin": self.builtin_vfio, "kernel_arg": (self.kernel_args or [None])[0]}


def _subsys(fn: PciFunction) -> tuple[int, int] | None:
    if fn.subsystem_vendor_id is None or fn.subsystem_device_id is None:
        return None
    return fn.subsystem_vendor_id, fn.subsystem_device_id


def _id_of(fn: PciFunction, others: list[PciFunction]) -> str:
    """The ids= entry for ``fn``: vendor:device, or with the subsystem IDs when that keeps vfio-pci off some
    other function with the same vendor:device."""
    short = f"{fn.vendor_id:04x}:{fn.device_id:04x}"
    same = [o for o in others if (o.vendor_id, o.device_id) == (fn.vendor_id, fn.device_id)]
    sub = _subsys(fn)
    if same and sub is not None and any(_subsys(o) != sub for o in same):
        return f"{short}:{sub[0]:04x}:{sub[1]:04x}"
    return short


def _matches(entry: str, fn: PciFunction) -> bool:
    parts = [int(p, 16) for p in entry.split(":")]
    have = [fn.vendor_id, fn.device_id, fn.subsystem_vendor_id, fn.subsystem_device_id]
    return all(have[i] == p for i, p in enumerate(parts))


def _named(h: HostRoot, opts: PrepareOptions) -> tuple[list[PciFunction], list[PciFunction]]:
    """(the named functions in the order given, every other function); bad or absent addresses, bridges and VFs
    raise."""
    named: list[str] = []
    for text in opts.early:
        try:
            a = normalize_address(text)
        except ValueError as e:
            raise UsageError(f"--early: {e}") from None
        if a not in named:
            named.append(a)
    fns = {f.address: f for f in scan_pci(h)}
    missing = [a for a in named if a not in fns]
    if missing:
        raise NotFoundError(f"--early: no PCI device {', '.join(missing)} on this host; `passthru devices` lists "
                            "them")
    for a in named:
        if fns[a].is_bridge:
            raise UsageError(f"--early {a}: a PCI bridge; vfio-pci takes the devices behind it, name those")
        if fns[a].is_vf:
            raise UsageError(f"--early {a}: an SR-IOV VF, which exists only after its PF makes it; bind it then "
                             f"with `passthru bind {a}`")
    return [fns[a] for a in named], [f for f in fns.values() if f.address not in named]


def _judge(h: HostRoot, opts: PrepareOptions, chosen: list[PciFunction], claimed: list[PciFunction],
           ids: list[str], notes: list[str]) -> list[dict]:
    """What the host would lose: raises the refusal (see the module docstring), else returns the ``claimed``
    records and adds the notes."""
    uses = host_uses(h, [f.address for f in chosen + claimed if not is_vfio_driver(f.driver)])
    problems: list[str] = []
    fixes: list[str] = []
    for fn in chosen:
        for u in uses.get(fn.address, []):
            if u.override is None or u.override not in opts.overrides:
                problems.append(f"{fn.address}: {u.detail}")
                fixes.append("stop that use first, or name another device" if u.override is None else
                             f"pass {u.override} if the host can lose it")
    shared = []
    taking: dict[str, list[str]] = {}  # ids entry -> functions on host drivers it would take
    for o in claimed:
        details = [u.detail for u in uses.get(o.address, [])]
        entry = next(i for i in ids if _matches(i, o))
        shared.append({"address": o.address, "ids": entry, "driver": o.driver, "uses": details})
        if o.driver and not is_vfio_driver(o.driver) and ALLOW_SHARED_IDS not in opts.overrides:
            taking.setdefault(entry, []).append(f"{o.address} ({'; '.join([o.driver] + details)})")
        else:
            notes.append(f"vfio-pci will also take {o.address} ({o.driver or 'no driver'}) at boot: it has the "
                         f"same IDs ({entry})")
    for entry, names in taking.items():
        problems.append(f"ids={entry} also matches {', '.join(names)}")
        fixes.append(f"name {'it' if len(names) == 1 else 'them'} too if meant for VMs, or pass {ALLOW_SHARED_IDS} "
                     "if the host can lose them (vfio-pci matches IDs, not addresses)")
    if problems:
        raise UsageError(f"refusing --early: {'; '.join(problems)}. At boot vfio-pci would take these from the "
                         f"host: {'; '.join(dict.fromkeys(fixes))}")
    return shared


def _softdeps(h: HostRoot, chosen: list[PciFunction], release: str | None, notes: list[str]) -> list[str]:
    """The modules that would drive the named functions: the bound driver's module and what modules.alias
    matches (udev's choice), vfio's own left out."""
    aliases = alias_modules(h, release, [pci_modalias(h, fn) for fn in chosen])
    out: set[str] = set()
    for fn in chosen:
        mods: set[str] = set(aliases.get(pci_modalias(h, fn), [])) if aliases else set()
        if fn.driver and not is_vfio_driver(fn.driver):
            mod, builtin = driver_module(h, fn.driver)
            if mod:
                mods.add(mod)
            elif builtin:
                notes.append(f"{fn.address}: its driver {fn.driver} is built into the kernel, so no softdep can "
                             "order it after vfio-pci; it may still win the race at boot")
        mods = {m for m in mods if m not in _NOT_HOST and "vfio" not in m}
        if not mods:
            notes.append(f"{fn.address}: no host driver known for it ({'on ' + fn.driver if fn.driver else 'no driver'}"
                         f"{'' if aliases is not None else ', no readable modules.alias'}); ids= alone claims it "
                         "whenever vfio-pci loads before a driver does")
        out |= mods
    return sorted(out)


def resolve_early(h: HostRoot, opts: PrepareOptions) -> EarlyTarget:
    """The devices, ids and softdeps of ``opts.early``; reads sysfs and the kernel's module lists only. Bad
    input and the refusals above raise UsageError / NotFoundError (exit 2)."""
    chosen, others = _named(h, opts)
    ids = list(dict.fromkeys(_id_of(fn, others) for fn in chosen))
    notes: list[str] = []
    for fn in chosen:
        entry = next(i for i in ids if _matches(i, fn))
        if entry.count(":") == 3:
            kin = [o.address for o in others if (o.vendor_id, o.device_id) == (fn.vendor_id, fn.device_id)]
            notes.append(f"{fn.address} shares {fn.ids} with {', '.join(kin)}: ids={entry} adds its subsystem IDs so "
                         "vfio-pci takes only cards like it")
    claimed = [o for o in others if not o.is_bridge and any(_matches(i, o) for i in ids)]
    shared = _judge(h, opts, chosen, claimed, ids, notes)
    release = read_kernel(h).release
    softdeps = _softdeps(h, chosen, release, notes)
    builtin = builtin_modules(h, release)
    taken = {o.address for o in claimed}
    for fn in chosen:
        for o in others:
            if fn.iommu_group is not None and o.iommu_group == fn.iommu_group and not o.is_bridge \
                    and not is_vfio_driver(o.driver) and o.address not in taken:
                notes.append(f"IOMMU group {fn.iommu_group} also holds {o.address} ({o.driver or 'no driver'}): "
                             "name it too, or the group is not viable for a VM after boot")
    return EarlyTarget(tuple(f.address for f in chosen), tuple(ids), tuple(softdeps), tuple(shared),
                       builtin is not None and "vfio_pci" in builtin, tuple(dict.fromkeys(notes)))


# -- the files ---------------------------------------------------------------------------------------------------
def early_text(target: EarlyTarget, release: str | None = None) -> str:
    """passthru's modprobe.d file for ``target``."""
    out = ["# passthru prepare --early: vfio-pci claims these devices at boot, before their host drivers.",
           "# Written by passthru (`passthru prepare --rollback` undoes it); edits here are replaced.",
           f"# devices: {' '.join(target.devices)}"]
    if target.builtin_vfio:
        out.append(f"# vfio-pci is built into the kernel{' ' + release if release else ''}: it reads its ids from "
                   "vfio-pci.ids= on the kernel command line, not from here")
    out.append(f"options vfio-pci ids={','.join(target.ids)}")
    out += [f"softdep {m} pre: vfio-pci" for m in target.softdeps]
    return "\n".join(out) + "\n"


def _modules(facts: HostFacts) -> list[str]:
    old = facts.kernel_version is not None and tuple(facts.kernel_version) < (6, 2)
    return list(VFIO_MODULES) + (["vfio_virqfd"] if old else [])


def dracut_text(facts: HostFacts) -> str:
    """passthru's dracut.conf.d file: the vfio modules loaded before udev, and the modprobe.d file."""
    return ("# passthru prepare --early: the vfio modules (loaded first) and passthru's modprobe.d file in the "
            "initramfs\n"
            f'force_drivers+=" {" ".join(_modules(facts))} "\n'
            f'install_items+=" {EARLY_FILE} "\n')


def _mtime(h: HostRoot, path: str) -> float | None:
    try:
        return os.stat(h.path(path)).st_mtime
    except OSError:
        return None


def add_early(h: HostRoot, boot: BootInfo, facts: HostFacts, target: EarlyTarget, changes: list[FileChange],
              commands: list[list[str]], rollback_cmds: list[list[str]], notes: list[str],
              manual: list[str]) -> InitramfsInfo:
    """Add the early-binding files and commands of ``target`` to a plan being made (see the module docstring);
    returns the initramfs tool found."""
    notes += target.notes
    info = read_initramfs(h, boot.family)
    release = read_kernel(h).release
    ours: list[str] = []

    def write(path: str, new: str, what: str) -> None:
        why = editable(h, path)
        if why:
            manual.append(f"{why}: {what} by hand")
            return
        old = read_text(h, path)
        ours.append(path)
        if old != new:
            changes.append(change(path, old, new))

    write(EARLY_FILE, early_text(target, release), f"write its early-binding lines ({EARLY_FILE})")
    for path, value in vfio_ids_options(h).items():
        if path != EARLY_FILE:
            manual.append(f"{path} also gives vfio-pci ids={value}; modprobe passes both and the kernel keeps the "
                          f"last: remove that line (name its devices with --early) so {EARLY_FILE} decides")
    running = [t for t in read_proc_cmdline(h) or [] if t.split("=", 1)[0].replace("-", "_") == "vfio_pci.ids"]
    if running and not target.builtin_vfio:
        notes.append(f"the running kernel has {running[-1]} on its command line, which modprobe adds after "
                     f"{EARLY_FILE}'s ids: remove it from the boot loader configuration by hand")
    if target.builtin_vfio:
        notes.append(f"vfio-pci is built into kernel {release}: the IDs go on the kernel command line "
                     "(vfio-pci.ids=), which it reads before any module loads; the initramfs is left alone")
        return info
    if info.tool is None:
        manual.append(f"no initramfs-tools or dracut here ({info.reason}): put {', '.join(_modules(facts))} and "
                      f"{EARLY_FILE} in your initramfs (mkinitcpio: MODULES=(...) and FILES=(...) in "
                      "/etc/mkinitcpio.conf, then mkinitcpio -P)")
        return info
    if info.tool == "initramfs-tools":
        why = editable(h, ITOOLS_MODULES)
        if why:
            manual.append(f"{why}: list {', '.join(_modules(facts))} in it by hand")
        else:
            old = read_text(h, ITOOLS_MODULES)
            new = edit_modules(old, facts.kernel_version)
            ours.append(ITOOLS_MODULES)
            if new != old:
                changes.append(change(ITOOLS_MODULES, old, new))
    else:
        write(DRACUT_CONF, dracut_text(facts), f"add force_drivers+=\" {' '.join(_modules(facts))} \"")
    rebuild = any(c.path in ours for c in changes)
    if not rebuild:
        newest = max((m for m in (_mtime(h, p) for p in ours) if m is not None), default=None)
        stale = [p for p in kernel_images(h).values() if newest is not None and (_mtime(h, p) or 0) < newest]
        if stale:
            rebuild = True
            notes.append(f"{', '.join(stale)} {'is' if len(stale) == 1 else 'are'} older than the early-binding "
                         "configuration: rebuilding")
    if rebuild and info.rebuild:
        commands.insert(0, list(info.rebuild))
        rollback_cmds.insert(0, list(info.rebuild))
        copies = boot.proxmox or boot.loader == "systemd-boot"  # the ESP holds copies of the images
        for c in (boot.regenerate if copies else ()):  # proxmox-boot-tool refresh; kernel-install add ...
            for lst in (commands, rollback_cmds):
                if list(c) not in lst:
                    lst.append(list(c))
    return info
