"""Proxmox hosts whose boot partitions ``proxmox-boot-tool`` keeps in sync, read-only.

On such a host (ZFS on root, or any install converted with ``proxmox-boot-tool init``) the EFI system
partitions are not mounted during normal operation; ``/etc/kernel/proxmox-boot-uuids`` lists their vfat UUIDs,
one a line, and ``proxmox-boot-tool refresh`` copies the kernels and initrds onto each and writes its boot
loader configuration: ``loader/entries/proxmox-*.conf`` with the options line from ``/etc/kernel/cmdline`` for
systemd-boot (UEFI without Secure Boot), ``update-grub`` with the ESP bind-mounted on /boot for GRUB (legacy BIOS,
Secure Boot). Proxmox documents ``refresh`` as the equivalent of ``update-grub`` on these hosts, and both
``update-grub`` and ``update-initramfs`` trigger it themselves.

Which loader an ESP carries is only visible on the ESP itself (passthru does not mount it), so the host's own
files decide: UEFI with ``/etc/kernel/cmdline`` is systemd-boot (what the installer sets up for ZFS on UEFI),
anything else GRUB (``/etc/default/grub``). Without a UUID in that file ``proxmox-boot-tool`` manages nothing (an
ext4/LVM install): the host is an ordinary GRUB host and ``update-grub`` is the command.
"""

from __future__ import annotations

from .root import HostRoot

__all__ = ["PROXMOX_UUIDS", "PROXMOX_REFRESH", "proxmox_esps"]

PROXMOX_UUIDS = "/etc/kernel/proxmox-boot-uuids"
PROXMOX_REFRESH = ("proxmox-boot-tool", "refresh")


def proxmox_esps(h: HostRoot) -> tuple[str, ...]:
    """The ESP UUIDs ``proxmox-boot-tool`` keeps in sync; () when the host does not use it (no file, or an empty
    one: ``proxmox-boot-tool status`` then says it is not configured)."""
    text = h.read(h.path(PROXMOX_UUIDS)) or ""
    return tuple(line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#"))
