"""``passthru prepare``: make a host ready for passthrough — IOMMU kernel arguments in the boot loader's
configuration and the vfio modules loaded at boot — shown as a plan (the default, a dry run), applied with a
backup, undone with a rollback. This package is passthru's only writer of boot configuration.

    plan = make_plan(h, HostFacts("intel", (6, 8), True), PrepareOptions(gpu=True))   # reads only
    print(format_plan(plan))
    result = apply_plan(h, plan, paths)            # backup, atomic writes, regenerate, reboot flag
    rollback(h, paths)                             # restore the newest applied backup set

Kernel arguments (:func:`desired_kernel_args`): Intel ``intel_iommu=on iommu=pt``, AMD ``iommu=pt`` (the AMD
IOMMU is on by default); ``vfio_iommu_type1.allow_unsafe_interrupts=1`` only when interrupt remapping is
unavailable or asked for; ``--gpu`` adds ``rdblacklist=nouveau nouveau.modeset=0``; ``--hugepages 1G:16`` adds
``default_hugepagesz=1G hugepagesz=1G hugepages=16``. Editing (:func:`edit_args`) keeps every other argument in
order, rewrites an argument of ours that has another value where it stands (``iommu=soft`` -> ``iommu=pt``;
``intel_iommu=igfx_off`` -> ``intel_iommu=on,igfx_off``, keeping its other options), collapses duplicates of our
keys, appends what is missing, and never touches a list-valued blacklist argument except to add ours.

Files per loader (see ``passthru/host/boot.py`` for detection): grub edits ``GRUB_CMDLINE_LINUX`` in
``/etc/default/grub`` and regenerates the menu; bls runs ``grubby --update-kernel=ALL`` and keeps
``/etc/default/grub`` and ``/etc/kernel/cmdline`` (when present) in sync; systemd-boot edits
``/etc/kernel/cmdline`` and runs ``kernel-install add`` per installed kernel; a Proxmox host whose ESPs
proxmox-boot-tool keeps runs ``proxmox-boot-tool refresh`` instead. All loaders:
``/etc/modules-load.d/vfio.conf``. ``--early ADDRESS...`` (``early``): vfio-pci claims those devices at boot —
``/etc/modprobe.d/passthru-vfio.conf`` (ids=, softdep), the vfio modules in the initramfs, and its rebuild.

Commands never run through a shell; they go through a :class:`Runner` (tests pass a fake). On a host root other
than ``/`` (a fixture, a capture, a mounted image) no runner is used unless one is given explicitly: the files in
that root are written and the commands are reported as skipped, because running them here would change the
machine passthru runs on, not the root's.

The package: ``args`` (options, host facts, the kernel arguments wanted and the pure file editors), ``plan``
(:func:`make_plan`, :func:`format_plan`), ``early`` (``--early``), ``state`` (atomic writes, lock, backup sets, the reboot flag) and
``apply`` (the runner, :func:`apply_plan`, :func:`rollback`, :func:`format_result`). Import from
``passthru.prepare``; the submodules are private.
"""

from __future__ import annotations

from .apply import COMMAND_TIMEOUT, ApplyResult, Runner, SubprocessRunner, apply_plan, format_result, rollback
from .args import (MODULES_FILE, UNSAFE_INTERRUPTS_ARG, HostFacts, PrepareOptions, desired_kernel_args, edit_args,
                   edit_grub_default, edit_kernel_cmdline, edit_modules, missing_args, parse_hugepages, read_host_facts,
                   unwanted_kernel_args)
from .args import HUGE_KEYS, HUGEPAGE_SIZES, LIST_KEYS, VFIO_MODULES  # noqa: F401 - constants, importable as before
from .early import ALLOW_SHARED_IDS, OVERRIDES, EarlyTarget
from .plan import FileChange, Plan, format_plan, make_plan
from .state import REBOOT_FLAG, pending_reboot

__all__ = ["PrepareOptions", "HostFacts", "FileChange", "Plan", "ApplyResult", "Runner", "SubprocessRunner",
           "read_host_facts", "parse_hugepages", "desired_kernel_args", "unwanted_kernel_args", "edit_args", "edit_grub_default",
           "edit_kernel_cmdline", "edit_modules", "missing_args", "make_plan", "apply_plan", "rollback", "pending_reboot",
           "format_plan", "format_result", "MODULES_FILE", "UNSAFE_INTERRUPTS_ARG", "COMMAND_TIMEOUT",
           "REBOOT_FLAG",
           "EarlyTarget", "ALLOW_SHARED_IDS", "OVERRIDES"]
