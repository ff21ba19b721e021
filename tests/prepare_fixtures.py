"""Fake host roots for ``passthru prepare``: a SysfsBuilder host (/sys, /proc with the running command line and
CPU) plus the boot side — /etc/os-release, /etc/default/grub, BLS entries, systemd-boot's ESP, Proxmox's
proxmox-boot-tool, kernels in /boot and their modules, the initramfs tool — shaped like the distributions' own
installs. And a fake command runner that records calls and can fail.

    root = boot_host(tmp_path, "debian", efi=True, cpu="intel", kernel="6.8.0-45-generic")
    root = boot_host(tmp_path, "proxmox-zfs", pci=workstation)     # PCI devices from a SysfsBuilder callback
"""

from __future__ import annotations

import os
from pathlib import Path

from sysfs_builder import SysfsBuilder

__all__ = ["boot_host", "FakeRunner", "OS_RELEASE", "DEBIAN_GRUB", "RHEL_GRUB", "CENTOS_GRUB", "PROXMOX_GRUB",
           "snapshot", "KERNELS", "grubby_effect", "bls_options_of", "ITOOLS_MODULES_STOCK", "MODULES_ALIAS",
           "initramfs_effect"]

KERNELS = {(6, 1): "6.1.0-25-amd64", (6, 8): "6.8.0-45-generic"}
PVE_KERNEL = "6.8.12-4-pve"

OS_RELEASE = {
    "debian": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
              'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\nHOME_URL="https://www.debian.org/"\n',
    "ubuntu": 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION="24.04.1 LTS (Noble '
              'Numbat)"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n',
    "rhel": 'NAME="Red Hat Enterprise Linux"\nVERSION="9.4 (Plow)"\nID="rhel"\nID_LIKE="fedora"\n'
            'VERSION_ID="9.4"\nPLATFORM_ID="platform:el9"\n',
    "centos": 'NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n',
    "rocky": 'NAME="Rocky Linux"\nVERSION="9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
             'VERSION_ID="9.4"\n',
    "fedora": 'NAME="Fedora Linux"\nVERSION="40 (Server Edition)"\nID=fedora\nVERSION_ID=40\n',
    "arch": 'NAME="Arch Linux"\nPRETTY_NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\n',
    "gentoo": 'NAME=Gentoo\nID=gentoo\nPRETTY_NAME="Gentoo Linux"\n',
}

# Debian 12's /etc/default/grub as installed (with a GRUB_CMDLINE_LINUX_DEFAULT and commented examples)
DEBIAN_GRUB = """\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
# For full documentation of the options in this file, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""

# If your computer has multiple video cards, uncomment this to disable the graphical terminal
#GRUB_TERMINAL=console

# Uncomment to disable generation of recovery mode menu entries
#GRUB_DISABLE_RECOVERY="true"
"""

# RHEL 9's /etc/default/grub (BLS on)
RHEL_GRUB = """\
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR="$(sed 's, release .*$,,g' /etc/system-release)"
GRUB_DEFAULT=saved
GRUB_DISABLE_SUBMENU=true
GRUB_TERMINAL_OUTPUT="console"
GRUB_CMDLINE_LINUX="crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/rhel-swap \
rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap"
GRUB_DISABLE_RECOVERY="true"
GRUB_ENABLE_BLSCFG=true
"""

# CentOS 7's (no BLS)
CENTOS_GRUB = """\
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR="$(sed 's, release .*$,,g' /etc/system-release)"
GRUB_DEFAULT=saved
GRUB_DISABLE_SUBMENU=true
GRUB_TERMINAL_OUTPUT="console"
GRUB_CMDLINE_LINUX="crashkernel=auto rd.lvm.lv=centos/root rd.lvm.lv=centos/swap rhgb quiet"
GRUB_DISABLE_RECOVERY="true"
"""

# Proxmox VE 8's /etc/default/grub (Debian's, another distributor); ZFS on BIOS adds root= to GRUB_CMDLINE_LINUX
PROXMOX_GRUB = """\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
# For full documentation of the options in this file, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR="Proxmox VE"
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""
"""

# Debian's /etc/initramfs-tools/modules as installed
ITOOLS_MODULES_STOCK = """\
# List of modules that you want to include in your initramfs.
# They will be loaded at boot time in the order below.
#
# Syntax:  module_name [args ...]
#
# You must run update-initramfs(8) to effect this change.
#
# Examples:
#
# raid1
# sd_mod
"""

