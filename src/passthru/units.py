"""systemd units passthru ships, rendered for this installation (the ``passthru`` it runs is the one that renders
them, so a virtualenv install gets its own path), and their installation.

``passthru-apply-boot.service`` re-applies the bindings ``passthru bind --persist`` recorded: after local file
systems and module loading, before networking (a NIC meant for VMs must not get an address first) and before
libvirt starts VMs. It runs only when something is persisted.

``passthru-agent.service`` runs ``passthru serve`` (the API on /run/passthru/agent.sock, root only) after the boot
unit, with room for 8192 open files (``LimitNOFILE=``; the default 1000 connections need about 1500). Hardened:
read-only system except the passthru directories and /sys (driver binding, SR-IOV, mdev), no home directories,
private /tmp, no new privileges, only the capabilities binding devices and loading vfio modules need. ``passthru units --install`` installs the boot unit; ``passthru serve --install-unit`` the agent.
"""

from __future__ import annotations

import os
import shlex
import sys

from .config import Paths
from .errors import HostError
from .host.root import HostRoot
from .statefs import write_atomic

__all__ = ["UNITS", "APPLY_BOOT_UNIT", "AGENT_UNIT", "render_units", "install_units", "passthru_command"]

UNIT_DIR = "/etc/systemd/system"

_APPLY_BOOT = """\
[Unit]
Description=passthru: bind persisted devices to vfio-pci and re-create persisted vGPUs before networking and VMs
DefaultDependencies=no
After=local-fs.target systemd-modules-load.service systemd-udevd.service
Wants=systemd-modules-load.service network-pre.target
Before=network-pre.target libvirtd.service virtqemud.service shutdown.target
Conflicts=shutdown.target
ConditionPathExistsGlob=|{config_dir}/vfio.d/*.json
ConditionPathExistsGlob=|{config_dir}/mdev.d/*/*.json

[Service]
Type=oneshot
RemainAfterExit=yes
{environment}ExecStart={command} apply-boot
TimeoutStartSec=120

[Install]
WantedBy=multi-user.target
"""

_AGENT = """\
[Unit]
Description=passthru agent: device passthrough API (inventory, assignments, hot plug)
After=local-fs.target systemd-modules-load.service systemd-udevd.service passthru-apply-boot.service
Before=libvirtd.service virtqemud.service

[Service]
Type=exec
{environment}ExecStart={command} serve
Restart=on-failure
RestartSec=2
TimeoutStopSec=30
# open files: the connections (--max-connections, default 1000) and the agent's own; the agent raises its soft
# limit to what it needs, up to this
LimitNOFILE=8192
RuntimeDirectory=passthru
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=no
{directories}UMask=0077
# read-only system; writable: passthru's config and state, its socket, /sys (driver_override, unbind, sriov_numvfs,
# mdev create); /dev stays the host's (/dev/vfio)
ProtectSystem=strict
ReadWritePaths=-{state_dir} -{config_dir} -/run/passthru /sys
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# binding drivers and writing sysfs (CAP_SYS_ADMIN, CAP_DAC_OVERRIDE), modprobe vfio-pci (CAP_SYS_MODULE), reading
# any process's cmdline and QMP sockets (CAP_DAC_READ_SEARCH), VF settings over netlink (CAP_NET_ADMIN), PCI config
# space (CAP_SYS_RAWIO), keeping ownership of files it rewrites (CAP_CHOWN, CAP_FOWNER)
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_MODULE CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH
CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_RAWIO CAP_CHOWN CAP_FOWNER

[Install]
WantedBy=multi-user.target
"""

APPLY_BOOT_UNIT = "passthru-apply-boot.service"
AGENT_UNIT = "passthru-agent.service"
UNITS = {APPLY_BOOT_UNIT: _APPLY_BOOT, AGENT_UNIT: _AGENT}


def passthru_command() -> str:
    """The command line that runs this passthru: its console script when run as one, else ``python -m``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "passthru" and os.path.isfile(argv0):
        return shlex.quote(os.path.abspath(argv0))
    return f"{shlex.quote(sys.executable)} -m passthru"


def render_units(paths: Paths, command: str | None = None) -> dict[str, str]:
    env = dirs = ""
    defaults = Paths.for_root(HostRoot("/"), "/etc/passthru", "/var/lib/passthru")
    if paths.config_dir != defaults.config_dir:
        env += f"Environment=PASSTHRU_CONFIG_DIR={paths.config_dir}\n"
    else:  # systemd creates it (the agent's token lives there) and makes it writable under ProtectSystem=strict
        dirs += "ConfigurationDirectory=passthru\n"
    if paths.state_dir != defaults.state_dir:
        env += f"Environment=PASSTHRU_STATE_DIR={paths.state_dir}\n"
    else:
        dirs += "StateDirectory=passthru\nStateDirectoryMode=0700\n"
    return {name: text.format(config_dir=paths.config_dir, state_dir=paths.state_dir, environment=env,
                              directories=dirs, command=command or passthru_command())
            for name, text in UNITS.items()}


def install_units(h: HostRoot, paths: Paths, command: str | None = None, *,
                  names: tuple[str, ...] = (APPLY_BOOT_UNIT,)) -> list[tuple[str, str]]:
    """Write the units ``names`` (default: the boot unit) into the root's /etc/systemd/system; on the live root,
    when systemd runs, also reload it and enable them.
    Returns (path, "changed" | "unchanged") per unit."""
    import subprocess

    out = []
    rendered = render_units(paths, command)
    for name in names:
        text = rendered[name]
        path = h.path(f"{UNIT_DIR}/{name}")
        old = h.read_bytes(path)
        if old == text.encode():
            out.append((path, "unchanged"))
            continue
        write_atomic(path, text.encode(), 0o644)
        out.append((path, "changed"))
    if h.is_live and os.path.isdir("/run/systemd/system"):  # sd_booted(): systemd is the running init
        for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", *names]):
            try:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                                   check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise HostError(f"{' '.join(argv)} failed: {e}; the unit files are in {UNIT_DIR}") from None
            if p.returncode != 0:
                last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
                raise HostError(f"{' '.join(argv)} failed: {last}; the unit files are in {UNIT_DIR}")
    return out
