"""systemd units passthru ships, rendered for this installation (the ``passthru`` it runs is the one that renders
them, so a virtualenv install gets its own path), and their installation.

``passthru-apply-boot.service`` re-applies the bindings ``passthru bind --persist`` recorded: after local file
systems and module loading, before networking (a NIC meant for VMs must not get an address first) and before
libvirt starts VMs. It runs only when something is persisted.
"""

from __future__ import annotations

import os
import shlex
import sys

from .config import Paths
from .errors import HostError
from .host.root import HostRoot
from .statefs import write_atomic

__all__ = ["UNITS", "render_units", "install_units", "passthru_command"]

UNIT_DIR = "/etc/systemd/system"

_APPLY_BOOT = """\
[Unit]
Description=passthru: bind persisted devices to vfio-pci before networking and VMs
DefaultDependencies=no
After=local-fs.target systemd-modules-load.service systemd-udevd.service
Wants=systemd-modules-load.service network-pre.target
Before=network-pre.target libvirtd.service virtqemud.service shutdown.target
Conflicts=shutdown.target
ConditionPathExistsGlob={config_dir}/vfio.d/*.json

[Service]
Type=oneshot
RemainAfterExit=yes
{environment}ExecStart={command} apply-boot
TimeoutStartSec=120

[Install]
WantedBy=multi-user.target
"""

UNITS = {"passthru-apply-boot.service": _APPLY_BOOT}


def passthru_command() -> str:
    """The command line that runs this passthru: its console script when run as one, else ``python -m``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "passthru" and os.path.isfile(argv0):
        return shlex.quote(os.path.abspath(argv0))
    return f"{shlex.quote(sys.executable)} -m passthru"


def render_units(paths: Paths, command: str | None = None) -> dict[str, str]:
    env = ""
    defaults = Paths.for_root(HostRoot("/"), "/etc/passthru", "/var/lib/passthru")
    if paths.config_dir != defaults.config_dir:
        env += f"Environment=PASSTHRU_CONFIG_DIR={paths.config_dir}\n"
    if paths.state_dir != defaults.state_dir:
        env += f"Environment=PASSTHRU_STATE_DIR={paths.state_dir}\n"
    return {name: text.format(config_dir=paths.config_dir, environment=env, command=command or passthru_command())
            for name, text in UNITS.items()}


def install_units(h: HostRoot, paths: Paths, command: str | None = None) -> list[tuple[str, str]]:
    """Write the units into the root's /etc/systemd/system; on the live root, when systemd runs, also reload it and
    enable them.
    Returns (path, "changed" | "unchanged") per unit."""
    import subprocess

    out = []
    for name, text in render_units(paths, command).items():
        path = h.path(f"{UNIT_DIR}/{name}")
        old = h.read_bytes(path)
        if old == text.encode():
            out.append((path, "unchanged"))
            continue
        write_atomic(path, text.encode(), 0o644)
        out.append((path, "changed"))
    if h.is_live and os.path.isdir("/run/systemd/system"):  # sd_booted(): systemd is the running init
        for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", *UNITS]):
            try:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                                   check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise HostError(f"{' '.join(argv)} failed: {e}; the unit files are in {UNIT_DIR}") from None
            if p.returncode != 0:
                last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
                raise HostError(f"{' '.join(argv)} failed: {last}; the unit files are in {UNIT_DIR}")
    return out
