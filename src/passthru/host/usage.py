"""What the host itself uses a PCI function for: the safety guards of ``passthru bind``.

Binding a function to vfio-pci takes it away from the host. :func:`host_uses` lists, per function, every reason not
to, read-only from sysfs and procfs:

- ``mount`` / ``swap`` / ``holder``: a block device on the function (disk, partition, NVMe namespace) is mounted,
  is active swap, or has a holder (device-mapper, MD RAID, bcache built on it). Mounts and swap on a stacked device
  (LVM on MD on partitions, LUKS, multipath) are traced down ``slaves/`` to every function under them.
- ``netdev``: an interface of the function has an IPv4 route or a non-link-local IPv6 address, or sits under a
  bond, bridge, team or VLAN that has (``master``/``upper_*`` links, recursively; for an Open vSwitch port, the
  other interfaces of ``ovs-system``). Overridable with ``--force-netdev``.
- ``console``: a kernel console (``console_ttys``) runs on a tty of the function. Never overridable - except the
  virtual-terminal console (tty0...), reported on the boot VGA function and overridable with ``--allow-boot-vga``
  like the boot display itself (tty0 is active on nearly every host with a display; a hard stop there would make
  the boot GPU impossible to pass through).
- ``boot_vga``: the firmware's boot display (``boot_vga`` reads 1). Overridable with ``--allow-boot-vga``.
- ``vgpus``: live vGPUs on the function (``host/mdev.py``): mdev instances it is the parent of, or, for an NVIDIA
  SR-IOV vGPU PF, VFs with a vGPU type set. Another driver destroys them. Never overridable: remove them first
  (``passthru vgpu remove``, named in the detail).
- ``vfs_in_use``: an SR-IOV PF with a VF bound to any driver (vfio-pci too: probably in a VM); unbinding the PF
  destroys its VFs. A VF already named as a vGPU is not repeated.

Sources: /sys/class/block (one pass), ``slaves/`` and ``holders/`` (bd_link_disk_holder), /sys/dev/block/MAJ:MIN,
dm/name, the NVMe subsystem's controller links (a native-multipath namespace hangs off the subsystem, not off a
function), /proc/self/mountinfo (field 3 major:minor; the source for btrfs' anonymous 0:N) or else /proc/mounts,
/proc/swaps, /sys/class/net, /proc/net/route (IPv4, main table, host namespace), /proc/net/if_inet6,
/sys/class/tty, /sys/class/tty/console/active and the kernel command line.

A missing or unreadable source (a capture without /proc/net/route or mountinfo, an older kernel) gives no
information - nothing is reported from it, nothing crashes. Blind spots: ZFS pools (no holders, datasets instead of
devices in mountinfo), IPv4 addresses without a prefix route (/32, noprefixroute) and routes in other tables,
iSCSI / NVMe-oF / NFS over a NIC (its routes count, the protocol is not named), netconsole, other namespaces.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from .mdev import Instance, hosted_vgpus
from .pci import _FULL_BDF_RE, normalize_address
from .root import HostRoot
from .serial import console_ttys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable

__all__ = ["HostUse", "host_uses", "pci_ancestor", "vgpus_detail", "FORCE_NETDEV", "ALLOW_BOOT_VGA"]

FORCE_NETDEV = "--force-netdev"
ALLOW_BOOT_VGA = "--allow-boot-vga"
_VT_RE = re.compile(r"^tty\d+$")
_NVME_CTRL_RE = re.compile(r"^nvme\d+$")
_ESCAPE_RE = re.compile(r"\\([0-7]{3})")
_IFA_F_DADFAILED = 0x08
_SCOPE_HOST, _SCOPE_LINK = 0x10, 0x20
_MAX_ITEMS = 4


@dataclass(frozen=True, slots=True)
class HostUse:
    """One reason the host needs a function. ``override`` names the CLI flag that accepts the risk, None when
    nothing may (a mounted filesystem, a serial console)."""

    address: str  # the PCI function, "0000:03:00.0"
    what: str  # "mount" | "swap" | "holder" | "netdev" | "console" | "boot_vga" | "vgpus" | "vfs_in_use"
    detail: str  # one human line: "nvme0n1p2 mounted on / (ext4)"
    override: str | None


def _nearest_function(rel: str) -> str | None:
    """The last component naming a PCI function in a path below /sys/devices."""
    for part in reversed(rel.split("/")):
        if _FULL_BDF_RE.match(part):
            return part
    return None


def pci_ancestor(h: HostRoot, sys_path: str) -> str | None:
    """The nearest PCI function at or above a sysfs device (a block device, a netdev, a tty, a USB device: the
    xHCI controller), given any path that resolves into /sys/devices; None for virtual and platform devices."""
    real = h.realpath(sys_path)
    devices = h.realpath(h.sys + "/devices") + "/"
    return _nearest_function(real[len(devices):]) if real.startswith(devices) else None


def _link_path(h: HostRoot, link: str) -> str | None:
    """Where a sysfs symlink points, resolved lexically (sysfs device paths contain no symlinked directories)."""
    target = h.readlink(link)
    if target is None:
        return None
    if target.startswith("/"):
        return h.path(target)
    return os.path.normpath(os.path.join(os.path.dirname(link), target))


def _unescape(text: str) -> str:
    """Undo the octal escapes of mountinfo, /proc/mounts and /proc/swaps ("\\040" is a space)."""
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


def _more(items: list[str]) -> str:
    head = ", ".join(items[:_MAX_ITEMS])
    return head if len(items) <= _MAX_ITEMS else f"{head} and {len(items) - _MAX_ITEMS} more"


class _Scan:
    """One look at the host for a set of functions; each source is read at most once."""

    def __init__(self, h: HostRoot, wanted: set[str]) -> None:
        self.h, self.wanted = h, wanted
        self.devices = h.sys + "/devices/"
        self._blocks: dict[str, tuple[str, tuple[str, ...]]] | None = None
        self._labels: dict[str, str] = {}
        self._dm_names: dict[str, str] | None = None
        self._net: tuple[dict[str, list[str]], dict[str, list[str]]] | None = None

    def _rel(self, path: str | None) -> str | None:
        return path[len(self.devices):] if path and path.startswith(self.devices) else None

    # -- block devices ------------------------------------------------------------------------------------
    @property
    def blocks(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """name -> (sysfs directory, functions it sits on directly): one pass over /sys/class/block."""
        if self._blocks is None:
            blocks: dict[str, tuple[str, tuple[str, ...]]] = {}
            base = self.h.sys + "/class/block"
            for name in self.h.listdir(base):
                path = _link_path(self.h, f"{base}/{name}")
                rel = self._rel(path)
                if path is None or rel is None:
                    continue
                fn = _nearest_function(rel)
                blocks[name] = (path, (fn,) if fn else self._nvme_head_functions(rel))
            self._blocks = blocks
        return self._blocks

    def _nvme_head_functions(self, rel: str) -> tuple[str, ...]:
        """A native-multipath namespace lives under virtual/nvme-subsystem/nvme-subsysN, whose nvmeX links lead to
        the controllers (and their functions) it is reached through."""
        parts = rel.split("/")
        if len(parts) < 4 or parts[:2] != ["virtual", "nvme-subsystem"]:
            return ()
        subsys = self.devices + "/".join(parts[:3])
        found = {_nearest_function(self._rel(_link_path(self.h, f"{subsys}/{n}")) or "")
                 for n in self.h.listdir(subsys) if _NVME_CTRL_RE.match(n)}
        return tuple(sorted(f for f in found if f))

    def _lowers(self, name: str) -> list[str]:
        path = self.blocks[name][0]
        slaves = [n for n in self.h.listdir(path + "/slaves") if n in self.blocks]
        if slaves:
            return slaves
        parent = os.path.dirname(path)  # a partition of a stacked disk (md0p1) sits on what its disk sits on
        disk = os.path.basename(parent)
        return [disk] if disk in self.blocks and self.blocks[disk][0] == parent else []

    def paths_down(self, name: str, seen: frozenset[str] = frozenset()) -> list[tuple[str, tuple[str, ...]]]:
        """(function, block devices from ``name`` down to the one on that function) for every function under it."""
        if name not in self.blocks or name in seen:
            return []
        fns = self.blocks[name][1]
        if fns:
            return [(fn, (name,)) for fn in fns]
        out: list[tuple[str, tuple[str, ...]]] = []
        for low in self._lowers(name):
            out += [(fn, (name, *chain)) for fn, chain in self.paths_down(low, seen | {name})]
        return out

    def label(self, name: str) -> str:
        """"dm-0 (vg0-root)", "md0 (raid1)", "sda2"."""
        if name not in self._labels:
            path = self.blocks[name][0] if name in self.blocks else None
            extra = None
            if path and name.startswith("dm-"):
                extra = self.h.read(path + "/dm/name")
            elif path and name.startswith("md"):
                extra = self.h.read(path + "/md/level")
            self._labels[name] = f"{name} ({extra})" if extra else name
        return self._labels[name]

    def dev_name(self, path: str) -> str | None:
        """The block device behind a /dev path: /dev/sda1, /dev/mapper/NAME (via dm/name), or a symlink such as
        /dev/md/NAME resolved in the host's /dev."""
        if not path.startswith("/dev/"):
            return None
        rest = path[5:]
        if rest in self.blocks:
            return rest
        if rest.startswith("mapper/"):
            if self._dm_names is None:
                self._dm_names = {}
                for n, (p, _) in self.blocks.items():
                    dm = self.h.read(p + "/dm/name") if n.startswith("dm-") else None
                    if dm:
                        self._dm_names[dm] = n
            if rest[7:] in self._dm_names:
                return self._dm_names[rest[7:]]
        real = os.path.basename(self.h.realpath(self.h.path(path)))
        return real if real in self.blocks else None

    def mounts(self) -> dict[str, list[tuple[str, str]]]:
        """block device -> [(mount point, fstype)], from mountinfo, else /proc/mounts."""
        out: dict[str, list[tuple[str, str]]] = {}
        text = self.h.read(self.h.proc + "/self/mountinfo")
        rows: list[tuple[str, str, str, str]] = []  # (major:minor, mount point, fstype, source)
        if text is not None:
            for line in text.splitlines():
                left, sep, right = line.partition(" - ")
                f, r = left.split(), right.split()
                if sep and len(f) >= 5 and len(r) >= 2:
                    rows.append((f[2], _unescape(f[4]), r[0], _unescape(r[1])))
        else:
            for line in (self.h.read(self.h.proc + "/mounts") or "").splitlines():
                f = line.split()
                if len(f) >= 3:
                    rows.append(("0:0", _unescape(f[1]), f[2], _unescape(f[0])))
        for majmin, mountpoint, fstype, source in rows:
            name = None
            if not majmin.startswith("0:"):  # btrfs, NFS, tmpfs...: anonymous; the source may still be a device
                name = self.h.link_name(f"{self.h.sys}/dev/block/{majmin}")
            if name not in self.blocks:
                name = self.dev_name(source)
            if name is not None:
                out.setdefault(name, []).append((mountpoint, fstype))
        return out

    def swaps(self) -> list[str]:
        """Block devices that are active swap. Swap files are on a mounted filesystem: the mount rule covers them."""
        lines = (self.h.read(self.h.proc + "/swaps") or "").splitlines()[1:]
        names = [self.dev_name(_unescape(line.split()[0])) for line in lines if line.split()]
        return [n for n in names if n is not None]

    def storage(self, add: _Adder) -> None:
        for name, places in self.mounts().items():
            places = sorted(set(places), key=lambda p: (len(p[0]), p[0]))
            mp, fstype = places[0]
            more = f" and {len(places) - 1} more places" if len(places) > 1 else ""
            for fn, chain in self.paths_down(name):
                add(fn, "mount", f"{self.label(name)} mounted on {mp} ({fstype}){more}{self._over(chain)}", None)
        for name in self.swaps():
            for fn, chain in self.paths_down(name):
                add(fn, "swap", f"{self.label(name)} is active swap{self._over(chain)}", None)
        for name, (path, fns) in self.blocks.items():
            if self.wanted.intersection(fns):
                for holder in self.h.listdir(path + "/holders"):
                    for fn in fns:
                        add(fn, "holder", f"{self.label(holder)} holds {name}", None)

    def _over(self, chain: tuple[str, ...]) -> str:
        return "".join(f", over {self.label(n)}" for n in chain[1:])

    # -- network ------------------------------------------------------------------------------------------
    def _addresses(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(interface -> IPv4 routes, interface -> IPv6 addresses that are not link-local or host scope)."""
        if self._net is None:
            routes: dict[str, list[tuple[bool, str]]] = {}
            for line in (self.h.read(self.h.proc + "/net/route") or "").splitlines()[1:]:
                f = line.split()
                try:
                    dest, gw, flags, mask = (int(f[i], 16) for i in (1, 2, 3, 7))
                except (ValueError, IndexError):
                    continue
                if f[0] == "*":
                    continue  # unreachable/prohibit: no device
                via = f" via {_ipv4(gw)}" if flags & 0x2 else ""
                if dest == 0 and mask == 0:
                    routes.setdefault(f[0], []).append((True, f"the default route{via}"))
                else:
                    routes.setdefault(f[0], []).append((False, f"route {_ipv4(dest)}/{mask.bit_count()}{via}"))
            v6: dict[str, list[str]] = {}
            for line in (self.h.read(self.h.proc + "/net/if_inet6") or "").splitlines():
                f = line.split()
                try:
                    addr, plen, scope, flags = bytes.fromhex(f[0]), int(f[2], 16), int(f[3], 16), int(f[4], 16)
                except (ValueError, IndexError):
                    continue
                if len(addr) == 16 and scope not in (_SCOPE_HOST, _SCOPE_LINK) and not flags & _IFA_F_DADFAILED:
                    v6.setdefault(f[5], []).append(f"address {ipaddress.IPv6Address(addr)}/{plen}")
            v4 = {k: [d for _, d in sorted(v, key=lambda r: not r[0])] for k, v in routes.items()}
            self._net = (v4, v6)
        return self._net

    def _uppers(self, ifname: str) -> list[str]:
        d = f"{self.h.sys}/class/net/{ifname}"
        ups = [n[6:] for n in self.h.listdir(d) if n.startswith("upper_")]
        master = self.h.link_name(d + "/master")
        return ups + [master] if master and master not in ups else ups

    def net_use(self, ifname: str) -> str | None:
        """Why the host needs an interface ("eno1 -> bond0 -> br0: br0 has the default route via 192.0.2.1,
        route 192.0.2.0/24"), or None. Breadth-first over upper devices, so a loop of links cannot hang it."""
        v4, v6 = self._addresses()
        found: list[str] = []
        queue: list[tuple[str, tuple[str, ...]]] = [(ifname, (ifname,))]
        seen = {ifname}
        while queue:
            name, chain = queue.pop(0)
            items = v4.get(name, []) + v6.get(name, [])
            if items:
                where = f"{' -> '.join(chain)}: {name} has" if len(chain) > 1 else f"{name} has"
                found.append(f"{where} {_more(items)}")
            nxt = self._uppers(name)
            if name == "ovs-system":  # Open vSwitch: the bridge's own ports (br-ex...) carry the host's addresses
                nxt += [n[6:] for n in self.h.listdir(f"{self.h.sys}/class/net/{name}") if n.startswith("lower_")]
            for up in nxt:
                if up not in seen:
                    seen.add(up)
                    queue.append((up, chain + (up,)))
        return "; ".join(found) or None

    def netdevs(self) -> dict[str, list[str]]:
        """function -> its interfaces (those under the function, e.g. a USB NIC under an xHCI, too)."""
        out: dict[str, list[str]] = {}
        base = self.h.sys + "/class/net"
        for name in self.h.listdir(base):
            rel = self._rel(_link_path(self.h, f"{base}/{name}"))
            fn = _nearest_function(rel) if rel else None
            if fn is not None:
                out.setdefault(fn, []).append(name)
        return out


def vgpus_detail(vgpus: list[Instance]) -> str:
    """"hosts live vGPUs that a driver change destroys: mdev U (nvidia-224, GRID T4-1Q); remove them first:
    `passthru vgpu remove U`" - every instance named, up to a few, with the command for each."""
    shown = vgpus[:_MAX_ITEMS]
    more = f" and {len(vgpus) - len(shown)} more (`passthru vgpu list`)" if len(vgpus) > len(shown) else ""
    fix = ", ".join(f"`passthru vgpu remove {i.id}`" for i in shown)
    return (f"hosts live vGPUs that a driver change destroys: {', '.join(i.label() for i in shown)}{more}; "
            f"remove {'it' if len(vgpus) == 1 else 'them'} first: {fix}{' ...' if more else ''}")


def _ipv4(word: int) -> str:
    """An address from /proc/net/route: "%08X" of the network-order word read on a little-endian host."""
    return str(ipaddress.IPv4Address(word.to_bytes(4, "little")))


class _Adder:
    """Collects uses for the wanted functions, each once."""

    def __init__(self, wanted: list[str]) -> None:
        self.out: dict[str, list[HostUse]] = {a: [] for a in wanted}

    def __call__(self, address: str, what: str, detail: str, override: str | None) -> None:
        uses = self.out.get(address)
        use = HostUse(address, what, detail, override)
        if uses is not None and use not in uses:
            uses.append(use)


def host_uses(h: HostRoot, addresses: Iterable[str]) -> dict[str, list[HostUse]]:
    """For each PCI function (any accepted spelling; keys are normalized "0000:03:00.0"), what the host uses it
    for, in the order storage, network, console, boot VGA, vGPUs, VFs. An empty list: nothing found (also for a function
    that is not there). Raises ValueError for a malformed address."""
    wanted = list(dict.fromkeys(normalize_address(a) for a in addresses))
    add, scan = _Adder(wanted), _Scan(h, set(wanted))
    scan.storage(add)
    netdevs = scan.netdevs()
    for fn in wanted:
        for ifname in netdevs.get(fn, ()):
            detail = scan.net_use(ifname)
            if detail:
                add(fn, "netdev", detail, FORCE_NETDEV)
    consoles = console_ttys(h)
    for tty in sorted(consoles):
        if not _VT_RE.match(tty) and h.exists(f"{h.sys}/class/tty/{tty}"):
            fn = pci_ancestor(h, f"{h.sys}/class/tty/{tty}")
            if fn is not None:
                add(fn, "console", f"{tty} is a kernel console", None)
    vts = sorted((t for t in consoles if _VT_RE.match(t)), key=lambda t: int(t[3:]))
    for fn in wanted:
        d = f"{h.sys}/bus/pci/devices/{fn}"
        if h.read(d + "/boot_vga") == "1":
            if vts:
                add(fn, "console", f"the virtual terminal console ({', '.join(vts)}) is on the boot display",
                    ALLOW_BOOT_VGA)
            add(fn, "boot_vga", "the firmware set this function up as the boot display (boot_vga = 1)",
                ALLOW_BOOT_VGA)
        vgpus = hosted_vgpus(h, fn)
        if vgpus:
            add(fn, "vgpus", vgpus_detail(vgpus), None)
        named = {i.id for i in vgpus}
        vfs = sorted(((int(n[6:]), vf) for n, vf in h.walk_links(d, "virtfn") if n[6:].isdigit()))
        for idx, vf in vfs:
            driver = h.link_name(f"{d}/virtfn{idx}/driver")
            if driver and vf not in named:
                busy = [u for u in (scan.net_use(i) for i in netdevs.get(vf, ())) if u]
                extra = f" ({'; '.join(busy)})" if busy else ""
                add(fn, "vfs_in_use", f"VF {vf} is bound to {driver}{extra}", None)
    return add.out
