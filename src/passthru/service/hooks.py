"""The hook programs that tie passthru to VMs starting and stopping, rendered for this installation and installed
(``passthru hooks show|install|uninstall``). Both are small ``/bin/sh`` scripts that pass only the operations
passthru acts on to ``passthru hooks libvirt|proxmox ...`` (service/lifecycle.py, service/proxmox.py), under
``timeout`` so that a stuck passthru can never hold libvirtd or Proxmox forever (the hook bounds itself first:
``--timeout``; ``timeout`` kills it 15 s later).

- libvirt: ``/etc/libvirt/hooks/qemu`` (libvirt runs it as ``qemu DOMAIN OPERATION SUB-OPERATION EXTRA``, the
  domain XML on stdin, and reads hooks only when libvirtd starts: restart it after installing). An existing hook
  there that is not passthru's is never overwritten: passthru's goes to ``/etc/libvirt/hooks/qemu.d/passthru``
  instead, which libvirt (6.5.0 and later) runs after the main one. Nothing is chained by hand.
- Proxmox: ``/var/lib/vz/snippets/passthru.sh`` (the ``local`` storage's snippets; ``--snippets DIR`` for
  another storage), set per VM with ``qm set VMID --hookscript local:snippets/passthru.sh``. A foreign file of
  that name is refused.

The scripts carry the paths that are not the defaults (``--root``, ``PASSTHRU_CONFIG_DIR``,
``PASSTHRU_STATE_DIR``, ``PASSTHRU_DB_URL``: libvirt starts hooks with a clean environment); with a database URL
the file is readable by root only. Installing is idempotent: each file is reported "changed" or "unchanged".
"""

from __future__ import annotations

import os
import shlex

from .session import Session
from ..config import CONFIG_ENV, STATE_ENV, Paths
from ..errors import UsageError
from ..inventory.store import DB_ENV
from ..statefs import write_atomic
from ..units import passthru_command

__all__ = ["render", "install", "uninstall", "LIBVIRT_HOOK", "LIBVIRT_HOOK_D", "SNIPPETS", "MARKER", "TIMEOUT"]

LIBVIRT_HOOK = "/etc/libvirt/hooks/qemu"
LIBVIRT_HOOK_D = "/etc/libvirt/hooks/qemu.d/passthru"
SNIPPETS = "/var/lib/vz/snippets"
PROXMOX_NAME = "passthru.sh"
MARKER = "# passthru-hook:"
TIMEOUT = 60

_LIBVIRT = """\
#!/bin/sh
{marker} libvirt qemu (written by `passthru hooks install --libvirt`; `passthru hooks uninstall --libvirt` removes it)
# libvirt runs it as: qemu DOMAIN OPERATION SUB-OPERATION EXTRA, with the domain XML on stdin. passthru takes the
# domain's host devices over at "prepare" (a refusal stops the start) and gives them back at "release".
case "$2" in
    prepare|release) ;;
    *) exit 0 ;;
esac
{env}exec {timeout}{command} hooks libvirt --timeout {seconds} -- "$@"
"""

_PROXMOX = """\
#!/bin/sh
{marker} proxmox (written by `passthru hooks install --proxmox`; set it per VM with
#   qm set VMID --hookscript {storage}:snippets/{name}
# Proxmox runs it as: {name} VMID PHASE. passthru records the VM's hostpci/usb devices at pre-start (a refusal
# stops the start), the vGPUs Proxmox made at post-start, and releases them at post-stop.
case "$2" in
    pre-start|post-start|post-stop) ;;
    *) exit 0 ;;
esac
{env}exec {timeout}{command} hooks proxmox --timeout {seconds} -- "$@"
"""


def _env(s: Session) -> tuple[str, bool]:
    defaults = Paths.for_root(s.host, s.host.path("/etc/passthru"), s.host.path("/var/lib/passthru"))
    lines, secret = [], False
    if s.paths.config_dir != defaults.config_dir:
        lines.append(f"{CONFIG_ENV}={shlex.quote(s.paths.config_dir)}")
    if s.paths.state_dir != defaults.state_dir:
        lines.append(f"{STATE_ENV}={shlex.quote(s.paths.state_dir)}")
    if os.environ.get(DB_ENV):
        lines.append(f"{DB_ENV}={shlex.quote(os.environ[DB_ENV])}")
        secret = True
    return "".join(f"export {x}\n" for x in lines), secret


