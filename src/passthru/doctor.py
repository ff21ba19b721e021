"""``passthru doctor``: the seed's FAQ and host preparation as checks that say exactly what is wrong and the fix.

Each check yields a :class:`Finding` with an id, a status (pass / warn / fail / skip), the evidence it saw and a
concrete fix. Read-only: doctor never changes the host. ``passthru prepare`` applies what software can fix.

Host checks: CPU virtualization and vendor; IOMMU in firmware (ACPI DMAR/IVRS, kernel log); IOMMU active (units and
groups); kernel arguments for this vendor in /proc/cmdline; boot configuration (grub, BLS entry,
/etc/kernel/cmdline) or a ``prepare --apply`` of this boot not yet in effect (reboot needed); interrupt remapping (and whether
allow_unsafe_interrupts is needed or only weakens isolation); vfio modules loaded and configured for boot
(vfio_virqfd only before 6.2); early binding in the initramfs and on its devices (doctor_initramfs.py); hugepages;
locked-memory limit; host graphics drivers. Device checks, for each DEVICE given: present, what the host uses it
for (mounts, addresses, consoles, live vGPUs: what `bind` refuses), bound driver, IOMMU group viability with the
offending mates named, boot VGA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .config import Paths
from .discovery import Device, Inventory, discover
from .findings import FAIL, PASS, SKIP, WARN, Finding, unreadable_fix  # re-exported: doctor's callers name them here
from .host.boot import arg_key, configured_args, read_boot
from .host.cpu import CpuInfo, read_cpu
from .host.iommu import group_verdict, is_vfio_driver, platform_vendor
from .host.kernel import (IR_OFF, IR_ON, KernelInfo, boot_modules, cmdline_value, grep_log, kernel_log,
                          loaded_modules,
                          read_cmdline, read_kernel)
from .host.memory import read_hugepages, read_memlock, read_memtotal_kib
from .host.root import HostRoot

__all__ = ["Finding", "Report", "run_doctor", "unreadable_fix", "PASS", "WARN", "FAIL", "SKIP", "VFIO_MODULES"]

VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
HOST_GPU_DRIVERS = frozenset({"nouveau", "nvidia", "amdgpu", "radeon", "i915", "xe", "snd_hda_intel"})
UNSAFE_IRQ = "vfio_iommu_type1.allow_unsafe_interrupts"


@dataclass(slots=True)
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, *a: object, **kw: object) -> Finding:
        f = Finding(*a, **kw)  # type: ignore[arg-type]
        self.findings.append(f)
        return f

    @property
    def failed(self) -> bool:
        return any(f.status == FAIL for f in self.findings)

    def summary(self) -> dict[str, int]:
        out = {PASS: 0, WARN: 0, FAIL: 0, SKIP: 0}
        for f in self.findings:
            out[f.status] += 1
        return out

    def to_json(self) -> dict:
        return {"schema": 1, "ok": not self.failed, "summary": self.summary(),
                "checks": [asdict(f) for f in self.findings]}


@dataclass(slots=True)
class _Facts:
    h: HostRoot
    cpu: CpuInfo
    kernel: KernelInfo
    cmdline: list[str]
    log: list[str] | None
    modules: set[str]
    inv: Inventory
    vendor: str | None = None  # whose IOMMU: decides the kernel arguments (platform_vendor)
    vendor_from: str = ""


def _vendor_args(vendor: str | None) -> list[str]:
    if vendor == "intel":
        return ["intel_iommu=on", "iommu=pt"]
    if vendor == "amd":
        return ["iommu=pt"]
    return []


def _check_cpu(r: Report, f: _Facts) -> None:
    c = f.cpu
    label = {"intel": "Intel", "amd": "AMD"}.get(c.vendor or "", c.vendor_id or "unknown")
    other = ""
    if f.vendor != c.vendor and f.vendor in ("intel", "amd"):
        other = f"; the IOMMU is {'Intel VT-d' if f.vendor == 'intel' else 'AMD-Vi'} ({f.vendor_from}), which decides the arguments"
    ok = f.vendor in ("intel", "amd")
    r.add("cpu.vendor", "CPU vendor", PASS if ok else WARN,
          f"{label} ({c.model_name or 'model unknown'}, {c.cpus} CPUs){other}",
          None if ok else "passthru knows the kernel arguments for Intel and AMD only")
    if c.virtualization:
        r.add("cpu.virtualization", "Hardware virtualization", PASS,
              f"{c.virtualization} flag present ({'VT-x' if c.virtualization == 'vmx' else 'AMD-V'})")
    else:
        hint = (" This host is itself a VM: enable nested virtualization on its hypervisor."
                if c.hypervisor else "")
        r.add("cpu.virtualization", "Hardware virtualization", FAIL,
              "no vmx/svm flag in /proc/cpuinfo",
              f"enable {'AMD-V (SVM)' if c.vendor == 'amd' else 'Intel VT-x' if c.vendor == 'intel' else 'VT-x/AMD-V'}"
              f" in the BIOS/UEFI setup.{hint}")


def _check_iommu(r: Report, f: _Facts) -> None:
    h = f.h
    tables = [t for t in ("DMAR", "IVRS") if h.exists(f"{h.sys}/firmware/acpi/tables/{t}")]
    log_lines = grep_log(f.log, r"^(DMAR|AMD-Vi|DMAR-IR):")
    firmware_setting = "Intel VT-d" if f.vendor == "intel" else "AMD IOMMU / AMD-Vi" if f.vendor == "amd" \
        else "VT-d / AMD-Vi"
    if tables or log_lines:
        ev = []
        if tables:
            ev.append("ACPI table " + "/".join(tables))
        if log_lines:
            ev.append(f"kernel log: {log_lines[0]}")
        r.add("iommu.firmware", "IOMMU in firmware", PASS, "; ".join(ev))
    elif f.log is None and not h.exists(f"{h.sys}/firmware/acpi/tables"):
        r.add("iommu.firmware", "IOMMU in firmware", SKIP,
              "neither ACPI tables nor the kernel log are readable here",
              unreadable_fix(h, "the ACPI tables and the kernel log (/dev/kmsg)"))
    else:
        r.add("iommu.firmware", "IOMMU in firmware", FAIL,
              "no ACPI DMAR/IVRS table and no DMAR:/AMD-Vi: lines in the kernel log",
              f"enable {firmware_setting} in the BIOS/UEFI setup, then reboot")
    st = f.inv.iommu
    if st.enabled:
        r.add("iommu.active", "IOMMU active", PASS, st.message)
    else:
        r.add("iommu.active", "IOMMU active", FAIL, st.message,
              "add the IOMMU kernel arguments with `passthru prepare --apply` and reboot"
              + ("" if tables or log_lines else "; the firmware setting must be on too"))


def _check_cmdline(r: Report, f: _Facts) -> None:
    want = _vendor_args(f.vendor)
    if not want:
        r.add("kernel.cmdline", "IOMMU kernel arguments", SKIP, "CPU vendor unknown: no arguments to check")
        return
    missing = [a for a in want if cmdline_value(f.cmdline, a.split("=", 1)[0]) != a.split("=", 1)[1]]
    shown = " ".join(a for a in f.cmdline if a.split("=", 1)[0] in {w.split("=", 1)[0] for w in want}) or "none"
    if missing:
        r.add("kernel.cmdline", "IOMMU kernel arguments", FAIL,
              f"/proc/cmdline lacks {' '.join(missing)} (has: {shown})",
              "run `passthru prepare --apply` (adds them to the boot loader config) and reboot")
    else:
        r.add("kernel.cmdline", "IOMMU kernel arguments", PASS, f"/proc/cmdline has {' '.join(want)}")


# Kernel arguments passthru manages or that decide passthrough; a difference in any other argument is not ours.
MANAGED_ARGS = frozenset({"intel_iommu", "amd_iommu", "iommu", UNSAFE_IRQ, "rdblacklist", "modprobe.blacklist",
                          "nouveau.modeset", "default_hugepagesz", "hugepagesz", "hugepages", "vfio_pci.ids"})


def _check_reboot(r: Report, f: _Facts, paths: Paths | None) -> None:
    """Boot configuration that differs from the running kernel in arguments that matter here -> reboot needed.
    Where the configuration cannot be read, the flag ``passthru prepare --apply`` leaves for the boot it ran in
    decides (with it readable, the comparison is the better answer: an apply that only wrote what the running
    kernel already has needs no reboot)."""
    from .prepare import missing_args, pending_reboot  # pure readers of prepare's rules and flag

    boot = read_boot(f.h)
    configured = configured_args(f.h, boot)
    flag = pending_reboot(f.h, paths) if paths is not None else False
    if configured is None and not flag:
        r.add("boot.reboot", "Boot config in effect", SKIP,
              f"no boot loader configuration passthru can read (loader: {boot.loader or 'unknown'})")
        return
    ours = [a for a in configured or [] if arg_key(a) in MANAGED_ARGS]
    # the kernel uses the last of a repeated argument (blacklists are lists and may repeat)
    ours = [a for i, a in enumerate(ours) if arg_key(a) in ("rdblacklist", "modprobe.blacklist")
            or not any(arg_key(b) == arg_key(a) for b in ours[i + 1:])]
    pending = missing_args(f.cmdline, ours)
    stale = [a for a in f.cmdline if arg_key(a) in MANAGED_ARGS and configured is not None
             and not any(arg_key(c) == arg_key(a) for c in ours)]
    where = {"grub": "/etc/default/grub", "systemd-boot": "/etc/kernel/cmdline"}.get(boot.loader or "",
                                                                                    "the BLS boot entry")
    if pending or stale or (flag and configured is None):
        ev = []
        if pending:
            ev.append(f"{where} has {' '.join(pending)}, the running kernel does not")
        if stale:
            ev.append(f"the running kernel has {' '.join(stale)}, {where} no longer does")
        if flag and not ev:
            ev.append("`passthru prepare --apply` changed the boot configuration during this boot")
        r.add("boot.reboot", "Boot config in effect", WARN, "; ".join(ev),
              "reboot to boot with the prepared configuration (`passthru prepare --rollback` undoes it instead)")
    else:
        r.add("boot.reboot", "Boot config in effect", PASS,
              f"the running kernel has the IOMMU/vfio arguments {where} sets ({' '.join(ours)})" if ours else
              f"{where} sets no IOMMU/vfio arguments; nothing waits for a reboot")


def _check_irq_remapping(r: Report, f: _Facts) -> None:
    if not f.inv.iommu.enabled:
        r.add("iommu.irq_remapping", "Interrupt remapping", SKIP, "IOMMU not active")
        return
    unsafe_arg = cmdline_value(f.cmdline, UNSAFE_IRQ) in ("1", "Y", "y")
    unsafe_param = (f.h.read(f"{f.h.sys}/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts") or "") in (
        "Y", "1")
    unsafe = unsafe_arg or unsafe_param
    on, off = grep_log(f.log, IR_ON), grep_log(f.log, IR_OFF)
    if on and not off:
        if unsafe:
            r.add("iommu.irq_remapping", "Interrupt remapping", WARN,
                  f"{on[0]}; but {UNSAFE_IRQ}=1 is set",
                  f"remove {UNSAFE_IRQ}=1: interrupt remapping is on, so it is not needed and only weakens "
                  "isolation between VMs and the host (`passthru prepare --apply` leaves it out)")
        else:
            r.add("iommu.irq_remapping", "Interrupt remapping", PASS,
                  f"{on[0]}; {UNSAFE_IRQ} is not needed")
        return
    if f.log is None:
        r.add("iommu.irq_remapping", "Interrupt remapping", SKIP, "kernel log not readable",
              unreadable_fix(f.h, "the kernel log (/dev/kmsg)", "or set kernel.dmesg_restrict=0"))
        return
    if unsafe:
        r.add("iommu.irq_remapping", "Interrupt remapping", WARN,
              f"no interrupt remapping; {UNSAFE_IRQ}=1 is set, so vfio works with weaker isolation",
              "enable interrupt remapping (x2APIC / IOMMU options) in the firmware if it offers it")
    else:
        r.add("iommu.irq_remapping", "Interrupt remapping", FAIL,
              "no interrupt remapping in the kernel log" + (f" ({off[0]})" if off else ""),
              f"vfio refuses devices without it: add {UNSAFE_IRQ}=1 "
              "(`passthru prepare --unsafe-interrupts --apply`) and reboot, or enable it in the firmware")


def _check_modules(r: Report, f: _Facts) -> None:
    missing = [m for m in VFIO_MODULES if m not in f.modules]
    if missing:
        r.add("vfio.loaded", "vfio modules loaded", FAIL, f"not loaded: {', '.join(missing)}",
              "`modprobe vfio-pci` now; `passthru prepare --apply` makes them load at boot")
    else:
        r.add("vfio.loaded", "vfio modules loaded", PASS, ", ".join(VFIO_MODULES))
    configured = boot_modules(f.h)
    ver = f.kernel.version
    need = list(VFIO_MODULES)
    old_kernel = ver is not None and ver < (6, 2)
    if old_kernel:
        need.append("vfio_virqfd")
    absent = [m for m in need if m not in configured]
    if absent:
        r.add("vfio.boot", "vfio modules load at boot", FAIL,
              f"not in modules-load.d: {', '.join(absent)}" + (" (vfio_virqfd is a separate module before 6.2)"
                                                               if "vfio_virqfd" in absent else ""),
              "run `passthru prepare --apply` (writes /etc/modules-load.d/vfio.conf)")
    elif not old_kernel and "vfio_virqfd" in configured and ver is not None:
        r.add("vfio.boot", "vfio modules load at boot", WARN,
              f"vfio_virqfd is listed in {configured['vfio_virqfd']} but kernel {f.kernel.release} merged it into "
              "vfio (6.2+): the load fails at every boot",
              f"remove vfio_virqfd from {configured['vfio_virqfd']} (`passthru prepare --apply` does)")
    else:
        srcs = sorted({configured[m] for m in need})
        r.add("vfio.boot", "vfio modules load at boot", PASS, f"{', '.join(need)} in {', '.join(srcs)}")


def _check_hugepages(r: Report, f: _Facts) -> None:
    pools = read_hugepages(f.h)
    system = [p for p in pools if p.node is None]
    configured = [p for p in system if p.total]
    if not system:
        r.add("memory.hugepages", "Hugepages", SKIP, "no hugepage support visible (/sys/kernel/mm/hugepages)")
        return
    per_node = [p for p in pools if p.node is not None and p.total]
    if configured:
        ev = ", ".join(f"{p.size_label}: {p.free}/{p.total} free" for p in configured)
        if per_node:
            ev += "; per node: " + ", ".join(f"node{p.node} {p.size_label} {p.free}/{p.total}" for p in per_node)
        r.add("memory.hugepages", "Hugepages", PASS, ev)
    else:
        r.add("memory.hugepages", "Hugepages", WARN,
              "no hugepages configured (" + ", ".join(p.size_label for p in system) + " supported)",
              "optional, recommended for VM memory: `passthru prepare --hugepages 1G:COUNT --apply` and reboot")


def _check_memlock(r: Report, f: _Facts) -> None:
    lim = read_memlock(f.h)
    if lim is None:
        r.add("memory.memlock", "Locked-memory limit", SKIP, "no /proc/self/limits")
        return
    total = read_memtotal_kib(f.h)
    if lim.soft is None:
        r.add("memory.memlock", "Locked-memory limit", PASS, f"unlimited ({lim.source})")
        return
    mib = lim.soft // (1 << 20)
    ev = f"RLIMIT_MEMLOCK {mib} MiB for processes started like this one ({lim.source})"
    if total is not None and lim.soft >= total * 1024:
        r.add("memory.memlock", "Locked-memory limit", PASS, ev)
    else:
        r.add("memory.memlock", "Locked-memory limit", WARN, ev + ": a VM with passthrough pins all its RAM",
              "libvirt raises it for its guests; for QEMU started by hand or by a service use `ulimit -l "
              "unlimited` / LimitMEMLOCK=infinity, or `memlock` in /etc/security/limits.d for the QEMU user")


def _check_host_gpu_drivers(r: Report, f: _Facts, selected: list[Device]) -> None:
    gpus = [d for d in selected if d.kind == "gpu"] if selected else []
    fighting = [d for d in gpus if d.fact.driver in HOST_GPU_DRIVERS]
    if fighting:
        names = ", ".join(f"{d.id} ({d.fact.driver})" for d in fighting)
        r.add("gpu.host_drivers", "Host graphics drivers", WARN, f"host drivers hold selected GPUs: {names}",
              "take them over with `passthru bind ADDRESS --group`; to keep nouveau off at boot use "
              "`passthru prepare --gpu --apply` (rdblacklist=nouveau nouveau.modeset=0)")
    elif "nouveau" in f.modules and any(d.kind == "gpu" and d.fact.vendor_id == 0x10DE for d in f.inv.devices):
        r.add("gpu.host_drivers", "Host graphics drivers", WARN, "nouveau is loaded on a host with NVIDIA GPUs",
              "`passthru prepare --gpu --apply` keeps it off at boot (rdblacklist=nouveau nouveau.modeset=0)")
    else:
        r.add("gpu.host_drivers", "Host graphics drivers", PASS,
              "no host graphics driver holds a selected GPU" if selected else "no GPU selected or nouveau loaded")


def _check_host_use(r: Report, f: _Facts, dev: Device) -> bool:
    """What the host uses the device (and its IOMMU group mates) for: what `passthru bind` would refuse. True when
    something there cannot be overridden (the bind stays refused until it is gone)."""
    from .host.usage import host_uses

    mates = [m.address for m in f.inv.group_mates(dev.id) if not m.is_bridge and not is_vfio_driver(m.driver)]
    uses = host_uses(f.h, [dev.id, *mates])
    found = [(a, u) for a in [dev.id, *mates] for u in uses.get(a, []) if u.what != "boot_vga"]
    if not found:
        r.add("device.host_use", "Not in use by the host", PASS,
              f"{dev.id}{' and its group mates' if mates else ''}: no mounts, swap, addresses, consoles or vGPUs",
              device=dev.id)
        return False
    hard = [(a, u) for a, u in found if u.override is None]
    ev = "; ".join(f"{a if a == dev.id else f'group mate {a}'}: {u.detail}" for a, u in found[:3])
    ev += f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    if any(u.what == "vgpus" for _, u in hard):
        fix = ("remove the vGPUs named (`passthru vgpu remove ID`; a VM using one loses it), or give VMs vGPUs of "
               "this GPU instead of the whole GPU (`passthru vgpu create`)")
    elif hard:
        fix = "stop that use first (unmount, swapoff, move the console), or pass through another device"
    else:
        fix = f"release it first, or `passthru bind {dev.id} {found[0][1].override}` if the host can lose it"
    r.add("device.host_use", "Not in use by the host", FAIL if hard else WARN, ev, fix, device=dev.id)
    return bool(hard)


def _check_device(r: Report, f: _Facts, dev: Device) -> None:
    if dev.bus != "pci":
        r.add("device.present", "Device present", PASS, f"{dev.id} ({dev.kind})", device=dev.id)
        return
    fn = dev.fact
    r.add("device.present", "Device present", PASS,
          f"{dev.id} {fn.ids} ({dev.kind}{', ' + dev.role if dev.role else ''})", device=dev.id)
    if fn.boot_vga:
        r.add("device.boot_vga", "Not the boot VGA", FAIL,
              f"{dev.id} is the GPU the firmware and console use (boot_vga=1)",
              "pass through another GPU, or move the console to another GPU / the BMC in the firmware setup",
              device=dev.id)
    blocked = not is_vfio_driver(fn.driver) and _check_host_use(r, f, dev)
    then = " once the host no longer uses it (device.host_use)" if blocked else ""
    if is_vfio_driver(fn.driver):
        r.add("device.driver", "Bound to vfio-pci", PASS, f"{dev.id} driver {fn.driver}", device=dev.id)
    else:
        r.add("device.driver", "Bound to vfio-pci", WARN,
              f"{dev.id} driver {fn.driver or 'none'}", f"`passthru bind {dev.id} --group`{then}", device=dev.id)
    if fn.iommu_group is None:
        r.add("device.group", "IOMMU group viable", FAIL, f"{dev.id} has no IOMMU group ({f.inv.iommu.message})",
              "enable the IOMMU first (see iommu.* checks)", device=dev.id)
        return
    mates = f.inv.group_mates(dev.id)
    viable, blockers, reason = group_verdict([fn, *mates])
    if viable:
        r.add("device.group", "IOMMU group viable", PASS, f"group {fn.iommu_group}: {reason}", device=dev.id)
        return
    others = [b for b in blockers if b != dev.id]
    companions = set(dev.companions)
    strangers = [b for b in others if b not in companions]
    status = WARN if not strangers else FAIL
    fix = (f"`passthru bind {dev.id} --group` moves the whole group ({', '.join(others or [dev.id])}) to vfio-pci"
           f"{then}" if not strangers else
           f"group {fn.iommu_group} also holds {', '.join(strangers)} which the host uses: bind them too "
           "(`--group`) if the host can spare them, or move the card to a slot with its own group (ACS)")
    from .host.isolation import why_group

    why = why_group(f.inv, fn.iommu_group)
    if why is not None and (why[0].causes or why[0].note or not why[0].isolated):
        e, iso = why
        reason += f"; {'isolated (one card): ' if e.isolated else 'shared because '}{e.text}"
        if iso is not None and strangers:
            fix += f"; to isolate: {iso.text}"
    r.add("device.group", "IOMMU group viable", status, f"group {fn.iommu_group}: {reason}", fix, device=dev.id)


def _check_isolation(r: Report, f: _Facts) -> None:
    """Groups that hold more than one card: which bridge or port joins them and why, and what would isolate."""
    if not f.inv.iommu.enabled:
        return
    from .host.isolation import shared_groups

    shared, total = shared_groups(f.inv)
    if not shared:
        r.add("iommu.isolation", "IOMMU groups isolate each card", PASS,
              f"{total} groups, each holds the functions of one card at most")
    for g, e, iso in shared:
        ends = [a for a in g.devices if not (fn := f.inv.pci_function(a)) or not fn.is_bridge]
        r.add("iommu.isolation", "IOMMU groups isolate each card", WARN,
              f"group {g.number} ({', '.join(ends)}) is shared: {e.text}", f"to isolate: {iso.text}" if iso else None)


# -- kind checks (kinds/*.py): what is special about a device of that kind (large BARs, companions, namespaces in
# use, hubs, a port held open, a PF's eswitch); ids gpu.*, nvme.*, usb.*, serial.*, sriov.*
def _check_kind(r: Report, f: _Facts, dev: Device) -> None:
    from .kinds import kind_for

    r.findings.extend(kind_for(dev.kind).checks(f.h, dev))


def _check_sriov(r: Report, f: _Facts) -> None:
    """Per SR-IOV PF with VFs: eswitch mode and representors; the Open vSwitch hw-offload step (kinds/nic_vf/)."""
    if not any(fn.sriov_numvfs for fn in f.inv.pci):
        return
    from .kinds.nic_vf import sriov_findings

    r.findings.extend(sriov_findings(f.h))


def run_doctor(h: HostRoot, devices: list[Device] | None = None, inv: Inventory | None = None,
               paths: Paths | None = None) -> Report:
    """All host checks, then device checks for ``devices`` (already resolved from what the operator typed).
    ``paths`` locates the state directory (prepare's reboot flag); without it the flag is not consulted."""
    inv = inv or discover(h)
    cpu = read_cpu(h)
    vendor, vendor_from = platform_vendor(h, cpu.vendor)
    facts = _Facts(h=h, cpu=cpu, kernel=read_kernel(h), cmdline=read_cmdline(h), log=kernel_log(h),
                   modules=loaded_modules(h), inv=inv, vendor=vendor, vendor_from=vendor_from)
    r = Report()
    _check_cpu(r, facts)
    _check_iommu(r, facts)
    _check_cmdline(r, facts)
    _check_reboot(r, facts, paths)
    _check_irq_remapping(r, facts)
    _check_modules(r, facts)
    from .doctor_initramfs import early_findings

    r.findings.extend(early_findings(h))
    _check_hugepages(r, facts)
    _check_memlock(r, facts)
    _check_host_gpu_drivers(r, facts, devices or [])
    _check_sriov(r, facts)
    _check_isolation(r, facts)
    for dev in devices or []:
        _check_device(r, facts, dev)
        _check_kind(r, facts, dev)
    return r