# a few real lines of a kernel's modules.alias (PCI ids and class matches, and vfio-pci's driver_override alias)
MODULES_ALIAS = """\
# Aliases extracted from modules themselves.
alias pci:v*d*sv*sd*bc04sc03i00* snd_hda_intel
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau
alias pci:v000012D2d*sv*sd*bc03sc*i* nouveau
alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci
alias pci:v00008086d00003E92sv*sd*bc03sc*i* i915
"""
MODULES_BUILTIN = "kernel/drivers/tty/serial/8250/8250.ko\nkernel/drivers/pci/pcie/portdrv.ko\n"
VFIO_BUILTIN = "kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/pci/vfio-pci-core.ko\nkernel/drivers/vfio/pci/vfio-pci.ko\n"

MACHINE_ID = "3f2a9c0d5e6b4a718293a4b5c6d7e8f9"


def _put(root: Path, host_path: str, text: str | bytes, mode: int = 0o644) -> Path:
    p = root / host_path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        p.write_text(text)
    else:
        p.write_bytes(text)
    os.chmod(p, mode)
    return p


def _bls_entry(kernel: str, options: str) -> str:
    return (f"title Red Hat Enterprise Linux (5.14.0-{kernel}) 9.4 (Plow)\nversion {kernel}\n"
            f"linux /vmlinuz-{kernel}\ninitrd /initramfs-{kernel}.img $tuned_initrd\n"
            f"options {options}\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class rhel\n")


