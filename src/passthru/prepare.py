"""``passthru prepare``: make a host ready for passthrough — IOMMU kernel arguments in the boot loader's
configuration and the vfio modules loaded at boot — shown as a plan (the default, a dry run), applied with a
backup, undone with a rollback. This module is passthru's only writer of boot configuration.

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
``/etc/kernel/cmdline`` and runs ``kernel-install add`` per installed kernel. All loaders:
``/etc/modules-load.d/vfio.conf``.

Commands never run through a shell; they go through a :class:`Runner` (tests pass a fake). On a host root other
than ``/`` (a fixture, a capture, a mounted image) no runner is used unless one is given explicitly: the files in
that root are written and the commands are reported as skipped, because running them here would change the
machine passthru runs on, not the root's.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field

from .config import Paths
from .errors import HostError, UsageError
from .host.boot import (GRUB_DEFAULT, GRUBENV, KERNEL_CMDLINE, BootInfo, arg_key, bls_options, configured_args,
                        find_grub_var, grub_d_overrides, grub_var_args, read_boot, read_proc_cmdline, read_text,
                        split_args)
from .host.root import HostRoot

__all__ = ["PrepareOptions", "HostFacts", "FileChange", "Plan", "ApplyResult", "Runner", "SubprocessRunner",
           "read_host_facts", "parse_hugepages", "desired_kernel_args", "unwanted_kernel_args", "edit_args", "edit_grub_default",
           "edit_kernel_cmdline", "edit_modules", "missing_args", "make_plan", "apply_plan", "rollback", "pending_reboot",
           "format_plan", "format_result", "MODULES_FILE", "UNSAFE_INTERRUPTS_ARG", "COMMAND_TIMEOUT",
           "REBOOT_FLAG"]

UNSAFE_INTERRUPTS_ARG = "vfio_iommu_type1.allow_unsafe_interrupts=1"
MODULES_FILE = "/etc/modules-load.d/vfio.conf"
VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
COMMAND_TIMEOUT = 600.0  # update-grub probes every disk (os-prober); kernel-install may rebuild an initramfs
REBOOT_FLAG = "reboot-required"
HUGEPAGE_SIZES = {"2M": 2 << 20, "1G": 1 << 30}
HUGE_KEYS = ("default_hugepagesz", "hugepagesz", "hugepages")
LIST_KEYS = frozenset({"rdblacklist", "rd.driver.blacklist", "modprobe.blacklist"})  # may repeat; comma lists
_SCHEMA = 1


# -- options and facts ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareOptions:
    gpu: bool = False  # blacklist nouveau so the host does not grab NVIDIA GPUs
    hugepages: tuple[str, int] | None = None  # ("1G", 16): reserve huge pages at boot
    unsafe_interrupts: bool = False  # allow vfio without interrupt remapping even when the host has it


@dataclass(frozen=True)
class HostFacts:
    cpu_vendor: str | None = None  # "intel" | "amd" | None (unknown)
    kernel_version: tuple[int, int] | None = None  # running kernel (major, minor)
    interrupt_remapping: bool | None = None  # None: unknown




def read_host_facts(h: HostRoot) -> HostFacts:
    """The facts :func:`make_plan` needs, read from the host: CPU vendor (/proc/cpuinfo), the running kernel's
    version, and interrupt remapping from the kernel log — True when the log says it is enabled, False only when
    it says it is disabled or failed, None otherwise (no readable log; nothing said yet, as before the IOMMU is
    first turned on). None never adds allow_unsafe_interrupts: that weakens isolation, so it takes evidence."""
    from .host.cpu import read_cpu
    from .host.kernel import IR_OFF, IR_ON, grep_log, kernel_log, read_kernel

    log = kernel_log(h)
    on, off = grep_log(log, IR_ON), grep_log(log, IR_OFF)
    ir = True if on and not off else False if off else None
    return HostFacts(cpu_vendor=read_cpu(h).vendor, kernel_version=read_kernel(h).version, interrupt_remapping=ir)


def parse_hugepages(text: str) -> tuple[str, int]:
    """``--hugepages SIZE:COUNT`` -> ("1G", 16). SIZE is 2M or 1G (x86-64 huge page sizes), COUNT a positive
    whole number; anything else is a UsageError naming the fix."""
    example = "use SIZE:COUNT such as 1G:16 or 2M:1024"
    size, sep, count = text.strip().partition(":")
    if not sep:
        raise UsageError(f"--hugepages {text!r}: expected SIZE:COUNT; {example}")
    norm = size.strip().upper().removesuffix("B")
    if norm not in HUGEPAGE_SIZES:
        raise UsageError(f"--hugepages {text!r}: SIZE must be 2M or 1G (the x86-64 huge page sizes); {example}")
    count = count.strip()
    if not count.isdigit() or int(count) <= 0:
        raise UsageError(f"--hugepages {text!r}: COUNT must be a whole number of pages above 0; {example}")
    return norm, int(count)


def _check_hugepages(hp: object) -> tuple[str, int] | None:
    if hp is None:
        return None
    if (not isinstance(hp, tuple) or len(hp) != 2 or hp[0] not in HUGEPAGE_SIZES or not isinstance(hp[1], int)
            or isinstance(hp[1], bool) or hp[1] <= 0):
        raise UsageError(f"hugepages {hp!r}: expected (\"2M\" or \"1G\", a page count above 0), e.g. (\"1G\", 16)")
    return hp


def unwanted_kernel_args(facts: HostFacts, opts: PrepareOptions) -> list[str]:
    """Argument names passthru removes: ``vfio_iommu_type1.allow_unsafe_interrupts`` when interrupt remapping is
    known to work and it was not asked for (it only weakens isolation then). Unknown remapping: left alone."""
    if facts.interrupt_remapping is True and not opts.unsafe_interrupts:
        return [arg_key(UNSAFE_INTERRUPTS_ARG)]
    return []


def desired_kernel_args(facts: HostFacts, opts: PrepareOptions) -> list[str]:
    """The kernel arguments passthru wants for this host and these options, in the order they are appended."""
    vendor = (facts.cpu_vendor or "").lower()
    args = ["intel_iommu=on", "iommu=pt"] if vendor in ("intel", "genuineintel") else ["iommu=pt"]
    if opts.unsafe_interrupts or facts.interrupt_remapping is False:
        args.append(UNSAFE_INTERRUPTS_ARG)
    if opts.gpu:
        args += ["rdblacklist=nouveau", "nouveau.modeset=0"]
    hp = _check_hugepages(opts.hugepages)
    if hp:
        args += [f"default_hugepagesz={hp[0]}", f"hugepagesz={hp[0]}", f"hugepages={hp[1]}"]
    return args


# -- editing argument lists -------------------------------------------------------------------------------------
def _value(token: str) -> str | None:
    return token.split("=", 1)[1] if "=" in token else None


def _merge(token: str, want: str) -> str:
    """The argument that replaces ``token`` (same key as ``want``). Options lists are merged where the kernel
    reads them as lists: intel_iommu keeps igfx_off/sm_on... and drops off; iommu keeps merge/force... and drops
    the modes that contradict pt (off, soft, nopt)."""
    key, have = arg_key(want), _value(token)
    if key == "intel_iommu" and have is not None:
        opts = [o for o in have.split(",") if o]
        if "on" in opts and "off" not in opts:
            return token
        return "intel_iommu=" + ",".join(["on"] + [o for o in opts if o not in ("on", "off")])
    if key == "iommu" and have is not None and _value(want) == "pt":
        opts = [o for o in have.split(",") if o]
        bad = ("off", "soft", "nopt")
        if "pt" in opts and not any(o in bad for o in opts):
            return token
        return "iommu=" + ",".join(["pt"] + [o for o in opts if o not in bad + ("pt",)])
    return token if token == want else want


def _satisfied(token: str, want: str) -> bool:
    key = arg_key(want)
    if key in LIST_KEYS:
        return arg_key(token) == key and (_value(want) or "") in (_value(token) or "").split(",")
    return arg_key(token) == key and _merge(token, want) == token


def missing_args(running: list[str], desired: list[str]) -> list[str]:
    """The desired arguments a command line (e.g. /proc/cmdline) lacks: for ``passthru doctor``'s "reboot
    needed" and for the reboot flag. ``intel_iommu=on,igfx_off`` satisfies ``intel_iommu=on``."""
    out = []
    for want in desired:
        last = [t for t in running if arg_key(t) == arg_key(want)]
        if arg_key(want) in LIST_KEYS:
            ok = any(_satisfied(t, want) for t in last)
        else:
            ok = bool(last) and _satisfied(last[-1], want)  # the kernel uses the last occurrence
        if not ok:
            out.append(want)
    return out


