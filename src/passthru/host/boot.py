"""Boot facts, read-only: firmware mode, distribution, which boot loader owns the kernel command line, and the
commands that rebuild the boot menu from the files passthru edits. ``passthru prepare`` (``passthru/prepare/``)
is the only writer of boot configuration; this module never changes anything.

Boot loader detection, first match wins (host paths, all read through the HostRoot):

1. ``systemd-boot``: the host booted in UEFI mode (``/sys/firmware/efi`` exists) and one of the places the ESP or
   XBOOTLDR partition is mounted (``/efi``, ``/boot/efi``, ``/boot``) holds ``loader/loader.conf`` or
   ``EFI/systemd/`` (what ``bootctl install`` creates); or UEFI, ``/etc/kernel/cmdline`` present and neither
   ``/etc/default/grub`` nor BLS entries (a capture, which carries /etc but not /boot).
   ``/etc/kernel/cmdline`` alone is not enough: RHEL/Fedora GRUB hosts' ``kernel-install`` reads it too.
2. ``bls`` (RHEL 8+/Fedora GRUB with Boot Loader Spec entries): ``/boot/loader/entries/*.conf`` exist and grubby
   is the tool (``/usr/sbin/grubby``, ``/sbin/grubby`` or ``/usr/bin/grubby``, or ``GRUB_ENABLE_BLSCFG=true`` in
   ``/etc/default/grub`` for captures, which carry no binaries).
3. ``grub``: ``/etc/default/grub`` exists.
4. ``None``: unknown; ``passthru prepare`` then says which arguments to add by hand.

Before all of these: a Proxmox host whose ESPs ``proxmox-boot-tool`` keeps in sync (``passthru/host/proxmox.py``)
is ``systemd-boot`` (UEFI with ``/etc/kernel/cmdline``) or else ``grub``, and ``proxmox-boot-tool refresh`` is the
command that regenerates (its ESPs are not mounted, so the rules above would misread it).

Distribution family from ``/etc/os-release`` (or ``/usr/lib/os-release``) ``ID`` and ``ID_LIKE``: ``debian``
(debian, ubuntu), ``rhel`` (rhel, fedora, centos), ``suse``, ``arch``.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from .proxmox import PROXMOX_REFRESH, proxmox_esps
from .root import HostRoot

__all__ = ["BootInfo", "KernelImage", "GrubVar", "read_boot", "parse_os_release", "split_args", "arg_key",
           "find_grub_var", "grub_var_args", "grub_d_overrides", "bls_options", "read_proc_cmdline", "configured_args",
           "read_text", "ESP_MOUNTS",
           "GRUB_DEFAULT", "KERNEL_CMDLINE", "BLS_DIR"]

GRUB_DEFAULT = "/etc/default/grub"
GRUB_DEFAULT_D = "/etc/default/grub.d"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
BLS_DIR = "/boot/loader/entries"
GRUBENV = "/boot/grub2/grubenv"
ESP_MOUNTS = ("/efi", "/boot/efi", "/boot")
GRUBBY = ("/usr/sbin/grubby", "/sbin/grubby", "/usr/bin/grubby")
_FAMILIES = (("debian", ("debian", "ubuntu")), ("rhel", ("rhel", "fedora", "centos")),
             ("suse", ("suse", "opensuse", "sles")), ("arch", ("arch",)))
_EFI_DIR_NAMES = {"rhel": "redhat", "ol": "redhat"}  # distro ID -> directory under /boot/efi/EFI when they differ
_WS = " \t\n\r\v\f"


def read_text(h: HostRoot, host_path: str) -> str | None:
    """A whole file as text, byte-exact (undecodable bytes survive a round trip), or None when missing/unreadable."""
    data = h.read_bytes(h.path(host_path))
    return None if data is None else data.decode("utf-8", "surrogateescape")


# -- kernel command-line tokens ------------------------------------------------------------------------------
def split_args(text: str, escaped_quotes: bool = False) -> list[str]:
    """Kernel arguments the way the kernel splits them: whitespace separates, except inside double quotes
    (``foo="a b"`` is one argument). With ``escaped_quotes`` the text is the inside of a shell double-quoted string,
    where a kernel quote is written ``\\"``; tokens keep their source spelling either way."""
    out: list[str] = []
    cur: list[str] = []
    inq = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if escaped_quotes and c == "\\" and i + 1 < n:
            if text[i + 1] == '"':
                inq = not inq
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == '"' and not escaped_quotes:
            inq = not inq
        elif c in _WS and not inq:
            if cur:
                out.append("".join(cur))
                cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur))
    return out