def render(s: Session, which: str, *, command: str | None = None, seconds: int = TIMEOUT,
           storage: str = "local") -> tuple[str, int]:
    """(the script, its file mode) for ``which`` ("libvirt" | "proxmox")."""
    if which not in ("libvirt", "proxmox"):
        raise UsageError(f"hook {which!r}: libvirt or proxmox")
    if not 5 <= seconds <= 600:
        raise UsageError(f"--timeout {seconds}: 5..600 seconds (libvirt and Proxmox wait for the hook)")
    cmd = command or passthru_command()
    if not s.host.is_live:
        cmd += f" --root {shlex.quote(s.host.base)}"
    env, secret = _env(s)
    timeout = f"/usr/bin/timeout -k 5 {seconds + 15} " if os.path.exists("/usr/bin/timeout") else ""
    text = (_LIBVIRT if which == "libvirt" else _PROXMOX).format(
        marker=MARKER, env=env, timeout=timeout, command=cmd, seconds=seconds, storage=storage, name=PROXMOX_NAME)
    return text, 0o700 if secret else 0o755


def _ours(h_path: str) -> bool | None:
    """None: no file; True: passthru's hook; False: someone else's."""
    try:
        with open(h_path, "rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"{h_path}: {e.strerror}") from None
    return MARKER.encode() in head


def _write(path: str, text: str, mode: int) -> str:
    old = None
    try:
        with open(path, "rb") as f:
            old = f.read()
        same_mode = (os.stat(path).st_mode & 0o777) == mode
    except FileNotFoundError:
        same_mode = False
    if old == text.encode() and same_mode:
        return "unchanged"
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    write_atomic(path, text.encode(), mode)
    return "changed"


def targets(s: Session, which: str, snippets: str = SNIPPETS) -> list[str]:
    h = s.host
    if not snippets.startswith("/") or "\0" in snippets or ".." in snippets.split("/"):
        raise UsageError(f"--snippets {snippets!r}: give the absolute path of a storage's snippets directory "
                         "(e.g. /var/lib/vz/snippets)")
    if which == "libvirt":
        return [h.path(LIBVIRT_HOOK), h.path(LIBVIRT_HOOK_D)]
    return [h.path(os.path.join(snippets, PROXMOX_NAME))]


def install(s: Session, which: str, *, snippets: str = SNIPPETS, seconds: int = TIMEOUT,
            command: str | None = None) -> list[tuple[str, str]]:
    """Write the hook (module docstring); [(path, "changed" | "unchanged", ...)]. UsageError for a foreign
    Proxmox snippet of the same name."""
    text, mode = render(s, which, command=command, seconds=seconds)
    paths = targets(s, which, snippets)
    if which == "libvirt":
        main, extra = paths
        found = {p: _ours(p) for p in paths}
        if found[extra]:  # already installed beside a foreign main hook: keep it there
            path = extra
        elif found[main] is False:
            path = extra
        else:
            path = main
        out = [(path, _write(path, text, mode))]
        if path == extra and found[main] is False:
            out.append((main, "kept (another program's hook; libvirt runs qemu.d/passthru after it)"))
        return out
    if not os.path.isdir(os.path.dirname(paths[0])) and s.host.is_live:
        raise UsageError(f"{os.path.dirname(paths[0])} does not exist: is this a Proxmox VE node? Give the "
                         "snippets directory of a storage with --snippets DIR")
    if _ours(paths[0]) is False:
        raise UsageError(f"{paths[0]} exists and is not passthru's: move it away, or install with --snippets DIR")
    return [(paths[0], _write(paths[0], text, mode))]


def uninstall(s: Session, which: str, *, snippets: str = SNIPPETS) -> list[tuple[str, str]]:
    """Remove passthru's hook files (never another program's): [(path, "removed" | "absent" | "kept ...")]."""
    out = []
    for path in targets(s, which, snippets):
        state = _ours(path)
        if state:
            os.unlink(path)
            out.append((path, "removed"))
        elif state is False:
            out.append((path, "kept (not passthru's)"))
    return out or [(targets(s, which, snippets)[0], "absent")]