def edit_args(tokens: list[str], desired: list[str], remove: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``tokens`` with ``desired`` in force: other arguments kept in order; an argument of ours with another value
    rewritten in place (first occurrence), its duplicates dropped; missing ones appended in ``desired`` order.
    The huge page arguments are order-sensitive and travel as one group: kept when already present exactly once
    each, in order and adjacent, else all occurrences are replaced by the group at the end. List-valued
    blacklists (rdblacklist=...) are only ever added to. Arguments named in ``remove`` (see
    :func:`unwanted_kernel_args`) are dropped. Idempotent: ``edit_args(edit_args(t, d), d) == edit_args(t, d)``."""
    gone = {arg_key(r) for r in remove}
    tokens = [t for t in tokens if arg_key(t) not in gone]
    huge = [d for d in desired if arg_key(d) in HUGE_KEYS]
    singles = {arg_key(d): d for d in desired if arg_key(d) not in HUGE_KEYS and arg_key(d) not in LIST_KEYS}
    keep_huge = False
    if huge:
        at = [i for i, t in enumerate(tokens) if arg_key(t) in HUGE_KEYS]
        keep_huge = bool(at) and [tokens[i] for i in at] == huge and at == list(range(at[0], at[0] + len(huge)))
    out: list[str] = []
    done: set[str] = set()
    for t in tokens:
        k = arg_key(t)
        if huge and k in HUGE_KEYS:
            if keep_huge:
                out.append(t)
            continue
        if k in singles:
            if k not in done:
                out.append(_merge(t, singles[k]))
                done.add(k)
            continue
        out.append(t)
    for d in desired:
        k = arg_key(d)
        if k in singles and k not in done:
            out.append(d)
            done.add(k)
        elif k in LIST_KEYS and not any(_satisfied(t, d) for t in out):
            out.append(d)
    if huge and not keep_huge:
        out += huge
    return out


class _CannotEdit(Exception):
    pass


def edit_grub_default(text: str, desired: list[str], remove: list[str] | tuple[str, ...] = ()) -> str:
    """/etc/default/grub with ``desired`` in GRUB_CMDLINE_LINUX (the last assignment, the one that wins). Only
    that line changes; its quoting is kept (an unquoted value that grows to several arguments gets double
    quotes); GRUB_CMDLINE_LINUX_DEFAULT and everything else stay byte for byte. No assignment: one is appended.
    Raises _CannotEdit for a value passthru cannot rewrite safely."""
    var = find_grub_var(text, "GRUB_CMDLINE_LINUX")
    if var is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        return f'{text}{sep}GRUB_CMDLINE_LINUX="{" ".join(edit_args([], desired))}"\n'
    if var.problem:
        raise _CannotEdit(f"GRUB_CMDLINE_LINUX on line {var.index + 1}: {var.problem}")
    old = var.args()
    new = edit_args(old, desired, remove)
    if new == old:
        return text
    quote = '"' if var.quote == "" and len(new) > 1 else var.quote
    lines = text.splitlines(keepends=True)
    lines[var.index] = var.render(" ".join(new), quote)
    return "".join(lines)


def edit_kernel_cmdline(text: str, desired: list[str], remove: list[str] | tuple[str, ...] = ()) -> str:
    """/etc/kernel/cmdline (one line of arguments) with ``desired`` in force; unchanged text when nothing differs."""
    old = split_args(text)
    new = edit_args(old, desired, remove)
    return text if new == old else " ".join(new) + "\n"


def edit_modules(text: str | None, kernel_version: tuple[int, int] | None) -> str:
    """/etc/modules-load.d/vfio.conf: vfio, vfio_iommu_type1, vfio_pci, and vfio_virqfd only before Linux 6.2
    (merged into vfio there; listing it on 6.2+ makes systemd-modules-load fail). Other lines are kept; with an
    unknown kernel version vfio_virqfd is neither added nor removed (vfio_pci pulls it in when it exists)."""
    old_kernel = kernel_version is not None and tuple(kernel_version) < (6, 2)
    new_kernel = kernel_version is not None and not old_kernel
    want = list(VFIO_MODULES) + (["vfio_virqfd"] if old_kernel else [])
    if text is None:
        return "# passthru prepare: load vfio at boot for device passthrough\n" + "".join(m + "\n" for m in want)
    lines = text.splitlines(keepends=True)
    out, present = [], set()
    for line in lines:
        name = line.strip()
        if name and name[0] not in "#;":
            name = name.replace("-", "_")
            if new_kernel and name == "vfio_virqfd":
                continue
            present.add(name)
        out.append(line)
    missing = [m for m in want if m not in present]
    if not missing and len(out) == len(lines):
        return text
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    return "".join(out) + "".join(m + "\n" for m in missing)


# -- the plan ---------------------------------------------------------------------------------------------------
def _diff(path: str, old: str | None, new: str | None) -> str:
    a = [] if old is None else old.splitlines(keepends=True)
    b = [] if new is None else new.splitlines(keepends=True)
    out = []
    for line in difflib.unified_diff(a, b, "/dev/null" if old is None else path,
                                     "/dev/null" if new is None else path):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


@dataclass(frozen=True)
class FileChange:
    path: str  # host path ("/etc/default/grub")
    old: str | None  # None: the file does not exist and will be created
    new: str
    diff: str
    restore_as: str | None = None  # for a created file: rollback writes this instead of removing it

    @property
    def created(self) -> bool:
        return self.old is None


def _change(path: str, old: str | None, new: str, restore_as: str | None = None) -> FileChange:
    return FileChange(path, old, new, _diff(path, old, new), restore_as)


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
                                      if self.options.hugepages else None)},
            "kernel_args": list(self.args),
            "changes": [{"path": c.path, "created": c.created, "diff": c.diff} for c in self.changes],
            "commands": [list(c) for c in self.commands],
            "notes": list(self.notes), "manual": list(self.manual),
        }


def _mem_total(h: HostRoot) -> int | None:
    text = h.read(h.proc + "/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _editable(h: HostRoot, path: str) -> str | None:
    """Why passthru will not rewrite ``path`` (a symlink or not a regular file), or None."""
    p = h.path(path)
    if os.path.islink(p):
        return f"{path} is a symbolic link; passthru rewrites regular files only"
    if os.path.exists(p) and not os.path.isfile(p):
        return f"{path} is not a regular file"
    return None


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
    host's memory) raise UsageError before the boot configuration is even read."""
    args = desired_kernel_args(facts, opts)
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
        why = _editable(h, path)
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
            changes.append(_change(path, text, new))
        return True

    def regenerate() -> None:
        if boot.regenerate:
            commands.extend(list(c) for c in boot.regenerate)
            rollback_cmds.extend(list(c) for c in boot.regenerate)

    if boot.loader == "grub":
        if sync_file(GRUB_DEFAULT, edit_grub_default, "GRUB_CMDLINE_LINUX"):
            change = next((c for c in changes if c.path == GRUB_DEFAULT), None)
            edited = change is not None
            text = change.new if change else read_text(h, GRUB_DEFAULT) or ""
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
        if boot.kernel_cmdline:
            sync_file(KERNEL_CMDLINE, edit_kernel_cmdline, KERNEL_CMDLINE)
        else:
            seed = _seed_cmdline(h)
            if seed is None:
                manual.append(f"/proc/cmdline is unreadable: write {KERNEL_CMDLINE} with your kernel arguments "
                              f"plus {need_args}")
            else:
                changes.append(_change(KERNEL_CMDLINE, None, edit_kernel_cmdline(seed, args, remove),
                                       restore_as=seed))
                notes.append(f"{KERNEL_CMDLINE} is created from the running command line (what kernel-install "
                             "uses without it)")
        if any(c.path == KERNEL_CMDLINE for c in changes):
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

    why = _editable(h, MODULES_FILE)
    if why:
        manual.append(f"{why}: make sure it lists {', '.join(VFIO_MODULES)}")
    else:
        old = read_text(h, MODULES_FILE)
        new = edit_modules(old, facts.kernel_version)
        if new != old:
            changes.append(_change(MODULES_FILE, old, new))
    if facts.kernel_version is None:
        notes.append("kernel version unknown: vfio_virqfd (a separate module before Linux 6.2) is left as it is")
    return Plan(boot=boot, facts=facts, options=opts, args=args, changes=changes, commands=commands,
                rollback_commands=rollback_cmds, backup_extra=extra, notes=list(dict.fromkeys(notes)),
                manual=list(dict.fromkeys(manual)))


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


# -- running commands -------------------------------------------------------------------------------------------
class Runner:
    """Runs one external command: ``run(argv, timeout) -> (returncode, stdout, stderr)``. A missing program is
    returncode 127, a timeout 124 (or the exceptions FileNotFoundError / TimeoutError from a custom runner)."""

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:  # pragma: no cover - interface
        raise NotImplementedError


class SubprocessRunner(Runner):
    """The real runner: an argument list (never a shell), stdin closed, a timeout, sbin directories on PATH
    (update-grub and grub2-mkconfig live there and sudo's PATH may lack them)."""

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        import subprocess

        env = dict(os.environ)
        path = env.get("PATH", "/usr/bin:/bin").split(":")
        env["PATH"] = ":".join(path + [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in path])
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                               timeout=timeout, env=env, check=False)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: command not found"
        except subprocess.TimeoutExpired:
            return 124, "", f"{argv[0]}: timed out after {timeout:g} s"
        except OSError as e:
            return 126, "", f"{argv[0]}: {e.strerror}"
        return p.returncode, p.stdout, p.stderr