def boot_host(tmp: Path, kind: str, *, efi: bool = True, cpu: str = "intel", kernel: str = "6.8.0-45-generic",
              grub: str | None = None, cmdline: str | None = None, kernel_cmdline: str | None = None,
              bls_options: str | None = None, kernels: tuple[str, ...] | None = None, meminfo_gib: int | None = 64,
              boot_id: str | None = None, name: str = "host", pci=None, initramfs: str | None = "auto",
              vfio_builtin: bool = False) -> Path:
    """A fake host root. ``kind``: "debian" / "ubuntu" (GRUB, update-grub), "rhel-bls" (RHEL 9: BLS entries,
    grubby), "centos" (CentOS 7 classic GRUB), "systemd-boot" (Debian with systemd-boot on /boot/efi),
    "proxmox-zfs" (PVE 8 on ZFS: proxmox-boot-tool with systemd-boot on UEFI, GRUB on BIOS), "proxmox" (PVE 8 on
    ext4/LVM: plain GRUB), "unknown" (no boot loader files). ``grub``: /etc/default/grub text (None: the
    distribution's). ``pci``: called with the SysfsBuilder to add devices before it builds. ``initramfs``: "auto"
    (the distribution's tool: initramfs-tools or dracut, with each kernel's modules and image), None (no tool),
    or "initramfs-tools" / "dracut". ``vfio_builtin``: vfio-pci compiled into the kernels (modules.builtin)."""
    root = Path(tmp) / name
    b = SysfsBuilder(root, auto_groups=pci is not None)
    b.iommu("intel" if cpu == "intel" else "amd")
    if cmdline is None:
        cmdline = f"BOOT_IMAGE=/boot/vmlinuz-{kernel} root=UUID=5d4c1c9e-8a63-4a43-b1f4-7f0e2b9b8f11 ro quiet"
    b.proc(cmdline, cpu_vendor="GenuineIntel" if cpu == "intel" else "AuthenticAMD")
    if pci:
        pci(b)
    b.build()
    _put(root, "/proc/sys/kernel/osrelease", kernel + "\n")
    if meminfo_gib:
        _put(root, "/proc/meminfo", f"MemTotal:       {meminfo_gib * 1024 * 1024} kB\nMemFree:        1024000 kB\n")
    if boot_id:
        _put(root, "/proc/sys/kernel/random/boot_id", boot_id + "\n")
    if efi:
        _put(root, "/sys/firmware/efi/fw_platform_size", "64\n")
    kernels = kernels or (kernel,)
    distro = {"rhel-bls": "rhel", "systemd-boot": "debian", "unknown": "gentoo", "proxmox-zfs": "debian",
              "proxmox": "debian"}.get(kind, kind)
    _put(root, "/etc/os-release", OS_RELEASE[distro])
    if initramfs == "auto":
        initramfs = {"debian": "initramfs-tools", "rhel": "dracut", "centos": "dracut"}.get(distro)
        initramfs = initramfs if kind != "ubuntu" else "initramfs-tools"
    if kind in ("proxmox-zfs", "proxmox"):
        _put(root, "/etc/default/grub", grub if grub is not None else PROXMOX_GRUB.replace(
            'GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="root=ZFS=rpool/ROOT/pve-1 boot=zfs"')
            if kind == "proxmox-zfs" and not efi else PROXMOX_GRUB)
        _put(root, "/usr/sbin/proxmox-boot-tool", "#!/bin/sh\n", 0o755)
        for k in kernels:
            _put(root, f"/boot/vmlinuz-{k}", b"\x7fkernel", 0o644)
        if kind == "proxmox-zfs":
            # two mirrored disks, one ESP each; the installer writes /etc/kernel/cmdline for systemd-boot
            _put(root, "/etc/kernel/proxmox-boot-uuids", "4A2C-1F3B\n4A2C-9D07\n")
            if efi:
                _put(root, "/etc/kernel/cmdline", kernel_cmdline or "root=ZFS=rpool/ROOT/pve-1 boot=zfs\n")
    elif kind in ("debian", "ubuntu"):
        _put(root, "/etc/default/grub", DEBIAN_GRUB if grub is None else grub)
        for k in kernels:
            _put(root, f"/boot/vmlinuz-{k}", b"\x7fkernel", 0o600)
            _put(root, f"/boot/initrd.img-{k}", b"initrd", 0o600)
        if efi:
            _put(root, f"/boot/efi/EFI/{distro}/grubx64.efi", b"grub")
    elif kind == "rhel-bls":
        _put(root, "/etc/default/grub", RHEL_GRUB if grub is None else grub)
        _put(root, "/usr/sbin/grubby", "#!/bin/sh\n", 0o755)
        opts = bls_options or ("root=/dev/mapper/rhel-root ro crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M "
                               "resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap")
        for k in kernels:
            _put(root, f"/boot/loader/entries/{MACHINE_ID}-{k}.conf", _bls_entry(k, opts))
            _put(root, f"/boot/vmlinuz-{k}", b"\x7fkernel", 0o755)
        _put(root, "/boot/grub2/grubenv", "# GRUB Environment Block\nsaved_entry=" + MACHINE_ID + "-" + kernels[0]
             + "\nboot_success=0\n" + "#" * 900 + "\n")
        if efi:
            _put(root, "/boot/efi/EFI/redhat/grub.cfg",
                 "search --no-floppy --root-dev-only --fs-uuid --set=dev 1c5bd7d3-a5e8-4b44-9a2f-0e8fa4d12f10\n"
                 "set prefix=($dev)/grub2\nexport $prefix\nconfigfile $prefix/grub.cfg\n")
    elif kind == "centos":
        _put(root, "/etc/default/grub", CENTOS_GRUB if grub is None else grub)
        for k in kernels:
            _put(root, f"/boot/vmlinuz-{k}", b"\x7fkernel", 0o755)
        if efi:
            _put(root, "/boot/efi/EFI/centos/grubx64.efi", b"grub")
    elif kind == "systemd-boot":
        if kernel_cmdline is not None:
            _put(root, "/etc/kernel/cmdline", kernel_cmdline)
        _put(root, "/boot/efi/loader/loader.conf", "timeout 3\neditor no\n")
        _put(root, "/boot/efi/EFI/systemd/systemd-bootx64.efi", b"sd-boot")
        for k in kernels:
            _put(root, f"/boot/vmlinuz-{k}", b"\x7fkernel", 0o600)
            _put(root, f"/boot/initrd.img-{k}", b"initrd", 0o600)
            _put(root, f"/boot/efi/loader/entries/{MACHINE_ID}-{k}.conf",
                 f"title Debian GNU/Linux 12 (bookworm)\nversion {k}\nmachine-id {MACHINE_ID}\n"
                 f"options {cmdline}\nlinux /{MACHINE_ID}/{k}/linux\ninitrd /{MACHINE_ID}/{k}/initrd.img-{k}\n")
    elif kind != "unknown":
        raise ValueError(f"unknown host kind {kind!r}")
    if initramfs:
        _initramfs_tool(root, initramfs, kernels, vfio_builtin)
    return root