def arg_key(token: str) -> str:
    """The parameter name of ``key=value`` (or a bare flag); the kernel treats '-' and '_' in names alike."""
    return token.split("=", 1)[0].replace("-", "_")


def read_proc_cmdline(h: HostRoot) -> list[str] | None:
    """The running kernel's arguments, or None when /proc/cmdline is unreadable."""
    text = h.read(h.proc + "/cmdline")
    return None if text is None else split_args(text)


# -- /etc/default/grub ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GrubVar:
    """One ``NAME=value`` assignment line of a shell-style GRUB defaults file.

    ``quote`` is '"', "'" or "" (unquoted); ``value`` is the source text between the quotes (escapes kept);
    ``prefix`` is everything before the value (indentation, ``export``, ``NAME=``), ``suffix`` what follows the
    closing quote (spaces, a comment), ``eol`` the line ending. ``problem`` is set when the line is not a single
    plain value passthru can rewrite safely (a value continued on the next line, concatenated quoting,
    backslashes or quotes in an unquoted word, a command after the value)."""

    index: int  # line number, 0-based
    prefix: str
    quote: str
    value: str
    suffix: str
    eol: str
    problem: str | None = None

    def args(self) -> list[str]:
        return split_args(self.value, escaped_quotes=self.quote == '"')

    def render(self, value: str, quote: str | None = None) -> str:
        q = self.quote if quote is None else quote
        return f"{self.prefix}{q}{value}{q}{self.suffix}{self.eol}"


def _assign_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^([ \t]*(?:export[ \t]+)?{re.escape(name)}=)(.*)$")


def _parse_assignment(index: int, line: str, m: re.Match[str]) -> GrubVar:
    eol = line[len(line.rstrip("\r\n")):]
    prefix, rest = m.group(1), m.group(2).rstrip("\r\n")
    if rest[:1] in ('"', "'"):
        q = rest[0]
        i = 1
        while i < len(rest):
            c = rest[i]
            if q == '"' and c == "\\":
                i += 2
                continue
            if c == q:
                break
            i += 1
        if i >= len(rest):
            return GrubVar(index, prefix, q, rest[1:], "", eol, "the value continues on the next line")
        value, suffix = rest[1:i], rest[i + 1:]
    else:
        q = ""
        j = 0
        while j < len(rest) and rest[j] not in _WS:
            j += 1
        value, suffix = rest[:j], rest[j:]
        if any(c in value for c in "\\\"'`"):
            return GrubVar(index, prefix, q, value, suffix, eol, "the unquoted value has quotes or backslashes")
    if not re.fullmatch(r"[ \t]*(#.*)?", suffix):
        return GrubVar(index, prefix, q, value, suffix, eol, "more follows the value on the same line")
    if q != "'" and ("`" in value or "$(" in value):
        return GrubVar(index, prefix, q, value, suffix, eol, "the value runs a command")
    return GrubVar(index, prefix, q, value, suffix, eol)


def find_grub_var(text: str, name: str) -> GrubVar | None:
    """The last assignment of ``name`` in a GRUB defaults file (the one that wins when grub-mkconfig sources it),
    or None when there is none."""
    pat = _assign_re(name)
    found = None
    for i, line in enumerate(text.splitlines(keepends=True)):
        m = pat.match(line.rstrip("\r\n"))
        if m:
            found = _parse_assignment(i, line, m)
    return found


def grub_var_args(text: str | None, name: str) -> list[str] | None:
    """The kernel arguments in ``name`` (GRUB_CMDLINE_LINUX...), None when unset or unparseable."""
    if text is None:
        return None
    var = find_grub_var(text, name)
    return None if var is None or var.problem else var.args()