def _pick_runner(h: HostRoot, runner: Runner | None) -> Runner | None:
    """The runner to use; None means "skip the commands" (a root other than / without an explicit runner)."""
    if runner is None:
        return SubprocessRunner() if h.is_live else None
    if type(runner) is SubprocessRunner and not h.is_live:
        raise UsageError(f"refusing to run boot commands on this machine for the host root {h.base}; they would "
                         "change this machine, not that root (run passthru inside it, or chroot)")
    return runner


def _run(runner: Runner, argv: list[str], timeout: float) -> tuple[int, str]:
    """(returncode, the last non-empty stderr line or a description)."""
    try:
        rc, out, err = runner.run(list(argv), timeout)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except TimeoutError:
        return 124, f"{argv[0]}: timed out after {timeout:g} s"
    except OSError as e:
        return 126, f"{argv[0]}: {e.strerror or e}"
    except Exception as e:  # subprocess.TimeoutExpired from a custom runner, without importing subprocess
        if type(e).__name__ == "TimeoutExpired":
            return 124, f"{argv[0]}: timed out after {timeout:g} s"
        raise
    lines = [ln.strip() for ln in (err or "").splitlines() if ln.strip()]
    lines = lines or [ln.strip() for ln in (out or "").splitlines() if ln.strip()]
    return rc, lines[-1] if lines else ""