def _initramfs_tool(root: Path, tool: str, kernels: tuple[str, ...], vfio_builtin: bool) -> None:
    """The initramfs tool's programs and configuration, and per kernel its modules directory (modules.alias,
    modules.builtin) and its image in /boot (initramfs-tools: initrd.img-K; dracut: initramfs-K.img)."""
    if tool == "initramfs-tools":
        _put(root, "/usr/sbin/update-initramfs", "#!/bin/sh\n", 0o755)
        _put(root, "/usr/sbin/mkinitramfs", "#!/bin/sh\n", 0o755)
        _put(root, "/etc/initramfs-tools/initramfs.conf", "MODULES=most\nBUSYBOX=auto\nCOMPRESS=zstd\n")
        _put(root, "/etc/initramfs-tools/modules", ITOOLS_MODULES_STOCK)
    else:
        _put(root, "/usr/bin/dracut", "#!/bin/bash\n", 0o755)
        _put(root, "/etc/dracut.conf", "# PUT YOUR CONFIG IN separate files\n# in /etc/dracut.conf.d named \"<name>.conf\"\n")
        (root / "etc/dracut.conf.d").mkdir(parents=True, exist_ok=True)
    for k in kernels:
        _put(root, f"/lib/modules/{k}/modules.alias", MODULES_ALIAS)
        _put(root, f"/lib/modules/{k}/modules.builtin", MODULES_BUILTIN + (VFIO_BUILTIN if vfio_builtin else ""))
        img = root / ("boot/initrd.img-" + k if tool == "initramfs-tools" else f"boot/initramfs-{k}.img")
        if not img.exists():
            _put(root, "/" + str(img.relative_to(root)), b"initrd", 0o600)
        os.utime(img, (1_600_000_000, 1_600_000_000))  # built long before any test writes configuration


def initramfs_effect(root: Path, then=None):
    """A stand-in for ``update-initramfs -u -k all`` / ``dracut -f --regenerate-all``: every kernel's image in
    /boot is rewritten now (what the rebuild does to the files the plan compares). ``then``: another effect."""
    def effect(argv: list[str]) -> None:
        if argv[0] in ("update-initramfs", "dracut"):
            for img in list((Path(root) / "boot").glob("initrd.img-*")) + list((Path(root) / "boot").glob("initramfs-*.img")):
                img.write_bytes(b"initrd rebuilt")
        elif then:
            then(argv)
    return effect


def snapshot(root: Path, skip: tuple[str, ...] = ("var/lib/passthru",)) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (target) under ``root``, to compare a tree byte for byte."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            dirnames[:] = []
            continue
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            key = os.path.normpath(os.path.join(rel, n))
            if os.path.islink(p):
                out[key] = "-> " + os.readlink(p)
            else:
                st = os.stat(p)
                if st.st_mode & 0o444 == 0:  # write-only sysfs attributes
                    out[key] = f"mode {st.st_mode & 0o7777:o}"
                    continue
                with open(p, "rb") as f:
                    out[key] = f.read() + f"\nmode {st.st_mode & 0o7777:o}".encode()
    return out


class FakeRunner:
    """Records every command; ``fail`` maps a program name (argv[0]) to (returncode, stderr), or to an exception
    instance to raise (FileNotFoundError, TimeoutError); ``effect`` is called with argv before returning, to
    simulate what a command changes."""

    def __init__(self, fail: dict | None = None, effect=None) -> None:
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []
        self.fail = fail or {}
        self.effect = effect

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
        self.calls.append(list(argv))
        self.timeouts.append(timeout)
        outcome = self.fail.get(argv[0])
        if isinstance(outcome, BaseException):
            raise outcome
        if self.effect:
            self.effect(argv)
        if outcome:
            rc, err = outcome
            return rc, "", err
        return 0, "", ""


def bls_options_of(root: Path) -> dict[str, str]:
    """entry file name -> its options line."""
    d = Path(root) / "boot/loader/entries"
    out = {}
    for p in sorted(d.glob("*.conf")):
        for line in p.read_text().splitlines():
            if line.startswith("options "):
                out[p.name] = line[len("options "):]
    return out


def grubby_effect(root: Path):
    """A stand-in for grubby-bls's ``--update-kernel=ALL --args=... --remove-args=...`` on the fixture's BLS
    entries, as its manual describes it: the removed arguments go, then each added argument replaces any argument
    with the same name and is appended."""
    def effect(argv: list[str]) -> None:
        if argv[0] != "grubby":
            return
        adds = next((a.split("=", 1)[1].split() for a in argv if a.startswith("--args=")), [])
        removes = next((a.split("=", 1)[1].split() for a in argv if a.startswith("--remove-args=")), [])
        assert "--update-kernel=ALL" in argv
        for p in sorted((Path(root) / "boot/loader/entries").glob("*.conf")):
            lines = p.read_text().splitlines(keepends=True)
            for i, line in enumerate(lines):
                if line.startswith("options "):
                    toks = [t for t in line.split()[1:] if t not in removes]
                    for a in adds:
                        key = a.split("=", 1)[0]
                        toks = [t for t in toks if t.split("=", 1)[0] != key] + [a]
                    lines[i] = "options " + " ".join(toks) + "\n"
            p.write_text("".join(lines))
    return effect