def _grub_bool(text: str | None, name: str) -> bool:
    if text is None:
        return False
    var = find_grub_var(text, name)
    return var is not None and var.problem is None and var.value.strip().lower() == "true"


# -- os-release -----------------------------------------------------------------------------------------------
def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of os-release(5); values unquoted."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
            value = parts[0] if len(parts) == 1 else " ".join(parts)
        except ValueError:
            value = value.strip("\"'")
        out[key.strip()] = value
    return out


# -- kernels and BLS entries ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KernelImage:
    version: str
    image: str  # host path
    initrd: str | None  # host path, when one is passed to kernel-install


def _natural(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def _kernels(h: HostRoot, family: str | None, running: str | None) -> tuple[KernelImage, ...]:
    """Installed kernels: /boot/vmlinuz-VERSION (Debian layout, initrd /boot/initrd.img-VERSION or Fedora's
    /boot/initramfs-VERSION.img), else /usr/lib/modules/VERSION/vmlinuz, else the running kernel (a capture)."""
    out = []
    for name in h.listdir(h.boot):
        if not name.startswith("vmlinuz-") or name.endswith((".old", ".bak", ".dpkg-tmp")):
            continue
        p = f"{h.boot}/{name}"
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        ver = name[len("vmlinuz-"):]
        initrd = next((i for i in (f"/boot/initrd.img-{ver}", f"/boot/initramfs-{ver}.img")
                       if h.exists(h.path(i))), None)
        out.append(KernelImage(ver, f"/boot/{name}", initrd))
    if not out:
        for base in ("/usr/lib/modules", "/lib/modules"):
            for ver in h.listdir(h.path(base)):
                if h.exists(h.path(f"{base}/{ver}/vmlinuz")):
                    out.append(KernelImage(ver, f"{base}/{ver}/vmlinuz", None))
            if out:
                break
    if not out and running:
        if family == "debian" or family is None:
            out.append(KernelImage(running, f"/boot/vmlinuz-{running}", f"/boot/initrd.img-{running}"))
        else:
            out.append(KernelImage(running, f"/usr/lib/modules/{running}/vmlinuz", None))
    return tuple(sorted(out, key=lambda k: _natural(k.version)))


def bls_options(h: HostRoot, entry: str) -> list[str] | None:
    """The kernel arguments of one BLS entry (all ``options`` lines), ``$kernelopts`` expanded from grubenv
    (RHEL 8); None when the entry is unreadable."""
    text = read_text(h, entry)
    if text is None:
        return None
    args: list[str] = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "options":
            args += split_args(value)
    if "$kernelopts" in args:
        env = read_text(h, GRUBENV) or ""
        m = re.search(r"^kernelopts=(.*)$", env, re.M)
        i = args.index("$kernelopts")
        args[i:i + 1] = split_args(m.group(1)) if m else []
    return args


# -- the whole picture ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BootInfo:
    efi: bool
    distro_id: str | None
    distro_like: tuple[str, ...]
    family: str | None  # "debian" | "rhel" | "suse" | "arch" | None
    loader: str | None  # "grub" | "bls" | "systemd-boot" | None
    reason: str  # one line: why this loader
    grub_default: str | None  # "/etc/default/grub" when present
    grub_cfg: str | None  # the generated GRUB menu (loader "grub"), None when unknown
    kernel_cmdline: str | None  # "/etc/kernel/cmdline" when present
    bls_entries: tuple[str, ...]  # /boot/loader/entries/*.conf (loader "bls")
    esp: str | None  # systemd-boot: the mount point holding the loader
    kernels: tuple[KernelImage, ...]  # systemd-boot: kernels kernel-install regenerates entries for
    running_kernel: str | None
    regenerate: tuple[tuple[str, ...], ...]  # commands that rebuild the menu from the edited files; () = none known
    proxmox: bool = False  # proxmox-boot-tool keeps the ESPs in sync (regenerate is its refresh)

    def to_json(self) -> dict:
        return {
            "loader": self.loader, "reason": self.reason, "efi": self.efi, "distro_id": self.distro_id,
            "distro_like": list(self.distro_like), "family": self.family, "grub_default": self.grub_default,
            "grub_cfg": self.grub_cfg, "kernel_cmdline": self.kernel_cmdline, "bls_entries": list(self.bls_entries),
            "esp": self.esp, "running_kernel": self.running_kernel,
            "regenerate": [list(c) for c in self.regenerate], "proxmox_boot_tool": self.proxmox,
        }


def _family(ids: tuple[str, ...]) -> str | None:
    for fam, names in _FAMILIES:
        if any(i in names for i in ids):
            return fam
    return None


def _rhel_grub_cfg(h: HostRoot, distro_id: str | None, efi: bool) -> str:
    """Where grub2-mkconfig writes on a RHEL-like host. BIOS: /boot/grub2/grub.cfg. UEFI: the distribution's
    /boot/efi/EFI/<dir>/grub.cfg (CentOS 7: EFI/centos), unless that file is the small stub of RHEL 9 / Fedora 34+
    that only ``configfile``s /boot/grub2/grub.cfg: overwriting the stub would break booting, so then the real
    config in /boot/grub2 is regenerated."""
    if not efi:
        return "/boot/grub2/grub.cfg"
    want = _EFI_DIR_NAMES.get(distro_id or "", distro_id or "")
    found = [d for d in h.listdir(h.path("/boot/efi/EFI"))
             if d.upper() != "BOOT" and h.exists(h.path(f"/boot/efi/EFI/{d}/grub.cfg"))]
    name = want if want in found or not found else found[0] if len(found) == 1 else want
    if not name:
        return "/boot/grub2/grub.cfg"
    path = f"/boot/efi/EFI/{name}/grub.cfg"
    text = read_text(h, path)
    if text is not None and len(text) < 4096 and "configfile" in text and "menuentry" not in text:
        return "/boot/grub2/grub.cfg"
    return path


def _grub_regenerate(h: HostRoot, family: str | None, distro_id: str | None,
                     efi: bool) -> tuple[tuple[tuple[str, ...], ...], str | None]:
    if family == "debian":
        return (("update-grub",),), "/boot/grub/grub.cfg"
    if family == "rhel":
        cfg = _rhel_grub_cfg(h, distro_id, efi)
        return (("grub2-mkconfig", "-o", cfg),), cfg
    if family == "suse":
        return (("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"),), "/boot/grub2/grub.cfg"
    if family == "arch":
        return (("grub-mkconfig", "-o", "/boot/grub/grub.cfg"),), "/boot/grub/grub.cfg"
    for tool, cfg in (("grub2-mkconfig", "/boot/grub2/grub.cfg"), ("grub-mkconfig", "/boot/grub/grub.cfg")):
        if h.exists(h.path(cfg)):
            return ((tool, "-o", cfg),), cfg
    return (), None


def read_boot(h: HostRoot) -> BootInfo:
    """How this host boots (see the module docstring for the rules)."""
    efi = h.isdir(h.sys + "/firmware/efi")
    rel = read_text(h, "/etc/os-release") or read_text(h, "/usr/lib/os-release") or ""
    osr = parse_os_release(rel)
    distro_id = osr.get("ID", "").lower() or None
    like = tuple(w.lower() for w in osr.get("ID_LIKE", "").split())
    family = _family(((distro_id,) if distro_id else ()) + like)
    running = h.read(h.proc + "/sys/kernel/osrelease") or None
    grub_default = GRUB_DEFAULT if h.exists(h.path(GRUB_DEFAULT)) else None
    kcmd = KERNEL_CMDLINE if h.exists(h.path(KERNEL_CMDLINE)) else None
    entries = tuple(f"{BLS_DIR}/{n}" for n in h.listdir(h.path(BLS_DIR)) if n.endswith(".conf"))
    grubby = next((p for p in GRUBBY if h.exists(h.path(p))), None)

    esp = None
    if efi:
        for mnt in ESP_MOUNTS:
            if h.exists(h.path(f"{mnt}/loader/loader.conf")) or h.isdir(h.path(f"{mnt}/EFI/systemd")):
                esp = mnt
                break
    loader: str | None = None
    grub_cfg = None
    regen: tuple[tuple[str, ...], ...] = ()
    kernels: tuple[KernelImage, ...] = ()
    pve = proxmox_esps(h)
    pve = pve if pve and (grub_default or (efi and kcmd)) else ()
    if pve:
        sdboot = bool(efi and kcmd)
        loader = "systemd-boot" if sdboot else "grub"
        reason = (f"proxmox-boot-tool keeps {len(pve)} ESP(s) in sync; "
                  + (f"UEFI with {KERNEL_CMDLINE}: systemd-boot" if sdboot else f"GRUB ({GRUB_DEFAULT})"))
        regen = (PROXMOX_REFRESH,)
    elif esp is not None or (efi and kcmd and not grub_default and not entries):
        loader = "systemd-boot"
        reason = (f"UEFI with systemd-boot in {esp}" if esp else
                  f"UEFI with {KERNEL_CMDLINE} and no GRUB configuration")
        kernels = _kernels(h, family, running)
        regen = tuple(("kernel-install", "add", k.version, k.image) + ((k.initrd,) if k.initrd else ())
                      for k in kernels)
    elif entries and (grubby or _grub_bool(read_text(h, GRUB_DEFAULT) if grub_default else None,
                                            "GRUB_ENABLE_BLSCFG")):
        loader = "bls"
        reason = (f"{len(entries)} Boot Loader Spec entries in {BLS_DIR} managed by "
                  + (grubby or "grubby (GRUB_ENABLE_BLSCFG=true)"))
    elif grub_default:
        loader = "grub"
        regen, grub_cfg = _grub_regenerate(h, family, distro_id, efi)
        reason = f"GRUB ({GRUB_DEFAULT})"
    else:
        reason = f"found no {GRUB_DEFAULT}, BLS entries or systemd-boot"
    return BootInfo(efi=efi, distro_id=distro_id, distro_like=like, family=family, loader=loader, reason=reason,
                    grub_default=grub_default, grub_cfg=grub_cfg, kernel_cmdline=kcmd,
                    bls_entries=entries if loader == "bls" else (), esp=esp, kernels=kernels,
                    running_kernel=running, regenerate=regen, proxmox=bool(pve))


def grub_d_overrides(h: HostRoot) -> list[str]:
    """Files in /etc/default/grub.d that set GRUB_CMDLINE_LINUX without keeping the value from
    /etc/default/grub (grub-mkconfig sources them after it, so they win)."""
    out = []
    pat = _assign_re("GRUB_CMDLINE_LINUX")
    for name in h.listdir(h.path(GRUB_DEFAULT_D)):
        if not name.endswith(".cfg"):
            continue
        text = read_text(h, f"{GRUB_DEFAULT_D}/{name}") or ""
        for line in text.splitlines():
            m = pat.match(line)
            if m and "$GRUB_CMDLINE_LINUX" not in m.group(2) and "${GRUB_CMDLINE_LINUX}" not in m.group(2):
                out.append(f"{GRUB_DEFAULT_D}/{name}")
                break
    return out


def configured_args(h: HostRoot, info: BootInfo | None = None) -> list[str] | None:
    """The kernel arguments the boot configuration will give the next boot, as far as passthru manages them:
    GRUB_CMDLINE_LINUX + GRUB_CMDLINE_LINUX_DEFAULT (grub), /etc/kernel/cmdline (systemd-boot), the running
    kernel's BLS entry or else the first one (bls). None when unknown. Compare with :func:`read_proc_cmdline`."""
    info = info or read_boot(h)
    if info.loader == "grub":
        text = read_text(h, GRUB_DEFAULT)
        base = grub_var_args(text, "GRUB_CMDLINE_LINUX")
        if base is None:
            return None
        return base + (grub_var_args(text, "GRUB_CMDLINE_LINUX_DEFAULT") or [])
    if info.loader == "systemd-boot":
        text = read_text(h, KERNEL_CMDLINE)
        return None if text is None else split_args(text)
    if info.loader == "bls" and info.bls_entries:
        pick = next((e for e in info.bls_entries if info.running_kernel and e.endswith(f"{info.running_kernel}.conf")),
                    info.bls_entries[0])
        return bls_options(h, pick)
    return None