def _cmd(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


# -- files, backups, state --------------------------------------------------------------------------------------
def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _write_atomic(path: str, data: bytes, mode: int = 0o644, uid: int | None = None, gid: int | None = None) -> None:
    """temp file in the same directory, fsync, rename over ``path``, fsync the directory: readers see the old or
    the new file, never a torn one, even across a crash."""
    import tempfile

    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".passthru", dir=d)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if uid is not None and gid is not None and (uid, gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, uid, gid)
                except PermissionError:
                    pass
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def _fsync_dir(d: str) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Lock:
    """An exclusive lock on <state_dir>/prepare.lock: one apply/rollback at a time."""

    def __init__(self, paths: Paths) -> None:
        self.path = os.path.join(paths.state_dir, "prepare.lock")
        self.fd = -1

    def __enter__(self) -> "_Lock":
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise HostError(f"cannot use the state directory {os.path.dirname(self.path)} ({e.strerror}); "
                            "run as root or pass --state-dir") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise HostError("another passthru prepare --apply/--rollback is running; wait for it and retry") from None
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _backups_dir(paths: Paths) -> str:
    return os.path.join(paths.state_dir, "backups")


def _backup_sets(paths: Paths) -> list[tuple[str, dict]]:
    """(directory, manifest) of every backup set, oldest first."""
    base = _backups_dir(paths)
    out = []
    for name in HostRoot.listdir(base):
        try:
            with open(os.path.join(base, name, "manifest.json"), encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(m, dict):
            out.append((os.path.join(base, name), m))
    return sorted(out, key=lambda s: (s[1].get("seq", 0), s[0]))


def _save_manifest(bdir: str, manifest: dict) -> None:
    _write_atomic(os.path.join(bdir, "manifest.json"), _encode(json.dumps(manifest, indent=2) + "\n"), 0o600)


def _new_backup_set(paths: Paths, now: float) -> tuple[str, int]:
    base = _backups_dir(paths)
    os.makedirs(base, mode=0o700, exist_ok=True)
    seq = max((m.get("seq", 0) for _, m in _backup_sets(paths)), default=0) + 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    name, n = stamp, 1
    while True:
        try:
            os.mkdir(os.path.join(base, name), 0o700)
            return os.path.join(base, name), seq
        except FileExistsError:
            n += 1
            name = f"{stamp}-{n}"


def _boot_id(h: HostRoot) -> str | None:
    return h.read(h.proc + "/sys/kernel/random/boot_id") or None


def _flag_path(paths: Paths) -> str:
    return os.path.join(paths.state_dir, REBOOT_FLAG)


def _write_flag(h: HostRoot, paths: Paths, action: str, args: list[str], bdir: str, now: float) -> None:
    doc = {"action": action, "args": args, "backup": bdir, "boot_id": _boot_id(h),
           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    _write_atomic(_flag_path(paths), _encode(json.dumps(doc, indent=2) + "\n"), 0o644)


def pending_reboot(h: HostRoot, paths: Paths) -> bool | None:
    """Whether boot configuration passthru wrote is still waiting for a reboot. False: no flag (nothing written,
    or only files that need no reboot), or the flag is from an earlier boot (the boot_id changed). True: written
    during this boot. Without a boot_id (a capture), an apply is pending while /proc/cmdline lacks its
    arguments. None: cannot tell (an unreadable flag; a rollback flag without boot_id)."""
    path = _flag_path(paths)
    if not os.path.exists(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            flag = json.load(f)
        args = [str(a) for a in flag.get("args", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    now_id, then_id = _boot_id(h), flag.get("boot_id")
    if now_id and then_id:
        return now_id == then_id
    if flag.get("action") == "apply":
        running = read_proc_cmdline(h)
        return None if running is None else bool(missing_args(running, args))
    return None


def _clear_stale_flag(h: HostRoot, paths: Paths) -> None:
    if h.is_live and pending_reboot(h, paths) is False and os.path.exists(_flag_path(paths)):
        try:
            os.unlink(_flag_path(paths))
        except OSError:
            pass


# -- apply and rollback -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyResult:
    action: str  # "apply" | "rollback"
    status: str  # "changed" | "unchanged" (apply), "restored" (rollback)
    reboot_needed: bool
    backup_dir: str | None
    files: list[str]  # host paths written (apply) or restored/removed (rollback)
    commands_run: list[list[str]]
    commands_skipped: list[list[str]]  # a host root other than / without an explicit runner
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": _SCHEMA, "action": self.action, "status": self.status,
                "reboot_needed": self.reboot_needed, "backup_dir": self.backup_dir, "files": list(self.files),
                "commands_run": [list(c) for c in self.commands_run],
                "commands_skipped": [list(c) for c in self.commands_skipped], "notes": list(self.notes)}


def _snapshot(h: HostRoot, path: str) -> tuple[bytes | None, os.stat_result | None]:
    p = h.path(path)
    try:
        st = os.stat(p)
    except OSError:
        return None, None
    data = h.read_bytes(p)
    if data is None:
        raise HostError(f"cannot read {path} to back it up; run as root")
    return data, st


def _restore(h: HostRoot, bdir: str, entries: list[dict], use_restore_as: bool) -> list[str]:
    """Put back each file of a backup set; returns the host paths touched. Errors are collected, not raised
    half-way: as much as possible is restored."""
    failed, touched = [], []
    for e in entries:
        p = h.path(e["path"])
        try:
            if e["existed"]:
                with open(os.path.join(bdir, "files", e["path"].lstrip("/")), "rb") as f:
                    data = f.read()
                _write_atomic(p, data, e["mode"], e.get("uid"), e.get("gid"))
            elif use_restore_as and e.get("restore_as") is not None:
                _write_atomic(p, _encode(e["restore_as"]), 0o644)
            elif os.path.lexists(p):
                os.unlink(p)
                _fsync_dir(os.path.dirname(p))
            touched.append(e["path"])
        except OSError as err:
            failed.append(f"{e['path']} ({err.strerror or err})")
    if failed:
        raise HostError(f"could not restore {', '.join(failed)} from {bdir}/files; copy them back by hand")
    return touched


def apply_plan(h: HostRoot, plan: Plan, paths: Paths, runner: Runner | None = None, now: float | None = None,
               timeout: float = COMMAND_TIMEOUT) -> ApplyResult:
    """Carry out ``plan``: back up every file it touches to ``<state_dir>/backups/<UTC timestamp>/`` (files and
    manifest.json), write each changed file atomically (mode and owner kept), run the commands, write the
    reboot flag. Nothing to change: "unchanged" and no command runs. A write or command failure restores every
    file from the backup (and reruns regenerate commands that had already succeeded) and raises HostError with
    the command's last stderr line. ``runner`` None: the real one on the live host; on another root the commands
    are skipped and listed in the result."""
    now = time.time() if now is None else now
    if not plan.changed:
        _clear_stale_flag(h, paths)
        return ApplyResult("apply", "unchanged", False, None, [], [], [])
    run_with = _pick_runner(h, runner)
    with _Lock(paths):
        for c in plan.changes:
            if read_text(h, c.path) != c.old:
                raise HostError(f"{c.path} changed since the plan was made; run passthru prepare again")
        bdir, seq = _new_backup_set(paths, now)
        entries = []
        seen = set()
        for path in [c.path for c in plan.changes] + list(plan.backup_extra):
            if path in seen:
                continue
            seen.add(path)
            data, st = _snapshot(h, path)
            e = {"path": path, "existed": data is not None, "written": any(c.path == path for c in plan.changes)}
            if data is not None and st is not None:
                dest = os.path.join(bdir, "files", path.lstrip("/"))
                _write_atomic(dest, data, 0o600)
                e.update(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, sha256_before=_sha(data))
            restore_as = next((c.restore_as for c in plan.changes if c.path == path), None)
            if restore_as is not None:
                e["restore_as"] = restore_as
            entries.append(e)
        manifest = {"schema": _SCHEMA, "seq": seq, "status": "applying", "loader": plan.loader,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "root": h.base,
                    "args": plan.args, "files": entries, "commands": plan.commands,
                    "rollback_commands": plan.rollback_commands, "commands_skipped": run_with is None}
        _save_manifest(bdir, manifest)

        def fail(message: str) -> HostError:
            try:
                _restore(h, bdir, entries, use_restore_as=False)
            except HostError as e:
                message += f"; AND {e}"
            else:
                message += f"; every file was restored from {bdir}"
            manifest["status"] = "failed"
            _save_manifest(bdir, manifest)
            return HostError(message)

        for c in plan.changes:
            e = next(x for x in entries if x["path"] == c.path)
            try:
                _write_atomic(h.path(c.path), _encode(c.new), e.get("mode", 0o644), e.get("uid"), e.get("gid"))
            except OSError as err:
                raise fail(f"cannot write {c.path} ({err.strerror or err}); run as root") from None
        ran: list[list[str]] = []
        skipped: list[list[str]] = []
        for argv in plan.commands:
            if run_with is None:
                skipped.append(list(argv))
                continue
            rc, last = _run(run_with, argv, timeout)
            if rc != 0:
                message = f"`{_cmd(argv)}` failed (exit {rc}): {last or 'no error output'}"
                err = fail(message)
                if ran:  # the menu was partly regenerated from the new files: regenerate from the restored ones
                    bad = [c for c in plan.rollback_commands if _run(run_with, c, timeout)[0] != 0]
                    if bad:
                        err = HostError(f"{err}; then `{_cmd(bad[0])}` failed too: run it by hand")
                raise err
            ran.append(list(argv))
        for e in entries:
            e["sha256_after"] = _sha(h.read_bytes(h.path(e["path"])))
            e["exists_after"] = os.path.lexists(h.path(e["path"]))
        manifest["status"] = "applied"
        _save_manifest(bdir, manifest)
        _write_flag(h, paths, "apply", plan.args, bdir, now)
    notes = []
    if skipped:
        notes.append(f"the host root is {h.base}, not /: the commands were not run; run them inside that host")
    return ApplyResult("apply", "changed", True, bdir, [c.path for c in plan.changes], ran, skipped, notes)


def rollback(h: HostRoot, paths: Paths, runner: Runner | None = None, now: float | None = None,
             timeout: float = COMMAND_TIMEOUT) -> ApplyResult:
    """Undo the newest applied backup set: every file put back as it was (files passthru created are removed,
    except a created /etc/kernel/cmdline, which gets the command line it was made from), the regenerate commands
    rerun, the set marked rolled back (so a second rollback undoes the apply before it). Refuses when a file
    changed after the apply (a kernel update, a manual edit): restoring would lose that change."""
    now = time.time() if now is None else now
    run_with = _pick_runner(h, runner)
    with _Lock(paths):
        sets = [(d, m) for d, m in _backup_sets(paths) if m.get("status") == "applied"]
        if not sets:
            raise UsageError(f"nothing to roll back: no applied backup set in {_backups_dir(paths)}; "
                             "passthru prepare --apply makes one")
        bdir, manifest = sets[-1]
        entries = manifest.get("files", [])
        drift = [e["path"] for e in entries
                 if os.path.lexists(h.path(e["path"])) != e.get("exists_after", True)
                 or _sha(h.read_bytes(h.path(e["path"]))) != e.get("sha256_after")]
        if drift:
            raise HostError(f"cannot roll back: {', '.join(drift)} changed after passthru prepare --apply on "
                            f"{manifest.get('created')} (a kernel update or a manual edit); restore by hand from "
                            f"{bdir}/files")
        touched = _restore(h, bdir, entries, use_restore_as=True)
        ran: list[list[str]] = []
        skipped: list[list[str]] = []
        failure = None
        for argv in manifest.get("rollback_commands", []):
            if run_with is None:
                skipped.append(list(argv))
                continue
            rc, last = _run(run_with, argv, timeout)
            if rc != 0:
                failure = f"`{_cmd(argv)}` failed (exit {rc}): {last or 'no error output'}"
                break
            ran.append(list(argv))
        manifest["status"] = "rolled-back"
        manifest["rolled_back"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        _save_manifest(bdir, manifest)
        _write_flag(h, paths, "rollback", [], bdir, now)
    if failure:
        raise HostError(f"files restored from {bdir} but {failure}; fix it and run the command by hand")
    notes = []
    if skipped:
        notes.append(f"the host root is {h.base}, not /: the commands were not run; run them inside that host")
    if manifest.get("loader") == "bls":
        notes.append("BLS entries of kernels installed after the apply keep the arguments: remove them with "
                     "grubby --update-kernel=ALL --remove-args=\"...\" if needed")
    return ApplyResult("rollback", "restored", True, bdir, touched, ran, skipped, notes)


# -- text output ------------------------------------------------------------------------------------------------
def format_plan(plan: Plan) -> str:
    """The dry run as a person reads it."""
    b = plan.boot
    distro = (b.distro_id or "unknown distribution") + (f" ({b.family} family)" if b.family else "")
    out = [f"Boot loader: {b.loader or 'unknown'} - {b.reason}; {distro}, {'UEFI' if b.efi else 'BIOS'}",
           f"Kernel arguments: {' '.join(plan.args)}"]
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


def format_result(result: ApplyResult) -> str:
    out = []
    where = f" (backup: {result.backup_dir})" if result.backup_dir else ""
    if result.status == "unchanged":
        out.append("Unchanged: the boot configuration already has all of this; nothing was run.")
    elif result.action == "apply":
        out.append(f"Changed: {', '.join(result.files) or 'boot entries'}{where}")
    else:
        out.append(f"Restored: {', '.join(result.files) or 'nothing'}{where}")
    out += [f"Ran: {_cmd(c)}" for c in result.commands_run]
    out += [f"Not run: {_cmd(c)}" for c in result.commands_skipped]
    out += [f"Note: {n}" for n in result.notes]
    if result.reboot_needed:
        out.append("Reboot needed for the kernel command line and modules to take effect.")
    if result.action == "apply" and result.status == "changed":
        out.append("Undo with: passthru prepare --rollback")
    return "\n".join(out) + "\n"
