"""The plan of ``passthru prepare``: what it would change on a host (:func:`make_plan`, reads only) — the file
changes with their diffs, the commands that regenerate the boot menu per loader, notes and the steps left to the
operator — and the dry run as text (:func:`format_plan`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import UsageError
from ..host.boot import (GRUB_DEFAULT, GRUBENV, KERNEL_CMDLINE, BootInfo, arg_key, bls_options, configured_args,
                         find_grub_var, grub_d_overrides, grub_var_args, read_boot, read_proc_cmdline, read_text,
                         split_args)
from ..host.root import HostRoot
from .files import FileChange, change, editable
from .args import (HUGE_KEYS, HUGEPAGE_SIZES, LIST_KEYS, MODULES_FILE, UNSAFE_INTERRUPTS_ARG, VFIO_MODULES, HostFacts,
                   PrepareOptions, _CannotEdit, _satisfied, _value, desired_kernel_args, edit_args, edit_grub_default,
                   edit_kernel_cmdline, edit_modules, unwanted_kernel_args)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..host.initramfs import InitramfsInfo
    from .early import EarlyTarget

_SCHEMA = 1  # of the JSON documents (the plan here, the apply/rollback result and backup manifest in apply.py)


# -- the plan ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    boot: BootInfo
    facts: HostFacts
    options: PrepareOptions
    args: list[str]  # the kernel arguments passthru wants
    changes: list[FileChange]
    commands: list[list[str]]  # run after the files are written, in order
    rollback_commands: list[list[str]]  # run after files are restored (rollback; a failed apply)
    backup_extra: list[str] = field(default_factory=list)  # host paths the commands change (BLS entries)
    notes: list[str] = field(default_factory=list)  # facts worth knowing
    manual: list[str] = field(default_factory=list)  # what passthru cannot do here: steps for the operator
    early: EarlyTarget | None = None  # --early: the devices vfio-pci claims at boot (early.py)
    initramfs: InitramfsInfo | None = None  # --early: the tool that builds the initramfs

    @property
    def loader(self) -> str | None:
        return self.boot.loader

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.commands)

    def to_json(self) -> dict:
        return {
            "schema": _SCHEMA, "action": "plan", "changed": self.changed, "reboot_needed": self.changed,
            "loader": self.loader, "boot": self.boot.to_json(),
            "facts": {"cpu_vendor": self.facts.cpu_vendor, "interrupt_remapping": self.facts.interrupt_remapping,
                      "kernel_version": list(self.facts.kernel_version) if self.facts.kernel_version else None},
            "options": {"gpu": self.options.gpu, "unsafe_interrupts": self.options.unsafe_interrupts,
                        "hugepages": (f"{self.options.hugepages[0]}:{self.options.hugepages[1]}"
                                      if self.options.hugepages else None),
                        "early": list(self.options.early), "overrides": sorted(self.options.overrides)},
            "kernel_args": list(self.args),
            "changes": [{"path": c.path, "created": c.created, "diff": c.diff} for c in self.changes],
            "commands": [list(c) for c in self.commands],
            "notes": list(self.notes), "manual": list(self.manual),
            "early": (None if self.early is None else
                      {**self.early.to_json(), "initramfs": self.initramfs.to_json() if self.initramfs else None}),
        }


def _mem_total(h: HostRoot) -> int | None:
    text = h.read(h.proc + "/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _grub_cfg_stale(h: HostRoot, cfg: str | None, ours: list[str]) -> bool:
    """Whether the generated GRUB menu lacks arguments /etc/default/grub already has (edited by hand, never
    regenerated). Unknown (missing or unreadable, e.g. a 0600 grub.cfg as non-root, or no linux lines): False."""
    text = read_text(h, cfg) if cfg else None
    if not text or not ours:
        return False
    lines = [split_args(m.group(1)) for m in re.finditer(r"^\s*linux(?:16|efi)?\s+\S+(.*)$", text, re.M)]
    return bool(lines) and not any(all(o in toks for o in ours) for toks in lines)


def _seed_cmdline(h: HostRoot) -> str | None:
    """What kernel-install uses without /etc/kernel/cmdline: the running command line minus what the boot
    loader adds itself (BOOT_IMAGE=, initrd=)."""
    running = read_proc_cmdline(h)
    if running is None:
        return None
    return " ".join(t for t in running if arg_key(t) not in ("BOOT_IMAGE", "initrd")) + "\n"


def make_plan(h: HostRoot, facts: HostFacts, opts: PrepareOptions) -> Plan:
    """What ``passthru prepare`` would change on this host. Reads only; bad options (and huge pages beyond the
    host's memory) raise UsageError before the boot configuration is even read; so do ``--early`` devices that
    cannot be claimed at boot safely (early.py)."""
    from .early import add_early, resolve_early

    early = resolve_early(h, opts) if opts.early else None
    args = desired_kernel_args(facts, opts) + (early.kernel_args if early else [])
    remove = unwanted_kernel_args(facts, opts)
    notes: list[str] = []
    manual: list[str] = []
    hp = opts.hugepages
    if hp:
        want = HUGEPAGE_SIZES[hp[0]] * hp[1]
        total = _mem_total(h)
        if total is not None and want >= total:
            raise UsageError(f"--hugepages {hp[0]}:{hp[1]} reserves {_gib(want)} but the host has {_gib(total)} "
                             "of memory; ask for fewer pages and leave memory for the host")
        if total is not None and want > 0.9 * total:
            notes.append(f"huge pages take {_gib(want)} of {_gib(total)}: little is left for the host itself")
    vendor = (facts.cpu_vendor or "").lower()
    if vendor not in ("intel", "genuineintel", "amd", "authenticamd"):
        notes.append("CPU vendor not known as Intel or AMD: only iommu=pt is added; on Intel also add "
                     "intel_iommu=on")
    if facts.interrupt_remapping is False and not opts.unsafe_interrupts:
        notes.append(f"interrupt remapping is unavailable: {UNSAFE_INTERRUPTS_ARG} lets vfio work without it "
                     "(a device can then inject interrupts into the host; enable it in firmware if you can)")
    elif facts.interrupt_remapping is None and not opts.unsafe_interrupts:
        notes.append("interrupt remapping unknown: if vfio refuses devices for lack of it, run again with "
                     "--unsafe-interrupts")

    boot = read_boot(h)
    changes: list[FileChange] = []
    commands: list[list[str]] = []
    rollback_cmds: list[list[str]] = []
    extra: list[str] = []
    need_args = " ".join(args)

    def sync_file(path: str, editor, label: str) -> bool:
        """Edit one config file (a FileChange when it differs); False when it cannot be edited (``manual`` says
        what to do instead)."""
        why = editable(h, path)
        text = read_text(h, path)
        if why or text is None:
            manual.append(f"{why or f'{path} is unreadable'}: add {need_args} to {label} by hand")
            return False
        try:
            new = editor(text, args, remove)
        except _CannotEdit as e:
            manual.append(f"{path}: {e}; add {need_args} to {label} by hand")
            return False
        if new != text:
            changes.append(change(path, text, new))
        return True

    def regenerate() -> None:
        if boot.regenerate:
            commands.extend(list(c) for c in boot.regenerate)
            rollback_cmds.extend(list(c) for c in boot.regenerate)

    if boot.loader == "grub":
        if sync_file(GRUB_DEFAULT, edit_grub_default, "GRUB_CMDLINE_LINUX"):
            edit = next((c for c in changes if c.path == GRUB_DEFAULT), None)
            edited = edit is not None
            text = edit.new if edit else read_text(h, GRUB_DEFAULT) or ""
            keys = {arg_key(a) for a in args}
            ours = [t for t in grub_var_args(text, "GRUB_CMDLINE_LINUX") or [] if arg_key(t) in keys]
            stale = not edited and _grub_cfg_stale(h, boot.grub_cfg, ours)
            if edited or stale:
                regenerate()
                if not boot.regenerate:
                    manual.append("regenerate the GRUB menu by hand (grub-mkconfig -o <your grub.cfg>): passthru "
                                  f"does not know the command for {boot.distro_id or 'this distribution'}")
            if stale:
                notes.append(f"{boot.grub_cfg} lacks arguments {GRUB_DEFAULT} already has: regenerating it")
        _grub_notes(h, args, remove, manual)
    elif boot.loader == "bls":
        cmd = _grubby_command(h, boot, args, remove, manual)
        if cmd:
            commands.append(cmd)
            extra += list(boot.bls_entries)
            if h.exists(h.path(GRUBENV)) and not os.path.islink(h.path(GRUBENV)):
                extra.append(GRUBENV)
        if boot.grub_default:
            sync_file(GRUB_DEFAULT, edit_grub_default, "GRUB_CMDLINE_LINUX (so new kernels get them)")
            _grub_notes(h, args, remove, manual)
        if boot.kernel_cmdline:
            sync_file(KERNEL_CMDLINE, edit_kernel_cmdline, KERNEL_CMDLINE)
    elif boot.loader == "systemd-boot":
        if boot.proxmox and boot.grub_default:  # an ESP proxmox-boot-tool set up with GRUB (Secure Boot) reads it
            sync_file(GRUB_DEFAULT, edit_grub_default, "GRUB_CMDLINE_LINUX")
        if boot.kernel_cmdline:
            sync_file(KERNEL_CMDLINE, edit_kernel_cmdline, KERNEL_CMDLINE)
        else:
            seed = _seed_cmdline(h)
            if seed is None:
                manual.append(f"/proc/cmdline is unreadable: write {KERNEL_CMDLINE} with your kernel arguments "
                              f"plus {need_args}")
            else:
                changes.append(change(KERNEL_CMDLINE, None, edit_kernel_cmdline(seed, args, remove),
                                       restore_as=seed))
                notes.append(f"{KERNEL_CMDLINE} is created from the running command line (what kernel-install "
                             "uses without it)")
        if any(c.path in (KERNEL_CMDLINE, GRUB_DEFAULT) for c in changes):
            regenerate()
            if not boot.regenerate:
                manual.append("no installed kernel found: run kernel-install add VERSION IMAGE for each kernel")
    else:
        manual.append(f"unknown boot loader ({boot.reason}): add these kernel arguments to your boot loader's "
                      f"kernel command line by hand: {need_args}")

    _amd_notes(h, facts, changes, notes)
    if remove and any(arg_key(t) in remove for t in (configured_args(h, boot) or []) + (read_proc_cmdline(h) or [])):
        notes.append(f"{UNSAFE_INTERRUPTS_ARG} is removed: interrupt remapping works, so it would only weaken "
                     "isolation (keep it with --unsafe-interrupts)")

    why = editable(h, MODULES_FILE)
    if why:
        manual.append(f"{why}: make sure it lists {', '.join(VFIO_MODULES)}")
    else:
        old = read_text(h, MODULES_FILE)
        new = edit_modules(old, facts.kernel_version)
        if new != old:
            changes.append(change(MODULES_FILE, old, new))
    if facts.kernel_version is None:
        notes.append("kernel version unknown: vfio_virqfd (a separate module before Linux 6.2) is left as it is")
    initramfs = add_early(h, boot, facts, early, changes, commands, rollback_cmds, notes, manual) if early else None
    return Plan(boot=boot, facts=facts, options=opts, args=args, changes=changes, commands=commands,
                rollback_commands=rollback_cmds, backup_extra=extra, notes=list(dict.fromkeys(notes)),
                manual=list(dict.fromkeys(manual)), early=early, initramfs=initramfs)


def _grub_notes(h: HostRoot, args: list[str], remove: list[str], manual: list[str]) -> None:
    text = read_text(h, GRUB_DEFAULT) or ""
    var = find_grub_var(text, "GRUB_CMDLINE_LINUX_DEFAULT")
    if var is not None and not var.problem:
        for t in var.args():
            if arg_key(t) in remove:
                manual.append(f"GRUB_CMDLINE_LINUX_DEFAULT in {GRUB_DEFAULT} has {t}: remove it by hand")
            want = next((a for a in args if arg_key(a) == arg_key(t) and arg_key(a) not in LIST_KEYS), None)
            if want and not _satisfied(t, want):
                manual.append(f"GRUB_CMDLINE_LINUX_DEFAULT in {GRUB_DEFAULT} has {t}, which overrides {want} on the "
                              "default entry: remove it by hand")
    for path in grub_d_overrides(h):
        manual.append(f"{path} sets GRUB_CMDLINE_LINUX and overrides {GRUB_DEFAULT}: add "
                      f"{' '.join(args)} there by hand (or make it append to $GRUB_CMDLINE_LINUX)")


def _amd_notes(h: HostRoot, facts: HostFacts, changes: list[FileChange], notes: list[str]) -> None:
    if (facts.cpu_vendor or "").lower() not in ("amd", "authenticamd", ""):
        return
    toks = list(read_proc_cmdline(h) or [])
    for c in changes:
        if c.path == KERNEL_CMDLINE:
            toks += split_args(c.new)
        elif c.path == GRUB_DEFAULT:
            toks += (grub_var_args(c.new, "GRUB_CMDLINE_LINUX") or []) + (
                grub_var_args(c.new, "GRUB_CMDLINE_LINUX_DEFAULT") or [])
    if any(arg_key(t) == "amd_iommu" and "off" in (_value(t) or "").split(",") for t in toks):
        notes.append("amd_iommu=off turns the AMD IOMMU off: remove it from the kernel command line by hand")


def _grubby_command(h: HostRoot, boot: BootInfo, args: list[str], remove: list[str],
                    manual: list[str]) -> list[str] | None:
    """The one grubby call that puts ``args`` into every BLS entry, or None when all have them. Per entry:
    an argument missing, with another value or repeated is added (grubby replaces a same-key argument) and its
    other spellings removed; the huge page group is removed and re-added whole when not already in order."""
    adds: dict[str, str] = {}
    removes: list[str] = []
    huge = [a for a in args if arg_key(a) in HUGE_KEYS]
    for entry in boot.bls_entries:
        old = bls_options(h, entry)
        if old is None:
            manual.append(f"cannot read {entry} (root only on RHEL): run as root to see whether it needs the "
                          "arguments")
            continue
        new = edit_args(old, args, remove)
        if new == old:
            continue
        removes += [t for t in old if arg_key(t) in remove]
        for a in args:
            k = arg_key(a)
            have = [t for t in old if arg_key(t) == k]
            if k in LIST_KEYS:
                if not any(_satisfied(t, a) for t in have):
                    # grubby replaces an argument of the same name: fold the entry's own list into ours
                    values = [v for t in have for v in (_value(t) or "").split(",") if v] + [_value(a) or ""]
                    tok = a.split("=", 1)[0] + "=" + ",".join(dict.fromkeys(values))
                    if adds.get(k, tok) != tok:
                        manual.append(f"BLS entries have different {a.split('=', 1)[0]} lists: check them with "
                                      "grubby --info=ALL after the apply")
                        tok = a
                    adds[k] = tok
                    removes += have[1:]
                continue
            if k in HUGE_KEYS:
                continue
            target = next(t for t in new if arg_key(t) == k)
            if have == [target]:
                continue
            adds[k] = target if adds.get(k, target) == target else a  # entries disagreeing get the plain value
            removes += [t for t in have if t != target or have.count(t) > 1]
        if huge and [t for t in old if arg_key(t) in HUGE_KEYS] != [t for t in new if arg_key(t) in HUGE_KEYS]:
            adds.update((arg_key(a), a) for a in huge)
            removes += [t for t in old if arg_key(t) in HUGE_KEYS]
    if not adds and not removes:
        return None
    cmd = ["grubby", "--update-kernel=ALL"]
    if adds:
        cmd.append("--args=" + " ".join(adds[arg_key(a)] for a in args if arg_key(a) in adds))
    removes = list(dict.fromkeys(removes))
    if removes:
        cmd.append("--remove-args=" + " ".join(removes))
    return cmd


# -- text output ------------------------------------------------------------------------------------------------
def _cmd(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


def format_plan(plan: Plan) -> str:
    """The dry run as a person reads it."""
    b = plan.boot
    distro = (b.distro_id or "unknown distribution") + (f" ({b.family} family)" if b.family else "")
    out = [f"Boot loader: {b.loader or 'unknown'} - {b.reason}; {distro}, {'UEFI' if b.efi else 'BIOS'}",
           f"Kernel arguments: {' '.join(plan.args)}"]
    if plan.early:
        e, tool = plan.early, plan.initramfs
        out.append(f"Early binding: {' '.join(e.devices)} -> vfio-pci ids={','.join(e.ids)}"
                   + (f"; softdep {' '.join(e.softdeps)} pre: vfio-pci" if e.softdeps else ""))
        if tool:
            out.append(f"Initramfs: {tool.tool or 'unknown'} - {tool.reason}")
    if plan.changes:
        out.append(f"\nFiles to change ({len(plan.changes)}):")
        out += [c.diff.rstrip("\n") for c in plan.changes]
    if plan.commands:
        out.append("\nCommands to run:")
        out += [f"  {_cmd(c)}" for c in plan.commands]
    if plan.notes:
        out.append("\nNotes:")
        out += [f"  - {n}" for n in plan.notes]
    if plan.manual:
        out.append("\nBy hand:")
        out += [f"  - {m}" for m in plan.manual]
    out.append("")
    out.append("Dry run: nothing was changed. Apply with: passthru prepare --apply (same options)" if plan.changed
               else "Nothing to change: the boot configuration already has all of this.")
    return "\n".join(out) + "\n"
