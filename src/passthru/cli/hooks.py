"""CLI verbs that tie passthru to libvirt and Proxmox VE starting and stopping VMs: ``passthru hooks show|install|
uninstall`` and the entry points the installed hooks call, ``passthru hooks libvirt ...`` and ``passthru hooks
proxmox ...``. The logic is in service/lifecycle.py, service/proxmox.py and service/hooks.py."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from ..service.session import Session
from ..service.listings import emit_json
from ..errors import HostError, PassthruError, UsageError

hooks_app = typer.Typer(name="hooks", help="libvirt and Proxmox hooks: passthru holds a VM's devices while it runs.",
                        no_args_is_help=True, rich_markup_mode=None)

_JSON = typer.Option("--json", help="Print the JSON document.")
_TIMEOUT = typer.Option("--timeout", metavar="SECONDS", help="Give up (and undo) after this long.")


def _which(libvirt: bool, proxmox: bool) -> list[str]:
    out = [w for w, on in (("libvirt", libvirt), ("proxmox", proxmox)) if on]
    if not out:
        raise UsageError("name the hook: --libvirt and/or --proxmox")
    return out


@hooks_app.command("show")
def show(
    ctx: typer.Context,
    which: Annotated[str, typer.Argument(metavar="libvirt|proxmox")],
    timeout: Annotated[int, _TIMEOUT] = 60,
) -> None:
    """Print the hook program for this installation. Example: `passthru hooks show proxmox`."""
    from ..service.hooks import render

    c: Session = ctx.obj
    sys.stdout.write(render(c, which, seconds=timeout)[0])


@hooks_app.command("install")
def install(
    ctx: typer.Context,
    libvirt: Annotated[bool, typer.Option("--libvirt", help="/etc/libvirt/hooks/qemu (or qemu.d/passthru).")] = False,
    proxmox: Annotated[bool, typer.Option("--proxmox", help="SNIPPETS/passthru.sh.")] = False,
    snippets: Annotated[str, typer.Option("--snippets", metavar="DIR", help="Proxmox snippets directory.")] =
        "/var/lib/vz/snippets",
    timeout: Annotated[int, _TIMEOUT] = 60,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Install the hooks (idempotent; another program's libvirt hook is kept and passthru's goes to qemu.d/).

    Examples: `passthru hooks install --libvirt` (then restart libvirtd), `passthru hooks install --proxmox`
    (then `qm set VMID --hookscript local:snippets/passthru.sh`).
    """
    from ..service.hooks import install as do_install

    c: Session = ctx.obj
    done = [(w, p, st) for w in _which(libvirt, proxmox) for p, st in do_install(c, w, snippets=snippets,
                                                                              seconds=timeout)]
    if as_json:
        emit_json({"schema": 1, "hooks": [{"hook": w, "path": p, "status": st} for w, p, st in done]})
        return
    for _w, p, st in done:
        print(f"{p}: {st}")


@hooks_app.command("uninstall")
def uninstall(
    ctx: typer.Context,
    libvirt: Annotated[bool, typer.Option("--libvirt")] = False,
    proxmox: Annotated[bool, typer.Option("--proxmox")] = False,
    snippets: Annotated[str, typer.Option("--snippets", metavar="DIR")] = "/var/lib/vz/snippets",
) -> None:
    """Remove passthru's hooks (never another program's). Example: `passthru hooks uninstall --libvirt`."""
    from ..service.hooks import uninstall as do_uninstall

    c: Session = ctx.obj
    for w in _which(libvirt, proxmox):
        for p, st in do_uninstall(c, w, snippets=snippets):
            print(f"{p}: {st}")


class _TimedOut(HostError):
    pass


def _bounded(seconds: int) -> None:
    """Raise in the middle of whatever runs after ``seconds``: the operation undoes itself (assign's rollback; a
    release is journaled) and the hook fails with one line instead of holding libvirtd or Proxmox."""
    def fire(_sig: int, _frame: object) -> None:
        raise _TimedOut(f"gave up after {seconds} s (--timeout); `passthru reconcile` settles anything left")

    signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)


def _report(res, as_json: bool, prefix: str) -> None:  # noqa: ANN001 - a lifecycle.HookResult
    if as_json:
        emit_json({"schema": 1, "vm": res.vm, "action": res.action, "devices": res.devices, "bound": res.bound,
                    "notes": res.notes})
        return
    for n in res.notes:
        print(f"{prefix}{n}", file=sys.stderr)


@hooks_app.command("libvirt")
def libvirt(
    ctx: typer.Context,
    args: Annotated[list[str], typer.Argument(metavar="DOMAIN OPERATION SUBOP [EXTRA]")],
    timeout: Annotated[int, _TIMEOUT] = 60,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """What /etc/libvirt/hooks/qemu runs (the domain XML on stdin): prepare takes the domain's host devices, release
    gives them back. Prints nothing on success (libvirt reads a hook's output for some operations)."""
    from ..service.lifecycle import libvirt_hook

    c: Session = ctx.obj
    try:
        xml = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read(16 << 20)
    except (OSError, ValueError, UnicodeDecodeError):  # closed, unreadable or not text: no domain XML
        xml = ""
    if len(args) < 2:
        raise UsageError("libvirt runs the hook as: qemu DOMAIN OPERATION SUB-OPERATION EXTRA")
    if args[1] in ("prepare", "release") and not xml.strip():
        raise UsageError("no domain XML on stdin: libvirt gives the hook the domain's XML there")
    _bounded(timeout)
    try:
        res = libvirt_hook(c, args, xml)
    except PassthruError as e:  # libvirt shows this line to whoever started the domain
        err = PassthruError(f"domain {args[0]} {'not started' if args[1:2] == ['prepare'] else args[1]}: {e}")
        err.exit_code = e.exit_code
        raise err from None
    finally:
        signal.alarm(0)
    _report(res, as_json, "passthru: ")


@hooks_app.command("proxmox")
def proxmox(
    ctx: typer.Context,
    vmid: Annotated[str, typer.Argument(metavar="VMID")],
    phase: Annotated[str, typer.Argument(metavar="PHASE", help="pre-start, post-start, pre-stop, post-stop")],
    timeout: Annotated[int, _TIMEOUT] = 60,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """What the Proxmox hookscript runs: pre-start records the VM's hostpci/usb devices (refusing the start when one
    is held by another VM or unsafe), post-start its vGPUs, post-stop releases them."""
    from ..service.proxmox import proxmox_hook

    c: Session = ctx.obj
    _bounded(timeout)
    try:
        res = proxmox_hook(c, vmid, phase)
    except PassthruError as e:  # the task log shows this line
        err = PassthruError(f"VM {vmid} {'not started' if phase == 'pre-start' else phase}: {e}")
        err.exit_code = e.exit_code
        raise err from None
    finally:
        signal.alarm(0)
    if not as_json and res.action != "none":
        print(f"passthru: {res.vm}: {res.action} {', '.join(res.devices) or 'nothing'}")
    _report(res, as_json, "passthru: ")
