"""Kernel arguments and the config-file editors of ``passthru prepare``: the options and host facts a plan is
made from, which kernel arguments passthru wants (:func:`desired_kernel_args`) and removes
(:func:`unwanted_kernel_args`), how an argument list is edited to have them (:func:`edit_args`) and how a running
command line is checked for them (:func:`missing_args`), and the pure text editors for /etc/default/grub,
/etc/kernel/cmdline and /etc/modules-load.d/vfio.conf. Reads nothing but the host facts; writes nothing."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..host.boot import arg_key, find_grub_var, split_args
from ..host.root import HostRoot

UNSAFE_INTERRUPTS_ARG = "vfio_iommu_type1.allow_unsafe_interrupts=1"
MODULES_FILE = "/etc/modules-load.d/vfio.conf"
VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
HUGEPAGE_SIZES = {"2M": 2 << 20, "1G": 1 << 30}
HUGE_KEYS = ("default_hugepagesz", "hugepagesz", "hugepages")
LIST_KEYS = frozenset({"rdblacklist", "rd.driver.blacklist", "modprobe.blacklist"})  # may repeat; comma lists


# -- options and facts ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareOptions:
    gpu: bool = False  # blacklist nouveau so the host does not grab NVIDIA GPUs
    hugepages: tuple[str, int] | None = None  # ("1G", 16): reserve huge pages at boot
    unsafe_interrupts: bool = False  # allow vfio without interrupt remapping even when the host has it
    early: tuple[str, ...] = ()  # PCI addresses vfio-pci claims at boot (prepare/early.py)
    overrides: frozenset[str] = frozenset()  # risks accepted for --early: --allow-shared-ids, --force-netdev...


@dataclass(frozen=True)
class HostFacts:
    cpu_vendor: str | None = None  # "intel" | "amd" | None (unknown)
    kernel_version: tuple[int, int] | None = None  # running kernel (major, minor)
    interrupt_remapping: bool | None = None  # None: unknown



def read_host_facts(h: HostRoot) -> HostFacts:
    """The facts :func:`make_plan` needs, read from the host: the vendor whose IOMMU arguments apply
    (:func:`passthru.host.iommu.platform_vendor`: ACPI DMAR/IVRS, else the CPU's in /proc/cpuinfo), the running kernel's
    version, and interrupt remapping from the kernel log — True when the log says it is enabled, False only when
    it says it is disabled or failed, None otherwise (no readable log; nothing said yet, as before the IOMMU is
    first turned on). None never adds allow_unsafe_interrupts: that weakens isolation, so it takes evidence."""
    from ..host.cpu import read_cpu
    from ..host.iommu import platform_vendor
    from ..host.kernel import IR_OFF, IR_ON, grep_log, kernel_log, read_kernel

    log = kernel_log(h)
    on, off = grep_log(log, IR_ON), grep_log(log, IR_OFF)
    ir = True if on and not off else False if off else None
    return HostFacts(cpu_vendor=platform_vendor(h, read_cpu(h).vendor)[0], kernel_version=read_kernel(h).version, interrupt_remapping=ir)


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
